use super::*;

fn writer(masks: &[&str]) -> Writer {
    Writer {
        console: false,
        file: None,
        http: None,
        masks: masks.iter().map(|m| pointer(m)).collect(),
        bundle_name: "dir:policies".into(),
        labels: json!({"app": "onbehalf"}),
        max_batch: 10,
        counts: Arc::new(Counts::default()),
    }
}

fn entry() -> Entry {
    Entry {
        decision_id: "d-1".into(),
        timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        input: Some(Value::from(json!({
            "attributes": {"request": {"http": {
                "method": "GET",
                "headers": {"authorization": "Bearer secret", "x-tier": "gold", "a/b": "1"},
            }}},
            "parsed_body": {"password": "hunter2", "user": "alice"},
        }))),
        result: Some(Value::from(true)),
        revision: Some("rev-7".into()),
        query: Some("data.envoy.authz.allow".into()),
        decision: "allow",
        reason: None,
        status: 200,
        dry_run: false,
        error: None,
        handler_ns: 1234,
        cached: true,
    }
}

#[test]
fn entries_take_opa_s_shape_and_lose_what_is_masked() {
    let w = writer(&[
        "/input/attributes/request/http/headers/authorization",
        "/input/parsed_body/password",
        "/input/attributes/request/http/headers/a~1b",
        "/input/not/there",
    ]);
    let e = w.render(entry());
    assert_eq!(e["decision_id"], "d-1");
    assert_eq!(e["path"], "envoy/authz/allow");
    assert_eq!(e["result"], true);
    assert_eq!(e["bundles"]["dir:policies"]["revision"], "rev-7");
    assert_eq!(e["metrics"]["timer_server_handler_ns"], 1234);
    assert_eq!(e["timestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(e["onbehalf"]["cached"], true);
    let headers = &e["input"]["attributes"]["request"]["http"]["headers"];
    assert!(headers.get("authorization").is_none(), "{e}");
    assert!(headers.get("a/b").is_none(), "{e}");
    assert_eq!(headers["x-tier"], "gold");
    assert!(e["input"]["parsed_body"].get("password").is_none());
    assert_eq!(e["input"]["parsed_body"]["user"], "alice");
    assert_eq!(
        e["erased"],
        json!([
            "/input/attributes/request/http/headers/authorization",
            "/input/parsed_body/password",
            "/input/attributes/request/http/headers/a/b",
        ])
    );
    // The token appears nowhere.
    assert!(!e.to_string().contains("secret"), "{e}");
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let (tx, _rx) = mpsc::channel(2);
    let log = DecisionLog {
        tx,
        counts: Arc::new(Counts::default()),
    };
    for _ in 0..5 {
        log.log(entry());
    }
    assert_eq!(log.counts().dropped.load(Ordering::Relaxed), 3);
}
