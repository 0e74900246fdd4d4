# The benchmarks' policy as OPA-Envoy's documentation writes policies: the request and the
# parties under names bound once (`http_request := input.attributes.request.http`), read
# through those names. spelled.rego is the same policy with every reference written out; the
# two must decide alike and, with the read analysis following the names, cache alike.
package bench.aliased

import rego.v1

http_request := input.attributes.request.http

headers := http_request.headers

path := input.parsed_path

subject := input.subject

claims := subject.claims

agent := input.actor

routes := data.bench.routes

agents := data.bench.agents

default allow := false

allow if {
	count(required) > 0
	not blocked_client
	subject_may_use_route
	delegation_ok
	count(missing_scopes) == 0
}

required contains route.capability if {
	some route in routes
	http_request.method in route.methods
	has_prefix(path, route.path)
}

has_prefix(p, prefix) if {
	count(p) >= count(prefix)
	every i, segment in prefix {
		p[i] == segment
	}
}

blocked_client if startswith(object.get(headers, "user-agent", ""), "blocked-bot")

missing_scopes contains capability if {
	some capability in required
	not capability in input.token.scopes
}

employee if claims.employee == true

subject_may_use_route if {
	employee
	not "admin" in required
}

subject_may_use_route if {
	"admin" in required
	employee
	claims.department == "Operations"
	claims.title == "Director"
}

delegation_ok if agent == null

delegation_ok if {
	agent != null
	input.delegation.depth <= data.bench.max_delegation_depth
	every party in input.delegation.chain {
		agents[party.id]
	}
	every capability in required {
		capability in agents[agent.id].capabilities
	}
}
