//! Decision logs in OPA's shape, from the real sidecar over real gRPC: a file sink, an HTTP
//! sink speaking OPA's upload (a real HTTP server in the test), and a sink that is down.

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

use crate::common::*;

fn yaml(idp: &IdpServer, logs: &str) -> String {
    format!("{}decision_logs:\n{logs}", config_yaml(&remote_issuer(idp)))
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn decision_id(r: &Reply) -> String {
    r.headers
        .get("x-onbehalf-decision-id")
        .and_then(|v| v.first())
        .cloned()
        .expect("a decision id header")
}

#[tokio::test]
async fn a_file_gets_one_masked_line_per_decision_cache_hits_included() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("decisions.log");
    let s = Sidecar::start(&yaml(&idp, &format!("  file: {}\n", file.display()))).await;
    s.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "book_flight"),
    );
    let first = s.check_token("POST", "/flights/bookings", &token).await;
    let second = s.check_token("POST", "/flights/bookings", &token).await;
    let refused = s.check("POST", "/flights/bookings", &[]).await;
    assert_eq!(
        (first.status, second.status, refused.status),
        (200, 200, 401)
    );
    let lines: Vec<Value> = until("three lines", || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        (lines.len() == 3).then_some(lines)
    })
    .await;
    let text = std::fs::read_to_string(&file).expect("log");
    assert!(!text.contains(&token), "the token is in the log");
    for (line, reply) in lines.iter().zip([&first, &second]) {
        assert_eq!(
            line["decision_id"].as_str(),
            Some(decision_id(reply).as_str())
        );
        assert_eq!(line["path"], "envoy/authz/allow");
        assert_eq!(line["result"]["allowed"], true, "{line}");
        assert_eq!(
            line["input"]["attributes"]["request"]["http"]["method"],
            "POST"
        );
        assert!(
            line["input"]["attributes"]["request"]["http"]["headers"]
                .get("authorization")
                .is_none()
        );
        assert!(
            line["erased"]
                .as_array()
                .expect("erased")
                .contains(&Value::from(
                    "/input/attributes/request/http/headers/authorization"
                ))
        );
        let bundles = line["bundles"].as_object().expect("bundles");
        assert!(
            bundles.values().all(|b| b["revision"].is_string()),
            "{line}"
        );
        assert_eq!(line["labels"]["app"], "onbehalf");
    }
    // The second answer came from the decision cache; its input is recorded all the same.
    assert_eq!(lines[0]["onbehalf"]["cached"], false);
    assert_eq!(lines[1]["onbehalf"]["cached"], true);
    assert_eq!(lines[2]["onbehalf"]["reason"], "missing_token");
    assert_eq!(lines[2]["onbehalf"]["status"], 401);
    s.stop().await;
}

type Received = Arc<Mutex<Vec<Value>>>;

async fn receive(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        != Some("gzip")
    {
        return StatusCode::BAD_REQUEST;
    }
    let mut json = String::new();
    if flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut json)
        .is_err()
    {
        return StatusCode::BAD_REQUEST;
    }
    let Ok(Value::Array(entries)) = serde_json::from_str(&json) else {
        return StatusCode::BAD_REQUEST;
    };
    received.lock().expect("lock").extend(entries);
    StatusCode::NO_CONTENT
}

#[tokio::test]
async fn uploads_reach_an_opa_style_endpoint_and_a_dead_one_costs_nothing() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let received: Received = Arc::default();
    let (listener, addr) = bind().await;
    let _stop = serve(
        listener,
        axum::Router::new()
            .route("/logs", post(receive))
            .with_state(received.clone()),
    );
    let s = Sidecar::start(&yaml(&idp, &format!("  url: http://{addr}/logs\n"))).await;
    s.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "book_flight"),
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(decision_id(
            &s.check_token("POST", "/flights/bookings", &token).await,
        ));
    }
    let entries = until("five uploaded entries", || {
        let got = received.lock().expect("lock").clone();
        (got.len() == 5).then_some(got)
    })
    .await;
    let uploaded: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["decision_id"].as_str())
        .collect();
    assert_eq!(uploaded, ids.iter().map(String::as_str).collect::<Vec<_>>());
    s.stop().await;

    // An endpoint that refuses the batch for good (400): dropped and counted, not retried.
    let (refusing, refused_addr) = bind().await;
    let _stop_refusing = serve(
        refusing,
        axum::Router::new().route("/logs", post(|| async { StatusCode::BAD_REQUEST })),
    );
    let s = Sidecar::start(&yaml(&idp, &format!("  url: http://{refused_addr}/logs\n"))).await;
    s.wait_ready().await;
    s.check_token("POST", "/flights/bookings", &token).await;
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = s.metrics().await;
        if metrics.contains("onbehalf_decision_logs_total{result=\"failed\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        metrics.contains("onbehalf_decision_logs_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    s.stop().await;

    // Nobody listens there: uploads fail and are retried, the small queue fills and drops,
    // and every Check is answered as usual meanwhile.
    let (closed, dead) = bind().await;
    drop(closed);
    let s = Sidecar::start(&yaml(
        &idp,
        &format!("  url: http://{dead}/logs\n  buffer: 4\n  max_batch: 2\n"),
    ))
    .await;
    s.wait_ready().await;
    let started = std::time::Instant::now();
    for _ in 0..40 {
        let r = s.check_token("POST", "/flights/bookings", &token).await;
        assert_eq!(r.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = s.metrics().await;
        if !metrics.contains("onbehalf_decision_logs_total{result=\"dropped\"} 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        !metrics.contains("onbehalf_decision_logs_total{result=\"dropped\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("onbehalf_decision_log_upload_failures_total"),
        "{metrics}"
    );
    s.stop().await;
}
