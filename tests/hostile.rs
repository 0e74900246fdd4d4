//! Hostile tokens over real gRPC: each is answered 401 and never reaches the policy — the
//! policy here allows everything, so a token that reached it would be a 200.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::common::*;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// A JWS over the exact `header` and `payload` texts (so that they may hold what a JSON
/// serialiser would never write), RS256 with the fixture key `kid`.
fn raw(header: &str, payload: &str, kid: &str) -> String {
    let pem = std::fs::read(fixture(&format!("{kid}.pem"))).expect("fixture");
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa");
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).expect("sign");
    format!("{message}.{signature}")
}

/// onbehalf trusting two issuers (A: rsa-1, B: rsa-2) with an allow-everything policy.
async fn sidecar(a: &IdpServer, b: &IdpServer) -> Sidecar {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("allow.rego"),
        "package envoy.authz\nimport rego.v1\ndefault allow := true\n",
    )
    .expect("write");
    let yaml = config_yaml(&format!("{}{}", remote_issuer(a), remote_issuer(b))).replace(
        &repo().join("policies").display().to_string(),
        &dir.path().display().to_string(),
    );
    let s = Sidecar::start(&yaml).await;
    s.wait_ready().await;
    // The policy directory is read at start and watched; keep it for the test's life.
    std::mem::forget(dir);
    s
}

#[tokio::test]
async fn hostile_tokens_are_refused_before_the_policy() {
    let a = IdpServer::start(&["rsa-1"]).await;
    let b = IdpServer::start(&["rsa-2"]).await;
    let s = sidecar(&a, &b).await;
    let iss = a.issuer();
    let exp = now() + 300;
    let good = json!({"iss": iss, "aud": AUD, "sub": "alice", "exp": exp});
    // The good token passes: what follows is refused for what it is, not for the setup.
    assert_eq!(
        s.check_token("GET", "/", &sign("rsa-1", &good))
            .await
            .status,
        200
    );

    let header = r#"{"alg":"RS256","kid":"rsa-1","typ":"JWT"}"#;
    let payload = |extra: &str| {
        format!(r#"{{"iss":"{iss}","aud":"{AUD}","sub":"alice","exp":{exp}{extra}}}"#)
    };
    let with = |name: &str, value: Value| {
        let mut c = good.clone();
        c[name] = value;
        sign("rsa-1", &c)
    };
    let signed = sign("rsa-1", &good);
    let parts: Vec<&str> = signed.split('.').collect();
    let (h, p, sig) = (parts[0], parts[1], parts[2]);
    let standard_alphabet = {
        // A payload whose base64url has '-' or '_', written with '+' and '/' instead.
        let c = payload(r#","pad":"??>>??>>""#);
        let t = raw(header, &c, "rsa-1");
        t.replace('-', "+").replace('_', "/")
    };

    let mut cases: Vec<(&str, String)> = vec![
        // Shape.
        ("JWE, five segments", format!("{h}.{p}.{sig}.aaaa.bbbb")),
        ("one segment", h.to_string()),
        ("two segments", format!("{h}.{p}")),
        ("four segments", format!("{h}.{p}.{sig}.")),
        ("empty segments", "..".to_string()),
        ("empty signature", format!("{h}.{p}.")),
        ("padded base64", format!("{h}=.{p}.{sig}")),
        ("standard base64 alphabet", standard_alphabet),
        ("a space inside", format!("{h}.{p} .{sig}")),
        ("a tab inside", format!("{h}.\t{p}.{sig}")),
        ("not base64 at all", "%%%.%%%.%%%".to_string()),
        ("header not JSON", format!("{}.{p}.{sig}", b64("not json"))),
        ("payload not JSON", raw(header, "not json", "rsa-1")),
        ("payload a JSON array", raw(header, "[1,2]", "rsa-1")),
        (
            "payload not UTF-8",
            format!(
                "{h}.{}.{sig}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xff, 0xfe])
            ),
        ),
        // Header.
        ("alg none", format!("{}.{p}.", b64(r#"{"alg":"none"}"#))),
        (
            "alg HS256",
            raw(r#"{"alg":"HS256","kid":"rsa-1"}"#, &payload(""), "rsa-1"),
        ),
        (
            "unknown crit",
            raw(
                r#"{"alg":"RS256","kid":"rsa-1","crit":["exp2"],"exp2":1}"#,
                &payload(""),
                "rsa-1",
            ),
        ),
        (
            "b64 false",
            raw(
                r#"{"alg":"RS256","kid":"rsa-1","b64":false,"crit":["b64"]}"#,
                &payload(""),
                "rsa-1",
            ),
        ),
        (
            "b64 false without crit",
            raw(
                r#"{"alg":"RS256","kid":"rsa-1","b64":false}"#,
                &payload(""),
                "rsa-1",
            ),
        ),
        (
            "duplicate alg in the header",
            raw(
                r#"{"alg":"RS256","alg":"RS256","kid":"rsa-1"}"#,
                &payload(""),
                "rsa-1",
            ),
        ),
        (
            "kid with path characters",
            raw(
                r#"{"alg":"RS256","kid":"../../etc/passwd"}"#,
                &payload(""),
                "rsa-1",
            ),
        ),
        (
            "kid with a NUL",
            raw(
                r#"{"alg":"RS256","kid":"rsa-1\u0000"}"#,
                &payload(""),
                "rsa-1",
            ),
        ),
        (
            "kid of 6 KB",
            raw(
                &format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(6000)),
                &payload(""),
                "rsa-1",
            ),
        ),
        (
            "kid a number",
            raw(r#"{"alg":"RS256","kid":1}"#, &payload(""), "rsa-1"),
        ),
        // Duplicate members.
        (
            "duplicate sub",
            raw(header, &payload(r#","sub":"mallory""#), "rsa-1"),
        ),
        (
            "duplicate sub, escaped",
            raw(header, &payload(r#","s\u0075b":"mallory""#), "rsa-1"),
        ),
        (
            "duplicate inside act",
            raw(
                header,
                &payload(r#","act":{"sub":"agent","sub":"root"}"#),
                "rsa-1",
            ),
        ),
        (
            "duplicate deep inside act",
            raw(
                header,
                &payload(r#","act":{"sub":"a","act":{"sub":"b","x":1,"x":2}}"#),
                "rsa-1",
            ),
        ),
        (
            "duplicate inside a claim",
            raw(
                header,
                &payload(r#","profile":{"role":"user","role":"admin"}"#),
                "rsa-1",
            ),
        ),
        // NumericDates.
        ("exp a string", with("exp", json!(exp.to_string()))),
        (
            "exp NaN text",
            raw(
                header,
                &format!(r#"{{"iss":"{iss}","aud":"{AUD}","sub":"alice","exp":NaN}}"#),
                "rsa-1",
            ),
        ),
        (
            "exp huge",
            raw(
                header,
                &format!(r#"{{"iss":"{iss}","aud":"{AUD}","sub":"alice","exp":1e400}}"#),
                "rsa-1",
            ),
        ),
        (
            "exp 2^63",
            with("exp", json!(9_223_372_036_854_775_807_u64)),
        ),
        ("exp negative", with("exp", json!(-1))),
        ("exp null", with("exp", Value::Null)),
        ("nbf a string", with("nbf", json!("0"))),
        ("nbf in an hour", with("nbf", json!(now() + 3600))),
        ("iat an object", with("iat", json!({"s": 1}))),
        ("iat a year ahead", with("iat", json!(now() + 31_536_000))),
        // Claims.
        ("aud a number", with("aud", json!(5))),
        ("aud an object", with("aud", json!({"a": AUD}))),
        ("aud with a non-string", with("aud", json!([AUD, 5]))),
        ("aud another service", with("aud", json!("service-c"))),
        ("sub a number", with("sub", json!(7))),
        ("sub empty", with("sub", json!(""))),
        ("sub an object", with("sub", json!({"id": "alice"}))),
        (
            "sub with CR LF",
            with("sub", json!("alice\r\nx-onbehalf-subject: root")),
        ),
        ("sub with a NUL", with("sub", json!("alice\u{0}root"))),
        ("act a string", with("act", json!("agent"))),
        ("act an array", with("act", json!([{"sub": "agent"}]))),
        (
            "act without sub",
            with("act", json!({"client_id": "agent"})),
        ),
        (
            "act sub with LF",
            with("act", json!({"sub": "agent\nroot"})),
        ),
        ("may_act a string", with("may_act", json!("agent"))),
        ("iss a number", with("iss", json!(1))),
        // Keys and issuers.
        ("iss A signed with B's key", sign("rsa-2", &good)),
        (
            "B's key named as A's kid",
            raw(header, &payload(""), "rsa-2"),
        ),
        (
            "signature of another token",
            format!("{h}.{}.{sig}", b64(&payload(r#","admin":true"#))),
        ),
        ("sub of 30 KB", with("sub", json!("a".repeat(30_000)))),
    ];
    let mut deep = good.clone();
    let mut act = json!({"sub": "agent-0"});
    for i in 1..40 {
        act = json!({"sub": format!("agent-{i}"), "act": act});
    }
    deep["act"] = act;
    cases.push(("act 40 deep", sign("rsa-1", &deep)));
    assert!(cases.len() >= 55, "{}", cases.len());

    let mut through = Vec::new();
    for (what, token) in &cases {
        let reply = s.check_token("GET", "/", token).await;
        let challenged = reply
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer"));
        if reply.status != 401 || !challenged {
            through.push(format!("{what}: {} {:?}", reply.status, reply.body));
        }
    }
    assert!(
        through.is_empty(),
        "not refused with 401:\n{}",
        through.join("\n")
    );
    let metrics = s.metrics().await;
    for series in [
        "onbehalf_decisions_total{decision=\"allow\",reason=\"policy\"} 1\n".to_string(),
        format!(
            "onbehalf_decisions_total{{decision=\"deny\",reason=\"invalid_token\"}} {}\n",
            cases.len()
        ),
    ] {
        assert!(
            metrics.contains(&series),
            "only the good token reached the policy: {series} in\n{metrics}"
        );
    }
    s.stop().await;
}

/// Ids a client could use to forge headers or a second chain element are written escaped,
/// never as they are; commas and quotes are legitimate in ids and pass, escaped.
#[tokio::test]
async fn identity_ids_cannot_inject_headers_or_chain_elements() {
    let a = IdpServer::start(&["rsa-1"]).await;
    let b = IdpServer::start(&["rsa-2"]).await;
    let s = sidecar(&a, &b).await;
    let mut claims = delegation(&a.issuer(), &["agent,root", "orch\"estrator"], "");
    claims["sub"] = json!("alice, bob \"x\"");
    let reply = s.check_token("GET", "/", &sign("rsa-1", &claims)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("x-onbehalf-subject"),
        Some("alice%2C%20bob%20%22x%22")
    );
    assert_eq!(
        reply.header("x-onbehalf-chain"),
        Some("agent%2Croot,orch%22estrator"),
        "one comma per chain element, none from an id"
    );
    s.stop().await;
}
