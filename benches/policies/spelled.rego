# aliased.rego with every reference written out: the baseline the aliased policy is measured
# against (benches/run.sh).
package bench.spelled

import rego.v1

default allow := false

allow if {
	count(required) > 0
	not blocked_client
	subject_may_use_route
	delegation_ok
	count(missing_scopes) == 0
}

required contains route.capability if {
	some route in data.bench.routes
	input.attributes.request.http.method in route.methods
	has_prefix(input.parsed_path, route.path)
}

has_prefix(p, prefix) if {
	count(p) >= count(prefix)
	every i, segment in prefix {
		p[i] == segment
	}
}

blocked_client if startswith(object.get(input.attributes.request.http.headers, "user-agent", ""), "blocked-bot")

missing_scopes contains capability if {
	some capability in required
	not capability in input.token.scopes
}

employee if input.subject.claims.employee == true

subject_may_use_route if {
	employee
	not "admin" in required
}

subject_may_use_route if {
	"admin" in required
	employee
	input.subject.claims.department == "Operations"
	input.subject.claims.title == "Director"
}

delegation_ok if input.actor == null

delegation_ok if {
	input.actor != null
	input.delegation.depth <= data.bench.max_delegation_depth
	every party in input.delegation.chain {
		data.bench.agents[party.id]
	}
	every capability in required {
		capability in data.bench.agents[input.actor.id].capabilities
	}
}
