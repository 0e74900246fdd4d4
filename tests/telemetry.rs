//! What operators see: `/metrics` after known traffic, parsed by an independent OpenMetrics
//! parser (Python's prometheus_client), and traces exported to a real OTLP receiver.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::common::*;

/// `/metrics` parsed by prometheus_client's strict OpenMetrics parser: every sample as
/// `name{label="value",...}` (labels sorted) -> value. A text it cannot parse fails the test.
fn parse_openmetrics(text: &str) -> BTreeMap<String, f64> {
    let python = std::env::var("ONBEHALF_TEST_PYTHON")
        .expect("ONBEHALF_TEST_PYTHON is not set: run the suite with scripts/test.sh");
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "not OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} in {samples:#?}"))
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_and_move_with_known_traffic() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = Sidecar::start(&config_yaml(&remote_issuer(&idp))).await;
    s.wait_ready().await;
    let before = parse_openmetrics(&s.metrics().await);
    let issuer = idp.issuer();
    assert_eq!(
        sample(
            &before,
            &format!("onbehalf_jwks_fetches_total{{issuer=\"{issuer}\",result=\"ok\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &before,
            &format!(
                "onbehalf_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );

    let mut claims = delegation(&issuer, &["travel-agent"], "book_flight");
    claims["act"]["capabilities"] = json!(["book_flight"]);
    let token = sign("rsa-1", &claims);
    // Two allows of one decision (the second from both caches), a policy denial with the
    // same token, and a request without one.
    for _ in 0..2 {
        let r = s.check_token("POST", "/flights/bookings", &token).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        s.check_token("DELETE", "/admin/users", &token).await.status,
        403
    );
    assert_eq!(s.check("GET", "/flights", &[]).await.status, 401);

    let text = s.metrics().await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    for forbidden in [token.as_str(), "alice", "travel-agent", "/flights"] {
        assert!(!text.contains(forbidden), "{forbidden} is a label: {text}");
    }
    // Every family served is documented, with its type.
    let docs = std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs/metrics.md");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            assert!(
                docs.contains(&format!("| `{name}` | {kind} |")),
                "docs/metrics.md lacks {name} ({kind})"
            );
        }
    }
    let m = parse_openmetrics(&text);
    let count = |series: &str| sample(&m, series) - before.get(series).copied().unwrap_or(0.0);
    assert_eq!(
        count("onbehalf_decisions_total{decision=\"allow\",reason=\"policy\"}"),
        2.0
    );
    assert_eq!(
        count("onbehalf_decisions_total{decision=\"deny\",reason=\"policy\"}"),
        1.0
    );
    assert_eq!(
        count("onbehalf_decisions_total{decision=\"deny\",reason=\"missing_token\"}"),
        1.0
    );
    assert_eq!(
        count("onbehalf_check_duration_seconds_count{decision=\"allow\"}"),
        2.0
    );
    assert_eq!(
        count("onbehalf_check_duration_seconds_count{decision=\"deny\"}"),
        2.0
    );
    assert_eq!(
        count("onbehalf_check_duration_seconds_bucket{decision=\"allow\",le=\"+Inf\"}"),
        2.0
    );
    // One evaluation per decision the cache did not have: the first allow and the denial.
    let evaluations = count("onbehalf_policy_evaluation_duration_seconds_count{engine=\"vm\"}")
        + count("onbehalf_policy_evaluation_duration_seconds_count{engine=\"interpreter\"}");
    assert_eq!(evaluations, 2.0);
    assert_eq!(count("onbehalf_decision_cache_total{result=\"hit\"}"), 1.0);
    assert_eq!(count("onbehalf_decision_cache_total{result=\"miss\"}"), 2.0);
    assert_eq!(count("onbehalf_token_cache_total{result=\"miss\"}"), 1.0);
    assert_eq!(count("onbehalf_token_cache_total{result=\"hit\"}"), 2.0);
    assert_eq!(
        count("onbehalf_cache_evictions_total{cache=\"decision\"}"),
        0.0
    );
    assert!(
        sample(
            &m,
            &format!("onbehalf_jwks_keys_age_seconds{{issuer=\"{issuer}\"}}")
        ) >= 0.0
    );
    assert_eq!(
        sample(
            &m,
            "onbehalf_policy_activations_total{result=\"activated\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "onbehalf_ready{}"), 1.0);
    assert!(
        m.keys()
            .any(|k| k.starts_with("onbehalf_policy_revision_info{"))
    );

    // A failed key fetch is counted by issuer; the keys in use stay, and so does their age.
    idp.set_up(false);
    for keys in s.running.authorizer.verifier().issuers() {
        assert!(!keys.refresh(true).await);
    }
    let m = parse_openmetrics(&s.metrics().await);
    assert_eq!(
        sample(
            &m,
            &format!("onbehalf_jwks_fetches_total{{issuer=\"{issuer}\",result=\"error\"}}")
        ),
        1.0
    );
    assert!(m.contains_key(&format!(
        "onbehalf_jwks_keys_age_seconds{{issuer=\"{issuer}\"}}"
    )));
    s.stop().await;
}
