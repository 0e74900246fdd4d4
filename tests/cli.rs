//! The `onbehalf` binary as a user runs it: `check`, `--help`, and start-up errors.

use std::process::{Command, Output};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::common::*;

const DEMO_ISSUER: &str = "https://idp.demo.onbehalf.dev";

fn onbehalf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onbehalf"))
        .args(args)
        .current_dir(repo())
        .env_remove("RUST_LOG")
        .output()
        .expect("run onbehalf")
}

/// A token from the demo IdP, as the quickstart's embedded defaults trust.
fn demo_token(actors: &[&str], scope: &str) -> String {
    let pem = std::fs::read(repo().join("deploy/demo/keys/demo-rs256.pem")).expect("demo key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("demo-rs256".into());
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa");
    jsonwebtoken::encode(&header, &delegation(DEMO_ISSUER, actors, scope), &key).expect("sign")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn check_allows_and_shows_input_and_result() {
    let token = demo_token(&["travel-agent"], "book_flight");
    let out = onbehalf(&[
        "check",
        "-m",
        "POST",
        "-p",
        "/flights/bookings?seat=12A",
        "-t",
        &token,
    ]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert_eq!(r["decision"], "allow");
    assert_eq!(r["input"]["subject"]["id"], "alice");
    assert_eq!(r["input"]["actor"]["id"], "travel-agent");
    assert_eq!(
        r["input"]["parsed_query"]["seat"],
        serde_json::json!(["12A"])
    );
    assert_eq!(r["result"]["allowed"], true);
    assert_eq!(
        r["result"]["grant"]["scopes"],
        serde_json::json!(["book_flight"])
    );
    assert_eq!(r["response"]["status"], 200);
}

#[test]
fn check_denies_with_exit_code_1() {
    let token = demo_token(&["ops-agent"], "book_flight");
    let out = onbehalf(&[
        "check",
        "-m",
        "POST",
        "-p",
        "/flights/bookings",
        "-t",
        &token,
    ]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["reason"], "policy");
    assert_eq!(r["response"]["status"], 403);
    assert_eq!(r["result"], serde_json::json!({"allowed": false}));

    let out = onbehalf(&["check", "-p", "/flights"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(r["reason"], "missing_token");
    assert_eq!(r["response"]["status"], 401);
}

#[test]
fn check_reads_a_request_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("req.json");
    let token = demo_token(&["travel-agent"], "read_bookings");
    let req = serde_json::json!({"method": "GET", "path": "/flights/42", "token": token,
                                 "headers": {"x-trace": "abc"}});
    std::fs::write(&file, req.to_string()).expect("write");
    let out = onbehalf(&["check", "--request", file.to_str().expect("utf8")]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert_eq!(
        r["input"]["attributes"]["request"]["http"]["headers"]["x-trace"],
        "abc"
    );

    std::fs::write(&file, r#"{"methd": "GET"}"#).expect("write");
    let out = onbehalf(&["check", "--request", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("req.json") && err.contains("methd"), "{err}");
}

#[test]
fn bad_config_stops_start_up_saying_where() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "server:\n  grpc_addr: 127.0.0.1:0\n  admin_port: 1\n",
    )
    .expect("write");
    let out = onbehalf(&["serve", "--config", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        err.contains("server.admin_port") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn check_with_a_broken_policy_names_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("authz.rego"),
        "package envoy.authz\n\nallow if {\n",
    )
    .expect("write");
    let file = dir.path().join("config.yaml");
    let yaml = format!(
        "policy:\n  dir: {}\nauthn:\n  issuers:\n    - issuer: x\n      audiences: [y]\n      jwks_file: {}\n",
        dir.path().display(),
        repo().join("deploy/demo/jwks.json").display()
    );
    std::fs::write(&file, yaml).expect("write");
    let out = onbehalf(&["check", "--config", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authz.rego"), "{err}");
}

#[test]
fn policy_test_runs_the_shipped_tests() {
    let out = onbehalf(&["policy", "test", "policies"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("PASS policies/authz_test.rego: data.envoy.authz_test.test_agent_books_a_flight_for_an_employee"), "{text}");
    assert!(text.trim_end().ends_with("passed, 0 failed"), "{text}");
}

#[test]
fn policy_test_reports_failures_with_file_and_name() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("p.rego"),
        "package p\nimport rego.v1\nallow if input.ok\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package p_test\nimport rego.v1\ntest_ok if data.p.allow with input as {\"ok\": true}\ntest_broken if data.p.allow with input as {\"ok\": false}\n",
    )
    .expect("write");
    let out = onbehalf(&["policy", "test", dir.path().to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PASS") && text.contains("data.p_test.test_ok"),
        "{text}"
    );
    assert!(
        text.contains("FAIL") && text.contains("p_test.rego: data.p_test.test_broken"),
        "{text}"
    );
    assert!(text.contains("1 passed, 1 failed"), "{text}");
}

#[test]
fn help_explains_each_command() {
    let out = onbehalf(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in ["serve", "check", "delegation"] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

/// `onbehalf exchange` against a running exchange: the issued token's claims, exit 0; a
/// refusal's error, exit 1; `--token-only` for the shell.
#[tokio::test]
async fn exchange_prints_the_issued_token_and_its_claims() {
    let x = crate::exchange::Exchange::start("").await;
    let alice = x.alice("book_flight read_bookings", serde_json::json!({}));
    let agent = x.agent("travel-agent", serde_json::json!({}));
    let run = |extra: Vec<String>| {
        let mut args = vec![
            "exchange".to_string(),
            "--url".into(),
            x.issuer.clone(),
            "--subject-token".into(),
            alice.clone(),
            "--actor-token".into(),
            agent.clone(),
        ];
        args.extend(extra);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            onbehalf(&args)
        })
    };
    let out = run(vec!["--scope".into(), "book_flight".into()])
        .await
        .expect("run");
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert_eq!(r["claims"]["sub"], "alice");
    assert_eq!(r["claims"]["act"]["sub"], "travel-agent");
    assert_eq!(r["scope"], "book_flight");
    assert_eq!(r["header"]["typ"], "JWT");

    let out = run(vec!["--scope".into(), "admin".into()])
        .await
        .expect("run");
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r:#}");
    assert_eq!(r["response"]["error"], "invalid_scope");

    let out = run(vec!["--token-only".into()]).await.expect("run");
    assert_eq!(out.status.code(), Some(0));
    let token = String::from_utf8(out.stdout).expect("utf8");
    let claims = x.verify(token.trim()).await;
    assert_eq!(claims["scope"], "book_flight read_bookings");
    x.sidecar.stop().await;
}
