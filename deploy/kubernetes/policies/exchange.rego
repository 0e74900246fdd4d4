# The exchange policy: which delegation tokens onbehalf issues at POST /token (RFC 8693).
#
# Alice's token (the subject) and the travel agent's token (the actor) come in, verified; this
# policy decides what the delegation token carries — once, on purpose — and the sidecar's
# authz policy then enforces it on every request.
#
# Least privilege: the token's scopes are what was asked, within what Alice holds (her
# token's `scope`) and what the agent may do (data.onbehalf.agents). onbehalf answers
# `invalid_scope` when more was asked than this policy allows, and `invalid_target` for an
# audience it does not list.
#
# The input: {subject: {id, claims}, actor: {id, claims}, chain: [{id, claims}, ...] (the
# subject token's earlier actors, current first), scope, audience, resource,
# requested_token_type}. The answer is this package's object: allow, scopes, audience, ttl,
# act_claims, subject_claims, and error (an OAuth error code) when it refuses.
package onbehalf.exchange

import rego.v1

# The shared data, key by key: `data.onbehalf` as a whole would take in the exchange
# policy's package (data.onbehalf.exchange) too.
agents := data.onbehalf.agents

max_depth := data.onbehalf.max_delegation_depth

default allow := false

allow if {
	known_agents
	input.subject.claims.employee == true
	count(input.chain) + 1 <= max_depth
	count(allowed_scopes) > 0
}

# Why a refusal is refused; onbehalf answers `unauthorized_client` when this is undefined.
error := "unauthorized_client" if not known_agents

error := "invalid_grant" if {
	known_agents
	not input.subject.claims.employee == true
}

error := "invalid_scope" if {
	known_agents
	input.subject.claims.employee == true
	count(allowed_scopes) == 0
}

error_description := sprintf("%s is not a registered agent", [input.actor.id]) if {
	not agents[input.actor.id]
}

# The new actor and every earlier one must be registered agents.
known_agents if {
	agents[input.actor.id]
	every earlier in input.chain {
		agents[earlier.id]
	}
}

subject_scopes contains s if {
	some s in split(object.get(input.subject.claims, "scope", ""), " ")
	s != ""
}

# Every agent in the delegation must hold a capability for the token to carry it.
chain_may contains capability if {
	some capability in agents[input.actor.id].capabilities
	every earlier in input.chain {
		capability in agents[earlier.id].capabilities
	}
}

allowed_scopes := (subject_scopes & chain_may) | extra_scopes

# What was asked, within what is allowed; all that is allowed when nothing was asked.
scopes := sort([s | some s in allowed_scopes; asked(s)])

asked(_) if count(input.scope) == 0

asked(s) if s in input.scope

# Controlled extra access, the seed's example: a capability Alice's token does not carry,
# granted because of who she is. Uncomment to let an age-verified adult's shopping agent buy
# age-restricted goods for her (the agent must still list the capability):
#
#   extra_scopes contains "purchase_restricted" if {
#   	input.subject.claims.age_verified == true
#   	"purchase_restricted" in agents[input.actor.id].capabilities
#   }
extra_scopes := set()

# The services a delegation token may be for.
audience := data.onbehalf.exchange_audiences

# Short: an agent exchanges again when it needs to. Admin delegations live shorter.
default ttl := "15m"

ttl := "5m" if "admin" in scopes

# Carried into the issued token: what the sidecar's authz policy reads of Alice, and the
# agent's own declared capabilities (in `act`).
subject_claims := ["employee", "department", "title", "email", "age_verified"]

act_claims := ["capabilities"]
