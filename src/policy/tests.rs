use std::path::PathBuf;

use serde_json::json;

use super::*;

const FULL: Budget = Budget::Full(std::time::Duration::from_secs(5));

fn verdict(v: serde_json::Value) -> Result<Verdict, VerdictError> {
    Verdict::try_from(&Value::from(v))
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

#[test]
fn boolean_and_object_results() {
    assert_eq!(verdict(json!(true)).map(|v| v.allowed), Ok(true));
    assert_eq!(verdict(json!(false)).map(|v| v.allowed), Ok(false));
    assert_eq!(
        Verdict::try_from(&Value::Undefined),
        Err(VerdictError::Undefined)
    );

    let v = verdict(json!({
        "allowed": true,
        "headers": {"X-One": "1", "x-many": ["a", "b"],
                    "x-soft": {"value": "s", "append_action": "ADD_IF_ABSENT"}},
        "request_headers_to_remove": ["cookie"],
        "response_headers_to_add": {"x-resp": "r"},
        "query_parameters_to_set": {"q": "1", "r": ["2", "3"]},
        "query_parameters_to_remove": ["debug"],
        "dynamic_metadata": {"k": {"n": 1}},
        "grant": {"scopes": ["read"], "audience": "svc", "ttl": "60s"},
    }))
    .expect("valid");
    let mut ops: Vec<(&str, &str, AppendAction)> = v
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str(), h.action))
        .collect();
    ops.sort_by_key(|(name, value, _)| (*name, *value));
    assert_eq!(
        ops,
        [
            ("x-many", "a", AppendAction::OverwriteIfExistsOrAdd),
            ("x-many", "b", AppendAction::AppendIfExistsOrAdd),
            ("x-one", "1", AppendAction::OverwriteIfExistsOrAdd),
            ("x-soft", "s", AppendAction::AddIfAbsent),
        ]
    );
    assert_eq!(v.request_headers_to_remove, ["cookie"]);
    assert_eq!(v.response_headers_to_add.len(), 1);
    assert_eq!(
        v.query_parameters_to_set,
        [
            ("q".into(), "1".into()),
            ("r".into(), "2".into()),
            ("r".into(), "3".into())
        ]
    );
    assert_eq!(v.query_parameters_to_remove, ["debug"]);
    assert_eq!(
        v.grant,
        Some(Grant {
            scopes: vec!["read".into()],
            audience: vec!["svc".into()],
            ttl: Some(std::time::Duration::from_secs(60)),
        })
    );
}

/// OPA-Envoy's list form: objects read in order, a repeated name keeps every value in order
/// (the first overwrites what the client sent, the later ones append), in each header field.
#[test]
fn header_lists_of_objects_repeat_names_in_order() {
    let v = verdict(json!({
        "allowed": true,
        "headers": [{"x-rep": "a"}, {"x-rep": "b", "x-other": "o"}, {"X-Rep": ["c", "d"]}],
        "response_headers_to_add": [{"set-cookie": "s=1"}, {"set-cookie": "t=2"}],
    }))
    .expect("valid");
    let ops = |list: &[HeaderOp]| -> Vec<(String, String, AppendAction)> {
        list.iter()
            .map(|h| (h.name.clone(), h.value.clone(), h.action))
            .collect()
    };
    let (over, append) = (
        AppendAction::OverwriteIfExistsOrAdd,
        AppendAction::AppendIfExistsOrAdd,
    );
    let op = |n: &str, v: &str, a| (n.to_string(), v.to_string(), a);
    assert_eq!(
        ops(&v.headers),
        [
            op("x-rep", "a", over),
            op("x-other", "o", over),
            op("x-rep", "b", append),
            op("x-rep", "c", append),
            op("x-rep", "d", append),
        ]
    );
    assert_eq!(
        ops(&v.response_headers_to_add),
        [
            op("set-cookie", "s=1", over),
            op("set-cookie", "t=2", append)
        ]
    );
    // A value with its own action still counts as the name's first: later ones append.
    let v = verdict(json!({
        "allowed": true,
        "headers": [{"x-rep": {"value": "a", "append_action": "APPEND_IF_EXISTS_OR_ADD"}},
                    {"x-rep": "b"}],
    }))
    .expect("valid");
    assert_eq!(
        ops(&v.headers),
        [op("x-rep", "a", append), op("x-rep", "b", append)]
    );
    for bad in [json!([{"x": 1}]), json!(["x"]), json!([[{"x": "y"}]])] {
        assert!(
            matches!(
                verdict(json!({"allowed": true, "headers": bad})),
                Err(VerdictError::Malformed(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn deny_object_with_status_body_and_scope() {
    let v = verdict(
        json!({"allowed": false, "http_status": 429, "body": "slow down",
                           "insufficient_scope": "book_flight"}),
    )
    .expect("valid");
    assert!(!v.allowed);
    assert_eq!(v.http_status, Some(429));
    assert_eq!(v.body.as_deref(), Some("slow down"));
    assert_eq!(v.insufficient_scope, ["book_flight"]);
}

#[test]
fn malformed_results_are_errors() {
    let cases = [
        json!("yes"),
        json!(1),
        json!(null),
        json!({"headers": {}}),
        json!({"allowed": "true"}),
        json!({"allowed": true, "headers": ["x"]}),
        json!({"allowed": true, "headers": {"bad name": "x"}}),
        json!({"allowed": true, "headers": {"x": "a\nb"}}),
        json!({"allowed": true, "headers": {"x": 1}}),
        json!({"allowed": true, "headers": {"x": {"value": "a", "append_action": "SOMETIMES"}}}),
        json!({"allowed": false, "http_status": 99}),
        json!({"allowed": false, "http_status": "403"}),
        json!({"allowed": false, "body": {"a": 1}}),
        json!({"allowed": true, "grant": {"ttl": 60}}),
        json!({"allowed": true, "request_headers_to_remove": "cookie"}),
    ];
    for case in cases {
        assert!(
            matches!(verdict(case.clone()), Err(VerdictError::Malformed(_))),
            "{case} should be malformed"
        );
    }
}

#[test]
fn loads_policies_and_data_at_their_paths() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "main.rego",
        "package envoy.authz\nimport rego.v1\nallow if input.user in data.team.members\n",
    );
    write(dir.path(), "team/data.json", r#"{"members": ["alice"]}"#);
    write(
        dir.path(),
        "main_test.rego",
        "package envoy.authz\nthis is not parsed when serving",
    );
    write(
        dir.path(),
        "..2024_01_01/main.rego",
        "not rego: hidden copies are skipped",
    );
    let p = PolicySet::load_dir(dir.path(), "data.envoy.authz.allow").expect("loads");
    assert_eq!(p.files().len(), 1);
    let eval = |user: &str| {
        p.evaluate(Value::from(json!({"user": user})), FULL)
            .expect("evaluates")
    };
    assert_eq!(eval("alice"), Value::from(true));
    assert_eq!(eval("mallory"), Value::Undefined);
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "bad.rego", "package x\n\nallow if {\n");
    let err = PolicySet::load_dir(dir.path(), "data.x.allow")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.rego"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "a.rego",
        "package x\nimport rego.v1\nallow if true\n",
    );
    write(dir.path(), "data.json", "{oops");
    let err = PolicySet::load_dir(dir.path(), "data.x.allow")
        .unwrap_err()
        .to_string();
    assert!(err.contains("data.json"), "{err}");

    let err = PolicySet::load_dir(&dir.path().join("missing"), "data.x.allow")
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");

    let empty = tempfile::tempdir().expect("tmp");
    assert!(matches!(
        PolicySet::load_dir(empty.path(), "data.x.allow"),
        Err(PolicyError::Empty)
    ));
}

#[test]
fn query_must_name_a_rule() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "a.rego",
        "package x\nimport rego.v1\nallow if true\n",
    );
    let err = PolicySet::load_dir(dir.path(), "data.x.alow").unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
}

#[test]
fn unknown_functions_fail_at_load_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "a.rego",
        "package x\nimport rego.v1\ndefault allow := false\n\
         allow if input.x == 1\n\
         allow if http.send({\"url\": \"x\"}).status_code == 200\n\
         allow if [y | y := opa.jwt.decode(input.t)]\n\
         allow if helper(1)\n\
         allow if count(input.list) > sum([1]) \n\
         helper(n) := n > 0\n",
    );
    let err = PolicySet::load_dir(dir.path(), "data.x.allow").unwrap_err();
    let PolicyError::UnknownFunctions(calls) = &err else {
        panic!("unexpected error: {err}")
    };
    let names: Vec<(&str, u32)> = calls.iter().map(|c| (c.name.as_str(), c.line)).collect();
    assert_eq!(names, [("http.send", 5), ("opa.jwt.decode", 6)]);
    assert!(
        err.to_string()
            .contains("a.rego:5: unknown function `http.send`"),
        "{err}"
    );
}

#[test]
fn builtin_errors_make_the_expression_undefined() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "a.rego",
        "package x\nimport rego.v1\ndefault allow := false\nallow if to_number(input.n) > 1\n",
    );
    let p = PolicySet::load_dir(dir.path(), "data.x.allow").expect("loads");
    assert_eq!(
        p.evaluate(Value::from(json!({"n": "abc"})), FULL)
            .expect("eval"),
        Value::from(false)
    );
    assert_eq!(
        p.evaluate(Value::from(json!({"n": "5"})), FULL)
            .expect("eval"),
        Value::from(true)
    );
}

/// The shipped default policy, case by case.
mod default_policy {
    use super::*;

    fn policies() -> PolicySet {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
        PolicySet::load_dir(&dir, "data.envoy.authz.allow").expect("default policy loads")
    }

    struct Case {
        name: &'static str,
        method: &'static str,
        path: &'static [&'static str],
        subject: serde_json::Value,
        chain: &'static [&'static str],
        scopes: &'static [&'static str],
        allowed: bool,
    }

    fn input(c: &Case) -> Value {
        let party = |id: &str| json!({"id": id, "claims": {"sub": id}});
        let chain: Vec<_> = c.chain.iter().map(|id| party(id)).collect();
        Value::from(json!({
            "attributes": {"request": {"http": {"method": c.method, "host": "service-b"}}},
            "parsed_path": c.path,
            "subject": {"id": "alice", "claims": c.subject},
            "actor": chain.first().cloned().unwrap_or(serde_json::Value::Null),
            "delegation": {"chain": chain, "depth": c.chain.len()},
            "token": {"scopes": c.scopes},
        }))
    }

    #[test]
    fn cases() {
        let employee = json!({"sub": "alice", "employee": true});
        let director = json!({"sub": "dana", "employee": true, "department": "Operations", "title": "Director"});
        let cases = [
            Case {
                name: "agent books a flight for an employee",
                method: "POST",
                path: &["flights", "bookings"],
                subject: employee.clone(),
                chain: &["travel-agent"],
                scopes: &["book_flight"],
                allowed: true,
            },
            Case {
                name: "employee books directly",
                method: "POST",
                path: &["flights", "bookings"],
                subject: employee.clone(),
                chain: &[],
                scopes: &["book_flight"],
                allowed: true,
            },
            Case {
                name: "non-employee",
                method: "POST",
                path: &["flights", "bookings"],
                subject: json!({"sub": "eve"}),
                chain: &["travel-agent"],
                scopes: &["book_flight"],
                allowed: false,
            },
            Case {
                name: "agent lacks the capability",
                method: "POST",
                path: &["flights", "bookings"],
                subject: employee.clone(),
                chain: &["ops-agent"],
                scopes: &["book_flight"],
                allowed: false,
            },
            Case {
                name: "token lacks the scope",
                method: "POST",
                path: &["flights", "bookings"],
                subject: employee.clone(),
                chain: &["travel-agent"],
                scopes: &["read_bookings"],
                allowed: false,
            },
            Case {
                name: "untrusted agent",
                method: "GET",
                path: &["flights"],
                subject: employee.clone(),
                chain: &["shady-agent"],
                scopes: &["read_bookings"],
                allowed: false,
            },
            Case {
                name: "untrusted agent earlier in the chain",
                method: "GET",
                path: &["flights"],
                subject: employee.clone(),
                chain: &["travel-agent", "shady-agent"],
                scopes: &["read_bookings"],
                allowed: false,
            },
            Case {
                name: "two trusted agents",
                method: "GET",
                path: &["flights", "42"],
                subject: employee.clone(),
                chain: &["travel-agent", "orchestrator"],
                scopes: &["read_bookings"],
                allowed: true,
            },
            Case {
                name: "chain too deep",
                method: "GET",
                path: &["flights"],
                subject: employee.clone(),
                chain: &["travel-agent", "orchestrator", "orchestrator"],
                scopes: &["read_bookings"],
                allowed: false,
            },
            Case {
                name: "director in operations reaches admin through an agent",
                method: "GET",
                path: &["admin", "users"],
                subject: director.clone(),
                chain: &["ops-agent"],
                scopes: &["admin"],
                allowed: true,
            },
            Case {
                name: "an employee may not reach admin",
                method: "GET",
                path: &["admin", "users"],
                subject: employee.clone(),
                chain: &["ops-agent"],
                scopes: &["admin"],
                allowed: false,
            },
            Case {
                name: "admin through an agent without the admin capability",
                method: "GET",
                path: &["admin"],
                subject: director.clone(),
                chain: &["travel-agent"],
                scopes: &["admin"],
                allowed: false,
            },
            Case {
                name: "unknown route",
                method: "GET",
                path: &["payroll"],
                subject: director.clone(),
                chain: &[],
                scopes: &["admin"],
                allowed: false,
            },
            Case {
                name: "wrong method",
                method: "DELETE",
                path: &["flights", "bookings"],
                subject: employee.clone(),
                chain: &["travel-agent"],
                scopes: &["book_flight"],
                allowed: false,
            },
        ];
        let p = policies();
        for c in &cases {
            let result = p.evaluate(input(c), FULL).expect(c.name);
            let v = Verdict::try_from(&result).expect(c.name);
            assert_eq!(v.allowed, c.allowed, "{}: {result:?}", c.name);
        }
    }

    #[test]
    fn the_vm_answers_exactly_as_the_interpreter() {
        let p = policies();
        assert!(p.uses_vm(), "the default policy runs on the register VM");
        let subjects = [
            json!({"sub": "alice", "employee": true}),
            json!({"sub": "dana", "employee": true, "department": "Operations", "title": "Director"}),
            json!({"sub": "eve"}),
        ];
        let chains: [&[&str]; 5] = [
            &[],
            &["travel-agent"],
            &["ops-agent"],
            &["travel-agent", "shady-agent"],
            &["travel-agent", "orchestrator", "orchestrator"],
        ];
        let routes: [(&str, &[&str]); 5] = [
            ("POST", &["flights", "bookings"]),
            ("GET", &["flights", "7"]),
            ("GET", &["admin", "users"]),
            ("DELETE", &["flights", "bookings"]),
            ("GET", &["payroll"]),
        ];
        let scopes: [&[&str]; 3] = [
            &[],
            &["book_flight"],
            &["book_flight", "read_bookings", "admin"],
        ];
        let mut compared = 0;
        for subject in &subjects {
            for chain in chains {
                for (method, path) in routes {
                    for scopes in scopes {
                        let case = Case {
                            name: "",
                            method,
                            path,
                            subject: subject.clone(),
                            chain,
                            scopes,
                            allowed: false,
                        };
                        let doc = input(&case);
                        let vm = p.evaluate(doc.clone(), FULL).expect("vm");
                        let interpreter = p
                            .evaluate_interpreter(doc, std::time::Duration::from_secs(5))
                            .expect("interpreter");
                        assert_eq!(
                            vm, interpreter,
                            "{method} {path:?} {subject} {chain:?} {scopes:?}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, 225);
    }

    #[test]
    fn allow_carries_grant_and_missing_scope_is_reported() {
        let p = policies();
        let case = |scopes| Case {
            name: "",
            method: "POST",
            path: &["flights", "bookings"],
            subject: json!({"sub": "alice", "employee": true}),
            chain: &["travel-agent"],
            scopes,
            allowed: true,
        };
        let ok = Verdict::try_from(
            &p.evaluate(input(&case(&["book_flight"])), FULL)
                .expect("eval"),
        )
        .expect("verdict");
        assert_eq!(
            ok.grant.map(|g| g.scopes),
            Some(vec!["book_flight".to_string()])
        );
        let denied = Verdict::try_from(&p.evaluate(input(&case(&[])), FULL).expect("eval"))
            .expect("verdict");
        assert!(!denied.allowed);
        assert_eq!(denied.insufficient_scope, ["book_flight"]);
    }
}

#[test]
fn bundle_roots_and_yaml_data() {
    use std::collections::BTreeMap;
    let bundle = |entries: &[(&str, &str)]| {
        let files: BTreeMap<String, Vec<u8>> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        Bundle::from_files(files).expect("bundle")
    };
    let ok = bundle(&[
        (
            ".manifest",
            r#"{"revision": "7", "roots": ["envoy", "acl"]}"#,
        ),
        (
            "envoy/authz.rego",
            "package envoy.authz\nimport rego.v1\nallow if input.user in data.acl.users\n",
        ),
        ("acl/data.yaml", "users: [alice]\n"),
    ]);
    let p = PolicySet::from_bundle(&ok, "data.envoy.authz.allow", "").expect("loads");
    assert_eq!(&**p.revision(), "7");
    assert_eq!(
        p.evaluate(Value::from(json!({"user": "alice"})), FULL)
            .expect("eval"),
        Value::from(true)
    );

    let outside = bundle(&[
        (".manifest", r#"{"roots": ["envoy"]}"#),
        ("envoy/authz.rego", "package envoy.authz\nallow := true\n"),
        ("other/data.json", "{}"),
    ]);
    let err = PolicySet::from_bundle(&outside, "data.envoy.authz.allow", "").unwrap_err();
    assert!(matches!(err, PolicyError::OutsideRoots { .. }), "{err}");

    let package_outside = bundle(&[
        (".manifest", r#"{"roots": ["envoy/authz"]}"#),
        ("x.rego", "package envoy.other\nallow := true\n"),
    ]);
    let err = PolicySet::from_bundle(&package_outside, "data.envoy.other.allow", "").unwrap_err();
    assert!(matches!(err, PolicyError::OutsideRoots { .. }), "{err}");
}

#[test]
fn inline_evaluations_in_a_row_each_get_the_whole_slice() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("a.rego"),
        "package envoy.authz\nimport rego.v1\nallow if input.user == \"alice\"\n",
    )
    .expect("write");
    let p = PolicySet::load_dir(dir.path(), "data.envoy.authz.allow").expect("loads");
    assert!(p.uses_vm());
    // A slice far above one evaluation (and above any preemption by a busy machine), but
    // many evaluations over several slices in all: none may be charged for the others.
    let inline = Budget::Inline(std::time::Duration::from_millis(50));
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < std::time::Duration::from_millis(200) {
        let v = p.evaluate(Value::from(json!({"user": "alice"})), inline);
        assert_eq!(
            v.map_err(|e| e.to_string()),
            Ok(Value::from(true)),
            "evaluation {n}"
        );
        n += 1;
    }
    assert!(n > 20, "{n}");
    // Full, then inline again on the same thread: each limit applies to its own evaluation.
    p.evaluate(Value::from(json!({"user": "bob"})), FULL)
        .expect("full");
    p.evaluate(Value::from(json!({"user": "alice"})), inline)
        .expect("inline after full");
}

#[test]
fn with_on_a_nested_input_path_and_walk() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "a.rego",
        "package envoy.authz\nimport rego.v1\ndefault allow := false\n\
         inner if input.attributes.request.http.method == \"GET\"\n\
         allow if inner with input.attributes.request.http.method as \"GET\"\n\
         paths contains p if { some p, v; walk(input, [p, v]); v == \"x\" }\n",
    );
    let p = PolicySet::load_dir(dir.path(), "data.envoy.authz.allow").expect("loads");
    for input in [
        json!({"attributes": {"request": {"http": {"method": "POST"}}}}),
        json!({"attributes": {}}),
        json!({}),
    ] {
        let vm = p.evaluate(Value::from(input.clone()), FULL);
        let interpreted = p.evaluate_interpreter(
            Value::from(input.clone()),
            std::time::Duration::from_secs(5),
        );
        assert_eq!(
            vm.map_err(|e| e.to_string()),
            Ok(Value::from(true)),
            "{input}"
        );
        assert_eq!(
            interpreted.map_err(|e| e.to_string()),
            Ok(Value::from(true)),
            "{input}"
        );
    }
    let paths = p.evaluate_query(
        "data.envoy.authz.paths",
        Value::from(json!({"a": {"b": "x"}, "c": ["x"]})),
        std::time::Duration::from_secs(5),
    );
    assert_eq!(
        paths.map(|v| v.to_string()).map_err(|e| e.to_string()),
        Ok(Value::from_json_str(r#"[["a","b"],["c",0]]"#)
            .expect("json")
            .to_string())
    );
}

#[test]
fn a_query_may_name_an_object_built_key_by_key() {
    let dir = tempfile::tempdir().expect("tmp");
    write(
        dir.path(),
        "a.rego",
        "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if input.ok\n\
         result[\"allowed\"] := allow\nresult[\"http_status\"] := 418 if not allow\n",
    );
    let p = PolicySet::load_dir(dir.path(), "data.envoy.authz.result").expect("loads");
    assert_eq!(
        p.evaluate(Value::from(json!({"ok": true})), FULL)
            .expect("eval"),
        Value::from(json!({"allowed": true}))
    );
    assert_eq!(
        p.evaluate(Value::from(json!({"ok": false})), FULL)
            .expect("eval"),
        Value::from(json!({"allowed": false, "http_status": 418}))
    );
    // A query that names nothing the policy defines is still refused at load.
    let err = PolicySet::load_dir(dir.path(), "data.envoy.authz.resul").unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
}

#[test]
fn crypto_digests_and_hmacs_answer_as_opa() {
    let dir = tempfile::tempdir().expect("tmp");
    // Expected values from Python's hashlib and hmac.
    write(
        dir.path(),
        "a.rego",
        "package c\nimport rego.v1\n\
         sha256 := crypto.sha256(\"hello\")\nsha1 := crypto.sha1(\"hello\")\n\
         hmac256 := crypto.hmac.sha256(\"hello\", \"key\")\nhmac1 := crypto.hmac.sha1(\"hello\", \"key\")\n\
         hmac512_length := count(crypto.hmac.sha512(\"hello\", \"key\"))\n\
         equal := [crypto.hmac.equal(\"ab\", \"ab\"), crypto.hmac.equal(\"ab\", \"ac\")]\n\
         not_a_string if not crypto.sha256(1)\n",
    );
    let p = PolicySet::load_dir(dir.path(), "data.c.sha256").expect("loads");
    let all = p
        .evaluate_query(
            "data.c",
            Value::new_object(),
            std::time::Duration::from_secs(5),
        )
        .expect("eval");
    assert_eq!(
        all,
        Value::from(json!({
            "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha1": "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d",
            "hmac256": "9307b3b915efb5171ff14d8cb55fbcc798c6c0ef1456d66ded1a6aa723a58b7b",
            "hmac1": "b34ceac4516ff23a143e61d79d0fa7a4fbe5f266",
            "hmac512_length": 128,
            "equal": [true, false],
            "not_a_string": true,
        }))
    );
}
