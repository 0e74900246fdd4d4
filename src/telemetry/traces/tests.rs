use super::*;

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const BOTH: Settings = Settings {
    ratio: 1.0,
    tracecontext: true,
    b3: true,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

#[test]
fn a_w3c_parent_is_continued_with_its_sampling_decision_and_state() {
    for (flags, sampled) in [("01", true), ("00", false)] {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-{flags}")),
            ("tracestate", "vendor=opaque"),
        ]);
        let (cx, decision) = parent_in(&BOTH, &h).expect("a parent");
        assert_eq!(cx.trace_id().to_string(), TRACE);
        assert_eq!(cx.span_id().to_string(), SPAN);
        assert!(cx.is_remote());
        assert_eq!(decision, Some(sampled));
        assert_eq!(cx.trace_state().get("vendor"), Some("opaque"));
    }
    // Malformed: no parent (a trace of its own may start).
    for bad in [
        "00-zz-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ] {
        assert!(parent_in(&BOTH, &headers(&[("traceparent", bad)])).is_none());
    }
}

#[test]
fn b3_is_read_only_when_configured_in_both_of_its_forms() {
    let w3c_only = Settings {
        ratio: 1.0,
        tracecontext: true,
        b3: false,
    };
    let single = headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
    assert!(parent_in(&w3c_only, &single).is_none());
    let (cx, sampled) = parent_in(&BOTH, &single).expect("b3");
    assert_eq!(cx.trace_id().to_string(), TRACE);
    assert_eq!(sampled, Some(true));

    let multi = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
    ]);
    let (cx, sampled) = parent_in(&BOTH, &multi).expect("b3 multi");
    // A 64-bit trace id is padded on the left.
    assert_eq!(
        cx.trace_id().to_string(),
        "0000000000000000a3ce929d0e0e4736"
    );
    assert_eq!(sampled, Some(false));
    // No decision: left to this side. Debug means sampled.
    let deferred = headers(&[("b3", &format!("{TRACE}-{SPAN}"))]);
    assert_eq!(parent_in(&BOTH, &deferred).expect("b3").1, None);
    let debug = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    assert_eq!(parent_in(&BOTH, &debug).expect("b3").1, Some(true));
    // "b3: 0" or "x-b3-sampled: 0" alone: a decision not to trace, passed on.
    for alone in [("b3", "0"), ("x-b3-sampled", "0")] {
        assert_eq!(
            parent_in(&BOTH, &headers(&[alone])).expect("b3").1,
            Some(false)
        );
    }
    for bad in [
        "nothex-00f067aa0ba902b7-1",
        &format!("{TRACE}-short-1"),
        &format!("{TRACE}-{SPAN}-maybe"),
    ] {
        assert!(
            parent_in(&BOTH, &headers(&[("b3", bad)])).is_none(),
            "{bad}"
        );
    }
}

#[test]
fn the_ratio_samples_about_its_share() {
    assert!((0..1000).all(|_| roll(1.0)));
    assert!(!(0..1000).any(|_| roll(0.0)));
    let hits = (0..100_000).filter(|_| roll(0.1)).count();
    assert!((8_000..12_000).contains(&hits), "{hits}");
}

#[test]
fn without_traces_no_span_is_built() {
    // This process never turns traces on (only `serve` does).
    assert!(!enabled());
    let h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]);
    assert!(check_span(&h, None).is_none());
    assert!(phase("verify_token").is_none());
}
