# The default onbehalf policy: AI agents booking flights for employees.
#
# Alice (an employee) asks an agent to book a flight. The agent calls this service with a
# delegation token: `sub` is Alice, `act` is the agent (nested when agents delegate further).
# onbehalf verified the token before this policy runs; here we decide whether this agent may
# do this for Alice.
#
# The rules, in words:
#   - A request must match a route in data.onbehalf.routes; each route needs a capability.
#   - The subject must be a verified employee (`employee: true` in the token).
#   - Only a Director in Operations may reach /admin/..., directly or through an agent.
#   - Through agents: every agent in the chain must be listed in data.onbehalf.agents, the
#     chain may be at most data.onbehalf.max_delegation_depth long, and the current agent
#     must hold the route's capability.
#   - The token must carry the capability as a scope: what Alice delegated bounds what the
#     agent may do. A missing scope is answered with `insufficient_scope`.
#   - gRPC calls are judged on their message too (input.parsed_body, decoded with
#     policy.proto_descriptors): an agent may book a fare up to data.onbehalf.agent_fare_limit;
#     above it, Alice books herself.
#
# Copy this file and data.json to start your own policy; `onbehalf check` shows the input
# document and this rule's result for any request.
package envoy.authz

import rego.v1

# The shared data, key by key: `data.onbehalf` as a whole would take in the exchange
# policy's package (data.onbehalf.exchange) too.
agents := data.onbehalf.agents

max_depth := data.onbehalf.max_delegation_depth

routes := data.onbehalf.routes

# The answer onbehalf reads (policy.query = data.envoy.authz.allow). It may be a boolean or
# an object in OPA-Envoy's result shape; onbehalf adds `grant` and `insufficient_scope`.
default allow := {"allowed": false}

allow := {
	"allowed": true,
	# Extra headers for the upstream; onbehalf adds the identity headers itself.
	"headers": {"x-onbehalf-capabilities": concat(",", sort(required))},
	# What a just-in-time upstream token may carry: only what this request needs.
	"grant": {
		"scopes": sort(required),
		"audience": input.attributes.request.http.host,
		"ttl": "60s",
	},
} if {
	allowed
}

allow := {"allowed": false, "insufficient_scope": sort(missing_scopes)} if {
	not allowed
	count(missing_scopes) > 0
}

# Capabilities the request needs: one per matching route.
required contains route.capability if {
	some route in routes
	input.attributes.request.http.method in route.methods
	path_has_prefix(input.parsed_path, route.path)
}

path_has_prefix(path, prefix) if {
	count(path) >= count(prefix)
	every i, segment in prefix {
		path[i] == segment
	}
}

allowed if {
	count(required) > 0
	subject_may_use_route
	delegation_ok
	count(missing_scopes) == 0
	within_fare_limit
}

booking_call if path_has_prefix(input.parsed_path, ["demo.flights.v1.FlightService", "BookFlight"])

within_fare_limit if not booking_call

within_fare_limit if {
	booking_call
	input.actor == null
}

# An undecoded message (no descriptors, or a body Envoy cut) has no price: not within.
within_fare_limit if {
	booking_call
	input.actor != null
	input.parsed_body.price <= data.onbehalf.agent_fare_limit
}

missing_scopes contains capability if {
	some capability in required
	not capability in input.token.scopes
}

employee if input.subject.claims.employee == true

ops_director if {
	employee
	input.subject.claims.department == "Operations"
	input.subject.claims.title == "Director"
}

subject_may_use_route if {
	employee
	not "admin" in required
}

subject_may_use_route if {
	"admin" in required
	ops_director
}

# The user calls directly: no agent to check.
delegation_ok if input.actor == null

delegation_ok if {
	input.actor != null
	input.delegation.depth <= max_depth
	every agent in input.delegation.chain {
		agents[agent.id]
	}
	every capability in required {
		capability in agents[input.actor.id].capabilities
	}
}

# The flight search (/flights/search), which envoy.yaml decides by this rule instead of
# `allow` (policy.queries: search): any employee, directly or through agents that are all
# listed, may search; no capability needed. The minted token carries read_bookings only.
default search := {"allowed": false}

search := {
	"allowed": true,
	"grant": {
		"scopes": ["read_bookings"],
		"audience": input.attributes.request.http.host,
		"ttl": "60s",
	},
} if {
	input.attributes.request.http.method == "GET"
	employee
	every agent in input.delegation.chain {
		agents[agent.id]
	}
}
