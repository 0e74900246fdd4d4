//! The read analysis: what it follows (one test per construct), where it falls back to the
//! whole value, and a differential check of soundness — values outside the computed read set
//! are changed and the policy's answer must not change; values inside it must change the key.

use std::path::PathBuf;

use proptest::prelude::*;
use regorus::Value;
use serde_json::{Value as Json, json};

use crate::input::document_key;
use crate::policy::analysis::Segment::{self, Index, Key};
use crate::policy::{Budget, PolicySet};

const FULL: Budget = Budget::Full(std::time::Duration::from_secs(5));

fn load(files: &[(&str, &str)], query: &str) -> PolicySet {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    PolicySet::load_dir(dir.path(), query).unwrap_or_else(|e| panic!("{e}\n{files:?}"))
}

fn reads_of(rego: &str) -> Vec<Vec<Segment>> {
    load(&[("a.rego", rego)], "data.x.allow")
        .reads()
        .input_paths
        .clone()
}

fn path(p: &str) -> Vec<Segment> {
    if p.is_empty() {
        return Vec::new();
    }
    p.split('.')
        .map(|s| match s.parse::<u64>() {
            Ok(i) => Index(i),
            Err(_) => Key(s.to_string()),
        })
        .collect()
}

fn paths(ps: &[&str]) -> Vec<Vec<Segment>> {
    let mut v: Vec<_> = ps.iter().map(|p| path(p)).collect();
    v.sort();
    v
}

const HTTP: &str = "package x\nimport rego.v1\nhttp_request := input.attributes.request.http\n";

// --- what is followed ---

#[test]
fn a_package_alias_reads_what_is_read_through_it() {
    let r = reads_of(&format!("{HTTP}allow if http_request.method == \"GET\"\n"));
    assert_eq!(r, paths(&["attributes.request.http.method"]));
}

#[test]
fn chains_of_aliases_and_static_brackets() {
    let r = reads_of(&format!(
        "{HTTP}headers := http_request.headers\n\
         allow if headers[\"x-api-key\"] == \"k\"\n\
         allow if http_request[\"path\"] == \"/a\"\n"
    ));
    assert_eq!(
        r,
        paths(&[
            "attributes.request.http.headers.x-api-key",
            "attributes.request.http.path"
        ])
    );
}

#[test]
fn aliases_imported_from_another_package() {
    let lib = "package lib\nimport rego.v1\nhttp_request := input.attributes.request.http\n";
    let x = "package x\nimport rego.v1\nimport data.lib\nimport data.lib.http_request as req\n\
             allow if lib.http_request.method == \"GET\"\n\
             allow if req.headers.authorization == \"a\"\n\
             allow if data.lib.http_request.host == \"h\"\n";
    let set = load(&[("lib.rego", lib), ("x.rego", x)], "data.x.allow");
    assert_eq!(
        set.reads().input_paths,
        paths(&[
            "attributes.request.http.headers.authorization",
            "attributes.request.http.host",
            "attributes.request.http.method",
        ])
    );
}

#[test]
fn an_import_of_input_is_an_alias() {
    let r = reads_of(
        "package x\nimport rego.v1\nimport input.attributes.request.http as http\n\
         allow if http.method == \"GET\"\n",
    );
    assert_eq!(r, paths(&["attributes.request.http.method"]));
}

#[test]
fn local_assignments_and_unifications() {
    let r = reads_of(
        "package x\nimport rego.v1\n\
         allow if {\n  h := input.attributes.request.http.headers\n  h.authorization == \"a\"\n}\n\
         allow if {\n  input.subject.claims = c\n  c.employee == true\n}\n\
         allow if {\n  i := input\n  i.parsed_path[0] == \"a\"\n}\n",
    );
    assert_eq!(
        r,
        paths(&[
            "attributes.request.http.headers.authorization",
            "parsed_path.0",
            "subject.claims.employee",
        ])
    );
}

#[test]
fn object_get_reads_the_key() {
    let r = reads_of(&format!(
        "{HTTP}allow if object.get(http_request.headers, \"x-tenant\", \"none\") == \"acme\"\n\
         allow if object.get(input.subject, [\"claims\", \"team\"], \"\") == \"t\"\n"
    ));
    assert_eq!(
        r,
        paths(&[
            "attributes.request.http.headers.x-tenant",
            "subject.claims.team"
        ])
    );
}

#[test]
fn functions_read_what_their_bodies_read_of_each_parameter() {
    let r = reads_of(&format!(
        "{HTTP}is_get(r) if r.method == \"GET\"\n\
         tenant(h, default_value) := object.get(h, \"x-tenant\", default_value)\n\
         allow if {{\n  is_get(http_request)\n  tenant(http_request.headers, \"none\") == \"acme\"\n}}\n"
    ));
    assert_eq!(
        r,
        paths(&[
            "attributes.request.http.headers.x-tenant",
            "attributes.request.http.method"
        ])
    );
}

#[test]
fn iteration_reads_the_collection_as_a_whole() {
    let r = reads_of(
        "package x\nimport rego.v1\n\
         allow if {\n  some s in input.token.scopes\n  s == \"a\"\n}\n\
         allow if input.parsed_path[_] == \"admin\"\n",
    );
    assert_eq!(r, paths(&["parsed_path", "token.scopes"]));
}

#[test]
fn the_default_policy_reads_no_header() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = PolicySet::load_dir(&dir, "data.envoy.authz.allow").expect("loads");
    let r = &set.reads().input_paths;
    assert!(r.contains(&path("parsed_path")), "{r:?}");
    assert!(r.contains(&path("token.scopes")), "{r:?}");
    assert!(
        !r.iter()
            .any(|p| p.len() < 4 && p.first() == Some(&Key("attributes".into()))),
        "no header read: {r:?}"
    );
}

#[test]
fn the_aliased_bench_policy_reads_what_the_spelled_one_reads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/policies");
    let aliased = PolicySet::load_dir(&dir, "data.bench.aliased.allow").expect("loads");
    let spelled = PolicySet::load_dir(&dir, "data.bench.spelled.allow").expect("loads");
    assert_eq!(aliased.reads(), spelled.reads());
    assert!(
        aliased
            .reads()
            .input_paths
            .contains(&path("attributes.request.http.headers.user-agent")),
        "{:?}",
        aliased.reads()
    );
}

// --- where the whole value is read ---

#[test]
fn a_name_used_as_a_whole_reads_the_whole_value() {
    let r = reads_of(&format!("{HTTP}allow if count(http_request.headers) > 2\n"));
    assert_eq!(r, paths(&["attributes.request.http.headers"]));
    // Put into the answer.
    let r = reads_of(&format!("{HTTP}allow := {{\"h\": http_request}}\n"));
    assert_eq!(r, paths(&["attributes.request.http"]));
    // Returned by a function: its caller may use it whole.
    let r = reads_of(&format!(
        "{HTTP}id(v) := v\nallow if id(http_request).method == \"GET\"\n"
    ));
    assert_eq!(r, paths(&["attributes.request.http"]));
}

#[test]
fn dynamic_indexes_read_the_whole_collection_and_the_index() {
    let r = reads_of(&format!(
        "{HTTP}allow if http_request.headers[input.parsed_query.h[0]] == \"v\"\n"
    ));
    assert_eq!(
        r,
        paths(&["attributes.request.http.headers", "parsed_query.h.0"])
    );
}

#[test]
fn a_name_bound_twice_reads_both_values_whole() {
    let r = reads_of(
        "package x\nimport rego.v1\n\
         allow if {\n  x = input.a\n  x = input.b\n  x.c == 1\n}\n",
    );
    assert_eq!(r, paths(&["a", "b"]));
    // Bound by iteration too: the binding compares.
    let r = reads_of(
        "package x\nimport rego.v1\n\
         allow if {\n  some x in input.list\n  x = input.user\n  x.name == \"n\"\n}\n",
    );
    assert_eq!(r, paths(&["list", "user"]));
}

#[test]
fn a_binding_never_used_reads_whether_it_is_defined() {
    let r = reads_of("package x\nimport rego.v1\nallow if {\n  x := input.a.b\n}\n");
    assert_eq!(r, paths(&["a.b"]));
}

#[test]
fn bindings_inside_comprehensions_are_followed() {
    let r = reads_of(
        "package x\nimport rego.v1\n\
         allow if {\n  xs := [y | y := input.a.b]\n  xs[0].c == 1\n}\n",
    );
    assert_eq!(r, paths(&["a.b"]));
}

#[test]
fn a_rule_defined_twice_is_read_whole() {
    let r = reads_of(
        "package x\nimport rego.v1\n\
         r := input.a if input.c == 1\nr := input.b if input.c == 2\n\
         allow if r.m == 1\n",
    );
    assert_eq!(r, paths(&["a", "b", "c"]));
}

#[test]
fn a_package_query_uses_every_rule_whole() {
    // Not a query a Check can have (its answer is one rule's), but the exchange's is.
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(
            "a.rego".into(),
            format!("{HTTP}allow if http_request.method == \"GET\"\n"),
        )
        .expect("parses");
    let r = crate::policy::analysis::reads(engine.get_modules(), "data.x");
    assert_eq!(r.input_paths, paths(&["attributes.request.http"]));
}

#[test]
fn function_parameters_matched_by_pattern_are_read_whole() {
    let r = reads_of("package x\nimport rego.v1\nf([a, _]) if a == 1\nallow if f(input.pair)\n");
    assert_eq!(r, paths(&["pair"]));
    // A parameter the body never reads: whether the argument is defined still decides.
    let r = reads_of("package x\nimport rego.v1\nf(_) := true\nallow if f(input.p.q)\n");
    assert_eq!(r, paths(&["p.q"]));
}

#[test]
fn bare_input_is_everything() {
    let r = reads_of("package x\nimport rego.v1\nallow if count(input) > 1\n");
    assert_eq!(r, paths(&[""]));
}

#[test]
fn time_and_randomness_are_found_anywhere() {
    let set = load(
        &[(
            "a.rego",
            "package x\nimport rego.v1\nallow if late\nlate if time.now_ns() > 0\n",
        )],
        "data.x.allow",
    );
    assert_eq!(set.reads().nondeterministic, ["time.now_ns"]);
}

// --- found in review: each read a policy could hide from an earlier version ---

/// The read set of modules that are parsed only (not compiled), for `query`.
fn parsed_reads(files: &[(&str, &str)], query: &str) -> Vec<Vec<Segment>> {
    let mut engine = regorus::Engine::new();
    for (name, text) in files {
        engine
            .add_policy(name.to_string(), text.to_string())
            .expect("parses");
    }
    crate::policy::analysis::reads(engine.get_modules(), query).input_paths
}

#[test]
fn an_import_of_a_path_inside_a_rule_reads_through_the_rule() {
    let lib = "package lib\nimport rego.v1\nhttp_request := input.attributes.request.http\n";
    let x = "package x\nimport rego.v1\nimport data.lib.http_request.headers as headers\n\
             allow if headers.authorization == \"Bearer s3cret\"\n";
    let set = load(&[("lib.rego", lib), ("x.rego", x)], "data.x.allow");
    assert_eq!(
        set.reads().input_paths,
        paths(&["attributes.request.http.headers.authorization"])
    );
}

#[test]
fn keys_holding_dots_stay_one_key() {
    let r = reads_of(
        "package x\nimport rego.v1\n\
         import input.attributes.metadataContext.filterMetadata[\"envoy.filters.http.jwt_authn\"] as jwt\n\
         allow if jwt.payload.sub == \"alice\"\n",
    );
    let want: Vec<Segment> = [
        "attributes",
        "metadataContext",
        "filterMetadata",
        "envoy.filters.http.jwt_authn",
        "payload",
        "sub",
    ]
    .iter()
    .map(|k| Key(k.to_string()))
    .collect();
    assert_eq!(r, vec![want]);
}

#[test]
fn the_deepest_rule_on_a_path_answers() {
    let r = parsed_reads(
        &[(
            "a.rego",
            "package x\nimport rego.v1\n\
             limits[plan] := 10 if some plan in [\"free\", \"pro\"]\n\
             limits.custom := input.parsed_body.limit\n\
             allow if limits.custom > 5\n",
        )],
        "data.x.allow",
    );
    assert!(r.contains(&path("parsed_body.limit")), "{r:?}");
}

#[test]
fn with_on_a_rule_or_a_function_reads_everything() {
    let r = parsed_reads(
        &[(
            "a.rego",
            "package x\nimport rego.v1\nf(r) := r.a\ng(r) := r.b\n\
             allow if f(input.parsed_body) == 1 with f as g\n",
        )],
        "data.x.allow",
    );
    assert_eq!(r, paths(&[""]));
    let set_reads = parsed_reads(
        &[(
            "a.rego",
            "package x\nimport rego.v1\npick(s, n) := 0\n\
             allow if pick(\"k\", 2) == 1 with pick as rand.intn\n",
        )],
        "data.x.allow",
    );
    assert_eq!(set_reads, paths(&[""]));
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(
            "a.rego".into(),
            "package x\nimport rego.v1\npick(s, n) := 0\nallow if pick(\"k\", 2) == 1 with pick as rand.intn\n".into(),
        )
        .expect("parses");
    let reads = crate::policy::analysis::reads(engine.get_modules(), "data.x.allow");
    assert_eq!(reads.nondeterministic, ["rand.intn"]);
}

#[test]
fn a_name_that_is_an_import_and_a_rule_reads_both() {
    let r = parsed_reads(
        &[(
            "a.rego",
            "package x\nimport rego.v1\nimport input.attributes.request.http as req\n\
             req := input.parsed_body\nallow if req.user == \"admin\"\n",
        )],
        "data.x.allow",
    );
    assert!(r.contains(&path("parsed_body.user")), "{r:?}");
    assert!(r.contains(&path("attributes.request.http.user")), "{r:?}");
}

#[test]
fn a_function_named_like_a_builtin_reads_its_arguments_whole() {
    let r = parsed_reads(
        &[(
            "a.rego",
            "package x\nimport rego.v1\nobject.get(o, _, _) := o.b\n\
             allow if object.get(input.parsed_body, \"a\", 0) == 1\n",
        )],
        "data.x.allow",
    );
    assert_eq!(r, paths(&["parsed_body"]));
}

#[test]
fn doubling_chains_are_cut_short() {
    let mut text = String::from("package x\nimport rego.v1\nr0 := input.a\n");
    for i in 1..40 {
        text.push_str(&format!(
            "r{i} := object.get(r{p}, \"k{i}\", r{p})\n",
            p = i - 1
        ));
    }
    text.push_str("allow if r39.z == 1\n");
    let r = parsed_reads(&[("a.rego", &text)], "data.x.allow");
    assert_eq!(r, paths(&[""]), "the whole input, rather than 2^39 paths");
}

// --- the differential check ---

/// A request document shaped as onbehalf builds it, from small domains so that policies
/// answer both ways.
fn document() -> impl Strategy<Value = Json> {
    let method = prop::sample::select(vec!["GET", "POST", "DELETE"]);
    let path = prop::sample::select(vec![
        vec!["flights", "bookings"],
        vec!["flights"],
        vec!["admin", "users"],
        vec!["other"],
    ]);
    let header = |values: Vec<&'static str>| prop::option::of(prop::sample::select(values));
    let headers = (
        header(vec!["agent-sdk/1.0", "blocked-bot/2"]),
        header(vec!["k1", "k2"]),
        header(vec!["acme", "other"]),
        "[0-9a-f]{8}",
    );
    let capabilities =
        prop::sample::subsequence(vec!["book_flight", "read_bookings", "admin"], 0..=3);
    let actor = prop::option::of((
        prop::sample::select(vec!["travel-agent", "ops-agent", "rogue"]),
        capabilities.clone(),
    ));
    let claims = (
        any::<bool>(),
        prop::sample::select(vec!["Operations", "Sales"]),
        prop::sample::select(vec!["Director", "Engineer"]),
    );
    (method, path, headers, claims, actor, capabilities, 0..4u32).prop_map(
        |(
            method,
            path,
            (ua, key, tenant, rid),
            (employee, department, title),
            actor,
            scopes,
            depth,
        )| {
            let mut h = serde_json::Map::new();
            h.insert("x-request-id".into(), json!(rid));
            for (name, v) in [("user-agent", ua), ("x-api-key", key), ("x-tenant", tenant)] {
                if let Some(v) = v {
                    h.insert(name.into(), json!(v));
                }
            }
            let actor = actor.map_or(
                Json::Null,
                |(id, caps)| json!({"id": id, "claims": {"capabilities": caps}}),
            );
            let chain = match &actor {
                Json::Null => json!([]),
                a => json!([a]),
            };
            json!({
                "attributes": {"request": {"http": {
                    "method": method, "path": format!("/{}", path.join("/")),
                    "host": "service-b", "id": rid, "headers": h,
                }}},
                "parsed_path": path,
                "parsed_query": {},
                "truncated_body": false,
                "subject": {"id": "alice", "claims": {
                    "employee": employee, "department": department, "title": title,
                }},
                "actor": actor,
                "delegation": {"chain": chain, "depth": depth},
                "token": {"issuer": "https://idp", "scopes": scopes},
            })
        },
    )
}

/// Every position in `doc` (objects' members and arrays' items).
fn positions(doc: &Json) -> Vec<Vec<Segment>> {
    let mut out = Vec::new();
    let mut stack = vec![(Vec::new(), doc)];
    while let Some((at, v)) = stack.pop() {
        match v {
            Json::Object(m) => {
                for (k, child) in m {
                    let mut p = at.clone();
                    p.push(Key(k.clone()));
                    out.push(p.clone());
                    stack.push((p, child));
                }
            }
            Json::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    let mut p = at.clone();
                    p.push(Index(i as u64));
                    out.push(p.clone());
                    stack.push((p, child));
                }
            }
            _ => {}
        }
    }
    out
}

/// Neither inside a read path nor on the way to one.
fn independent(p: &[Segment], reads: &[Vec<Segment>]) -> bool {
    reads.iter().all(|r| !p.starts_with(r) && !r.starts_with(p))
}

fn at_mut<'j>(doc: &'j mut Json, p: &[Segment]) -> Option<&'j mut Json> {
    let mut node = doc;
    for seg in p {
        node = match (node, seg) {
            (Json::Object(m), Key(k)) => m.get_mut(k)?,
            (Json::Array(a), Index(i)) => a.get_mut(*i as usize)?,
            _ => return None,
        };
    }
    Some(node)
}

/// A small deterministic generator, so that one proptest case drives many choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn noise(rng: &mut Rng) -> Json {
    match rng.next(6) {
        0 => json!(null),
        1 => json!(rng.next(1000)),
        2 => json!(format!("noise-{}", rng.next(1000))),
        3 => json!({"deep": [rng.next(10)]}),
        4 => json!(["a", "b"]),
        _ => json!(true),
    }
}

/// Changes `doc` outside `reads` only: replaces values, removes members, adds members
/// (`x-request-id` among the names). Returns how many changes were made.
fn perturb(doc: &mut Json, reads: &[Vec<Segment>], rng: &mut Rng) -> usize {
    let mut changes = 0;
    for _ in 0..1 + rng.next(4) {
        let all = positions(doc);
        let free: Vec<&Vec<Segment>> = all.iter().filter(|p| independent(p, reads)).collect();
        match rng.next(3) {
            0 if !free.is_empty() => {
                let p = free[rng.next(free.len())].clone();
                if let Some(v) = at_mut(doc, &p) {
                    *v = noise(rng);
                    changes += 1;
                }
            }
            1 if !free.is_empty() => {
                // Removing an array item would shift the items after it: members only.
                let p = free[rng.next(free.len())].clone();
                if let Some((Key(k), parent)) = p.split_last()
                    && let Some(Json::Object(m)) = at_mut(doc, parent)
                {
                    m.remove(k);
                    changes += 1;
                }
            }
            _ => {
                // A member added to any object, where nothing is read.
                let mut objects: Vec<Vec<Segment>> = vec![Vec::new()];
                objects.extend(all.iter().cloned());
                let at = objects[rng.next(objects.len())].clone();
                let names = ["x-request-id", "x-extra", "claims", "traceparent", "zz"];
                let name = names[rng.next(names.len())];
                let mut p = at.clone();
                p.push(Key(name.into()));
                let value = noise(rng);
                if independent(&p, reads)
                    && let Some(Json::Object(m)) = at_mut(doc, &at)
                    && !m.contains_key(name)
                {
                    m.insert(name.into(), value);
                    changes += 1;
                }
            }
        }
    }
    changes
}

/// The answer, or that there was an error (the same error either way is not required).
fn answer(set: &PolicySet, doc: &Json) -> Result<Value, ()> {
    set.evaluate(Value::from(doc.clone()), FULL).map_err(|_| ())
}

/// Sets the value at `p`, making the way there.
fn set_at(doc: &mut Json, p: &[Segment], v: Json) {
    let mut node = doc;
    for seg in p {
        node = match seg {
            Key(k) => {
                if !node.is_object() {
                    *node = json!({});
                }
                node.as_object_mut()
                    .expect("an object")
                    .entry(k.clone())
                    .or_insert(Json::Null)
            }
            Index(i) => {
                if !node.is_array() {
                    *node = json!([]);
                }
                let a = node.as_array_mut().expect("an array");
                while a.len() <= *i as usize {
                    a.push(Json::Null);
                }
                &mut a[*i as usize]
            }
        };
    }
    *node = v;
}

/// The differential check for one policy and document: outside the read set nothing
/// changes the answer; inside it every path is in the key.
fn check(set: &PolicySet, doc: &Json, seed: u64) -> Result<(), TestCaseError> {
    let reads = &set.reads().input_paths;
    prop_assume!(set.reads().nondeterministic.is_empty());
    let before = answer(set, doc);
    let mut rng = Rng(seed | 1);
    for _ in 0..8 {
        let mut changed = doc.clone();
        if perturb(&mut changed, reads, &mut rng) == 0 {
            continue;
        }
        prop_assert_eq!(
            document_key(&Value::from(doc.clone()), reads),
            document_key(&Value::from(changed.clone()), reads),
            "a change outside the read set changed the key"
        );
        let after = answer(set, &changed);
        prop_assert_eq!(
            &before,
            &after,
            "reads {:?}\nbefore {}\nafter {}",
            reads,
            doc,
            changed
        );
    }
    for p in reads {
        let mut changed = doc.clone();
        set_at(&mut changed, p, json!({"probe": seed}));
        prop_assert_ne!(
            document_key(&Value::from(doc.clone()), reads),
            document_key(&Value::from(changed), reads),
            "{:?} is read but not in the key",
            p
        );
    }
    Ok(())
}

fn shipped() -> &'static PolicySet {
    static SET: std::sync::OnceLock<PolicySet> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
        PolicySet::load_dir(&dir, "data.envoy.authz.allow").expect("loads")
    })
}

fn bench(which: &str) -> PolicySet {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/policies");
    PolicySet::load_dir(&dir, &format!("data.bench.{which}.allow")).expect("loads")
}

/// An OPA-Envoy policy in the style of its documentation: the request under a name, an
/// import, a helper function, `object.get`, iteration.
const OPA_ENVOY_STYLE: &str = r#"package envoy.authz

import rego.v1

import input.attributes.request.http as http_request

default allow := false

headers := http_request.headers

claims := input.subject.claims

allow if {
	action_allowed
	not blocked(headers)
}

action_allowed if {
	http_request.method == "GET"
	glob.match("/flights*", ["/"], http_request.path)
	claims.employee
}

action_allowed if {
	http_request.method == "POST"
	input.parsed_path[0] == "flights"
	some scope in input.token.scopes
	scope == "book_flight"
	object.get(headers, "x-tenant", "acme") == "acme"
}

action_allowed if {
	claims.department == "Operations"
	claims.title == "Director"
}

blocked(h) if startswith(h["user-agent"], "blocked-bot")
"#;

/// Pieces of generated policies: ways to name the headers, and ways to read through a name.
const NAMINGS: &[(&str, &str, &str)] = &[
    // (package-level definitions, body prefix, the expression naming the headers)
    ("", "", "input.attributes.request.http.headers"),
    (
        "hdrs := input.attributes.request.http.headers\n",
        "",
        "hdrs",
    ),
    (
        "req := input.attributes.request.http\nreq_headers := req.headers\n",
        "",
        "req_headers",
    ),
    ("", "", "lib.http_request.headers"),
    ("", "", "lib_headers"),
    ("", "h := input.attributes.request.http.headers\n  ", "h"),
    ("", "input.attributes.request.http = r\n  ", "r.headers"),
];

const READS: &[&str] = &[
    "{h}[\"{n}\"] == \"{v}\"",
    "object.get({h}, \"{n}\", \"none\") == \"{v}\"",
    "has_value({h}, \"{v}\")",
    "not {h}[\"{n}\"]",
    "some k, x in {h}\n  k == \"{n}\"\n  x == \"{v}\"",
    "count({h}) > 2",
    "startswith({h}.{m}, \"{v}\")",
];

fn generated(parts: &[(usize, usize, usize)], any: bool) -> PolicySet {
    let names = ["x-api-key", "x-tenant", "user-agent"];
    let members = ["x_api_key", "authorization", "user_agent"];
    let values = ["k1", "acme", "agent-sdk"];
    let mut text = String::from(
        "package x\nimport rego.v1\nimport data.lib\n\
         import data.lib.http_request.headers as lib_headers\n\n",
    );
    text.push_str("has_value(obj, v) if obj[\"x-api-key\"] == v\n");
    let mut conditions = Vec::new();
    for (i, &(naming, read, which)) in parts.iter().enumerate() {
        let (defs, prefix, expr) = NAMINGS[naming % NAMINGS.len()];
        if !text.contains(defs) {
            text.push_str(defs);
        }
        let body = READS[read % READS.len()]
            .replace("{h}", expr)
            .replace("{n}", names[which % 3])
            .replace("{m}", members[which % 3])
            .replace("{v}", values[which % 3]);
        text.push_str(&format!("c{i} if {{\n  {prefix}{body}\n}}\n"));
        conditions.push(format!("c{i}"));
    }
    match any {
        true => {
            for c in &conditions {
                text.push_str(&format!("allow if {c}\n"));
            }
        }
        false => text.push_str(&format!("allow if {{\n  {}\n}}\n", conditions.join("\n  "))),
    }
    let lib = "package lib\nimport rego.v1\nhttp_request := input.attributes.request.http\n";
    load(&[("x.rego", &text), ("lib.rego", lib)], "data.x.allow")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_shipped_policy_reads_soundly(doc in document(), seed in any::<u64>()) {
        check(shipped(), &doc, seed)?;
    }

    #[test]
    fn the_bench_policies_read_soundly(doc in document(), seed in any::<u64>()) {
        static SETS: std::sync::OnceLock<[PolicySet; 2]> = std::sync::OnceLock::new();
        let sets = SETS.get_or_init(|| [bench("aliased"), bench("spelled")]);
        for set in sets {
            check(set, &doc, seed)?;
        }
        // The two spell one policy.
        prop_assert_eq!(answer(&sets[0], &doc), answer(&sets[1], &doc));
    }

    #[test]
    fn an_opa_envoy_style_policy_reads_soundly(doc in document(), seed in any::<u64>()) {
        static SET: std::sync::OnceLock<PolicySet> = std::sync::OnceLock::new();
        let set = SET.get_or_init(|| load(&[("a.rego", OPA_ENVOY_STYLE)], "data.envoy.authz.allow"));
        check(set, &doc, seed)?;
    }

    #[test]
    fn generated_policies_read_soundly(
        parts in prop::collection::vec((0..NAMINGS.len(), 0..READS.len(), 0..3usize), 1..4),
        any in any::<bool>(),
        docs in prop::collection::vec((document(), any::<u64>()), 4),
    ) {
        let set = generated(&parts, any);
        for (doc, seed) in &docs {
            check(&set, doc, *seed)?;
        }
    }
}

/// The documents make every policy answer both ways, and the changes are made: the check
/// is not vacuous.
#[test]
fn the_documents_exercise_both_answers() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let opa = load(&[("a.rego", OPA_ENVOY_STYLE)], "data.envoy.authz.allow");
    let sets = [shipped(), &bench("aliased"), &opa];
    let mut allowed = [0; 3];
    let mut changes = 0;
    for i in 0..300u64 {
        let doc = document()
            .new_tree(&mut runner)
            .expect("a document")
            .current();
        for (n, set) in sets.iter().enumerate() {
            let v = answer(set, &doc).expect("answers");
            let allow = v == Value::from(true) || v["allowed"] == Value::from(true);
            allowed[n] += usize::from(allow);
            changes += perturb(&mut doc.clone(), &set.reads().input_paths, &mut Rng(i + 1));
        }
    }
    for (n, count) in allowed.iter().enumerate() {
        assert!(
            (10..290).contains(count),
            "policy {n}: {count} of 300 allowed"
        );
    }
    assert!(changes > 900, "{changes} changes");
}

/// The check can fail: with one read left out of the set, a change to it is found.
#[test]
fn the_check_finds_a_read_left_out() {
    let set = bench("aliased");
    let method = path("attributes.request.http.method");
    let fewer: Vec<_> = set
        .reads()
        .input_paths
        .iter()
        .filter(|p| **p != method)
        .cloned()
        .collect();
    let doc = json!({
        "attributes": {"request": {"http": {"method": "POST", "headers": {}}}},
        "parsed_path": ["flights", "bookings"],
        "subject": {"id": "alice", "claims": {"employee": true}},
        "actor": null,
        "delegation": {"chain": [], "depth": 0},
        "token": {"scopes": ["book_flight"]},
    });
    assert_eq!(answer(&set, &doc), Ok(Value::from(true)));
    let mut rng = Rng(7);
    let found = (0..200).any(|_| {
        let mut changed = doc.clone();
        perturb(&mut changed, &fewer, &mut rng) > 0 && answer(&set, &changed) != answer(&set, &doc)
    });
    assert!(found, "no change of the left-out read was tried");
}
