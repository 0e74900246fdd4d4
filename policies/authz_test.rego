# Tests of the default policy: `onbehalf policy test policies`.
package envoy.authz_test

import rego.v1

import data.envoy.authz

employee := {"sub": "alice", "employee": true}

director := {"sub": "dana", "employee": true, "department": "Operations", "title": "Director"}

# A request document as onbehalf builds it, reduced to what the policy reads.
request(method, path, subject, chain, scopes) := {
	"attributes": {"request": {"http": {"method": method, "host": "service-b"}}},
	"parsed_path": path,
	"subject": {"id": subject.sub, "claims": subject},
	"actor": actor(chain),
	"delegation": {"chain": [{"id": a, "claims": {"sub": a}} | some a in chain], "depth": count(chain)},
	"token": {"scopes": scopes},
}

actor(chain) := {"id": chain[0], "claims": {"sub": chain[0]}} if count(chain) > 0

actor(chain) := null if count(chain) == 0

test_agent_books_a_flight_for_an_employee if {
	result := authz.allow with input as request("POST", ["flights", "bookings"], employee, ["travel-agent"], ["book_flight"])
	result.allowed
	result.grant.scopes == ["book_flight"]
	result.headers["x-onbehalf-capabilities"] == "book_flight"
}

test_employee_books_directly if {
	authz.allow.allowed with input as request("POST", ["flights", "bookings"], employee, [], ["book_flight"])
}

test_agent_without_the_capability_is_denied if {
	not authz.allow.allowed with input as request("POST", ["flights", "bookings"], employee, ["ops-agent"], ["book_flight"])
}

test_missing_scope_is_reported if {
	result := authz.allow with input as request("POST", ["flights", "bookings"], employee, ["travel-agent"], [])
	not result.allowed
	result.insufficient_scope == ["book_flight"]
}

test_untrusted_agent_anywhere_in_the_chain_is_denied if {
	not authz.allow.allowed with input as request("GET", ["flights"], employee, ["travel-agent", "shady-agent"], ["read_bookings"])
}

test_chain_deeper_than_the_limit_is_denied if {
	not authz.allow.allowed with input as request("GET", ["flights"], employee, ["travel-agent", "orchestrator", "orchestrator"], ["read_bookings"])
}

test_director_in_operations_reaches_admin_through_an_agent if {
	authz.allow.allowed with input as request("GET", ["admin", "users"], director, ["ops-agent"], ["admin"])
}

test_employee_cannot_reach_admin if {
	not authz.allow.allowed with input as request("GET", ["admin", "users"], employee, ["ops-agent"], ["admin"])
}

test_unknown_route_is_denied if {
	not authz.allow.allowed with input as request("GET", ["payroll"], director, [], ["admin"])
}

test_max_depth_comes_from_data if {
	authz.allow.allowed with input as request("GET", ["flights"], employee, ["travel-agent", "orchestrator", "orchestrator"], ["read_bookings"])
		with data.onbehalf.max_delegation_depth as 3
}

book_flight := ["demo.flights.v1.FlightService", "BookFlight"]

test_agent_books_a_flight_over_grpc_within_the_fare_limit if {
	authz.allow.allowed with input as object.union(
		request("POST", book_flight, employee, ["travel-agent"], ["book_flight"]),
		{"parsed_body": {"passenger": "alice", "flight": "OB101", "price": 612}},
	)
}

test_agent_cannot_book_a_fare_above_the_limit if {
	not authz.allow.allowed with input as object.union(
		request("POST", book_flight, employee, ["travel-agent"], ["book_flight"]),
		{"parsed_body": {"passenger": "alice", "flight": "OB771", "price": 1480}},
	)
}

test_employee_books_any_fare_herself if {
	authz.allow.allowed with input as object.union(
		request("POST", book_flight, employee, [], ["book_flight"]),
		{"parsed_body": {"passenger": "alice", "flight": "OB771", "price": 1480}},
	)
}

test_an_undecoded_booking_message_is_denied if {
	not authz.allow.allowed with input as object.union(
		request("POST", book_flight, employee, ["travel-agent"], ["book_flight"]),
		{"parsed_body": null, "truncated_body": true},
	)
}

test_any_listed_agent_may_search_for_an_employee if {
	result := authz.search with input as request("GET", ["flights", "search"], employee, ["ops-agent"], [])
	result.allowed
	result.grant.scopes == ["read_bookings"]
}

test_an_unlisted_agent_may_not_search if {
	not authz.search.allowed with input as request("GET", ["flights", "search"], employee, ["shady-agent"], [])
}
