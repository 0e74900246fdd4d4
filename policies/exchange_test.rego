# Tests of the exchange policy: `onbehalf policy test policies`.
package onbehalf.exchange_test

import rego.v1

import data.onbehalf.exchange

alice := {"sub": "alice", "employee": true, "scope": "book_flight read_bookings admin"}

request(subject, actor, chain, scope) := {
	"subject": {"id": subject.sub, "claims": subject},
	"actor": {"id": actor, "claims": {"sub": actor}},
	"chain": [{"id": a, "claims": {"sub": a}} | some a in chain],
	"scope": scope,
	"audience": ["service-b"],
	"resource": [],
	"requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
}

test_the_agent_gets_what_alice_holds_and_it_may_do if {
	result := exchange with input as request(alice, "travel-agent", [], [])
	result.allow
	# admin: Alice holds it, the travel agent may not.
	result.scopes == ["book_flight", "read_bookings"]
	result.audience == ["service-b"]
	result.ttl == "15m"
	"employee" in result.subject_claims
}

test_what_was_asked_within_what_is_allowed if {
	result := exchange with input as request(alice, "travel-agent", [], ["book_flight"])
	result.scopes == ["book_flight"]
	# Asked for more than allowed: the scope is left out, and onbehalf answers invalid_scope.
	more := exchange with input as request(alice, "travel-agent", [], ["book_flight", "admin"])
	more.scopes == ["book_flight"]
}

test_an_unregistered_agent_is_refused if {
	result := exchange with input as request(alice, "rogue-agent", [], [])
	not result.allow
	result.error == "unauthorized_client"
}

test_a_non_employee_is_refused if {
	result := exchange with input as request({"sub": "mallory", "scope": "book_flight"}, "travel-agent", [], [])
	not result.allow
	result.error == "invalid_grant"
}

test_redelegation_is_bounded_by_every_agent_in_the_chain if {
	# The orchestrator may admin; delegated on to the ops agent, admin and read_bookings remain.
	result := exchange with input as request(alice, "ops-agent", ["orchestrator"], [])
	result.allow
	result.scopes == ["admin", "read_bookings"]
	result.ttl == "5m"
	# Through the travel agent first, admin is gone: read_bookings only.
	narrowed := exchange with input as request(alice, "ops-agent", ["travel-agent"], [])
	narrowed.scopes == ["read_bookings"]
}

test_the_depth_limit_holds if {
	result := exchange with input as request(alice, "travel-agent", ["orchestrator", "ops-agent"], [])
	not result.allow
}

test_nothing_to_delegate_is_invalid_scope if {
	result := exchange with input as request({"sub": "alice", "employee": true, "scope": "admin"}, "travel-agent", [], [])
	not result.allow
	result.error == "invalid_scope"
}
