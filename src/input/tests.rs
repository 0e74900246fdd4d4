use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap, HeaderValue, Metadata, SocketAddress, address, socket_address,
};
use serde_json::json;

use super::*;
use crate::authn::Authenticated;

fn request(path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(51000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: Some(pbuf::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 500_000_000,
                }),
                http: Some(attribute_context::HttpRequest {
                    id: "req-1".into(),
                    method: "POST".into(),
                    path: path.into(),
                    host: "svc.local".into(),
                    size: 42,
                    body: body.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            context_extensions: HashMap::from([("route".to_string(), "b".to_string())]),
            metadata_context: Some(Metadata::default()),
            ..Default::default()
        }),
    }
}

fn auth_from(claims: serde_json::Value) -> Authenticated {
    let claims = claims.as_object().cloned().unwrap_or_default();
    Authenticated::from_claims(&claims, Some("JWT".into()), 8).expect("valid claims")
}

fn auth() -> Authenticated {
    auth_from(
        json!({"iss": "https://idp", "aud": "svc", "sub": "alice", "scope": "read",
                     "exp": 1_700_000_300, "act": {"sub": "agent-a", "act": {"sub": "orchestrator"}}}),
    )
}

fn doc(req: &CheckRequest) -> serde_json::Value {
    let input = CheckInput::try_from(req).expect("valid input");
    serde_json::to_value(input.document(auth().parts().expect("parts"))).expect("json")
}

#[test]
fn opa_envoy_shape() {
    let d = doc(&request(
        "/a/b?x=1&x=2&y=a+b",
        &[("Content-Type", "text/plain")],
        "",
    ));
    let attrs = &d["attributes"];
    assert_eq!(attrs["request"]["http"]["method"], "POST");
    assert_eq!(
        attrs["request"]["http"]["headers"]["content-type"],
        "text/plain"
    );
    assert_eq!(
        attrs["request"]["http"]["size"], 42,
        "a number, as OPA-Envoy writes it"
    );
    assert_eq!(
        attrs["request"]["time"],
        json!({"seconds": 1_700_000_000, "nanos": 500_000_000})
    );
    assert_eq!(
        attrs["source"]["address"]["socketAddress"]["portValue"],
        51000
    );
    assert_eq!(attrs["contextExtensions"]["route"], "b");
    assert_eq!(attrs["metadataContext"], json!({}));
    assert!(
        attrs.get("destination").is_none(),
        "unset fields are left out"
    );
    assert!(
        attrs["request"]["http"].get("query").is_none(),
        "empty strings are left out"
    );
    assert_eq!(d["parsed_path"], json!(["a", "b"]));
    assert_eq!(d["parsed_query"], json!({"x": ["1", "2"], "y": ["a b"]}));
    assert_eq!(d["truncated_body"], false);
    assert_eq!(
        d["parsed_body"],
        json!(null),
        "present, null without a body"
    );
    assert!(d.get("source_principal").is_none(), "no principal");
    assert!(attrs["request"]["http"].get("headerMap").is_none());
    assert_eq!(
        d["version"],
        json!({"encoding": "protojson", "ext_authz": "v3"})
    );
}

#[test]
fn onbehalf_additions() {
    let d = doc(&request("/", &[], ""));
    assert_eq!(d["subject"]["id"], "alice");
    assert_eq!(d["subject"]["claims"]["scope"], "read");
    assert!(d["subject"]["claims"].get("act").is_none());
    assert_eq!(
        d["actor"],
        json!({"id": "agent-a", "claims": {"sub": "agent-a"}})
    );
    assert_eq!(d["delegation"]["depth"], 2);
    assert_eq!(d["delegation"]["chain"][1]["id"], "orchestrator");
    assert_eq!(d["actor"]["claims"], json!({"sub": "agent-a"}));
    assert_eq!(
        d["token"],
        json!({"issuer": "https://idp", "audience": ["svc"], "scopes": ["read"],
               "expires_at": 1_700_000_300, "jti": null, "type": "JWT"})
    );
    assert_eq!(d["parsed_path"], json!([""]));
    assert_eq!(d["parsed_query"], json!({}));
}

#[test]
fn direct_user_has_null_actor() {
    let req = request("/", &[], "");
    let input = CheckInput::try_from(&req).expect("valid");
    let a = auth_from(json!({"iss": "https://idp", "aud": "svc", "sub": "alice", "exp": 1}));
    let d = serde_json::to_value(input.document(a.parts().expect("parts"))).expect("json");
    assert_eq!(d["actor"], serde_json::Value::Null);
    assert_eq!(
        d["delegation"],
        json!({"chain": [], "depth": 0, "may_act": null})
    );
}

#[test]
fn paths_split_before_decoding() {
    let cases = [
        ("/users%2F123", json!(["users/123"])),
        ("/a//b/", json!(["a", "", "b", ""])),
        ("/a/./../b", json!(["a", ".", "..", "b"])),
        ("/caf%C3%A9?q", json!(["café"])),
        ("/x#frag", json!(["x"])),
    ];
    for (path, want) in cases {
        assert_eq!(doc(&request(path, &[], ""))["parsed_path"], want, "{path}");
    }
    let bad = CheckInput::try_from(&request("/%FF", &[], "")).map(|_| ());
    assert_eq!(bad, Err(InputError::PathEncoding));
}

#[test]
fn bodies() {
    let json_body = request(
        "/",
        &[("content-type", "application/json; charset=utf-8")],
        r#"{"a":[1]}"#,
    );
    assert_eq!(doc(&json_body)["parsed_body"], json!({"a": [1]}));

    let form = request(
        "/",
        &[("content-type", "application/x-www-form-urlencoded")],
        "a=1&a=2",
    );
    assert_eq!(doc(&form)["parsed_body"], json!({"a": ["1", "2"]}));

    let truncated = request(
        "/",
        &[
            ("content-type", "application/json"),
            ("x-envoy-auth-partial-body", "true"),
        ],
        r#"{"a":"#,
    );
    let d = doc(&truncated);
    assert_eq!(d["truncated_body"], true);
    assert_eq!(d["parsed_body"], json!(null));

    // Envoy cut the body at max_request_bytes without saying so: shorter than its
    // content-length, a prefix that parses must not be judged as the whole body.
    let cut = |length: &str| {
        request(
            "/",
            &[
                ("content-type", "application/json"),
                ("content-length", length),
            ],
            r#"{"amount":1}"#,
        )
    };
    let d = doc(&cut("4096"));
    assert_eq!(d["truncated_body"], true);
    assert_eq!(d["parsed_body"], json!(null));
    for whole in ["12", "-1", " 12 "] {
        let d = doc(&cut(whole));
        assert_eq!(d["truncated_body"], false, "content-length {whole}");
        assert_eq!(d["parsed_body"], json!({"amount": 1}));
    }
    assert_eq!(
        CheckInput::try_from(&cut("lots")).map(|_| ()),
        Err(InputError::ContentLength)
    );
    // No body sent (with_request_body off): nothing was cut.
    let unsent = request("/", &[("content-length", "4096")], "");
    assert_eq!(doc(&unsent)["truncated_body"], false);

    let broken = request("/", &[("content-type", "application/json")], "{nope");
    assert_eq!(
        CheckInput::try_from(&broken).map(|_| ()),
        Err(InputError::Body)
    );
}

#[test]
fn raw_header_map_is_read_when_headers_map_is_empty() {
    let mut req = request("/", &[], "");
    let http = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("http");
    let hv = |k: &str, v: &str| HeaderValue {
        key: k.into(),
        raw_value: v.as_bytes().to_vec(),
        ..Default::default()
    };
    http.header_map = Some(HeaderMap {
        headers: vec![
            hv("X-A", "1"),
            hv("x-a", "2"),
            hv("authorization", "Bearer t"),
        ],
    });
    let input = CheckInput::try_from(&req).expect("valid");
    assert_eq!(input.header("x-a"), Some("1,2"));
    assert_eq!(input.header("authorization"), Some("Bearer t"));
    // OPA-Envoy's `headerMap` beside the `headers` onbehalf fills from it.
    let d = doc(&req);
    let http = &d["attributes"]["request"]["http"];
    assert_eq!(
        http["headerMap"],
        json!({"headers": [
            {"key": "X-A", "rawValue": "MQ=="},
            {"key": "x-a", "rawValue": "Mg=="},
            {"key": "authorization", "rawValue": "QmVhcmVyIHQ="},
        ]})
    );
    assert_eq!(http["headers"]["x-a"], "1,2");
}

#[test]
fn source_principal_is_at_the_top_level_when_there_is_one() {
    let mut req = request("/", &[], "");
    let source = req
        .attributes
        .as_mut()
        .and_then(|a| a.source.as_mut())
        .expect("source");
    source.principal = "spiffe://cluster.local/ns/agents/sa/planner".into();
    let d = doc(&req);
    assert_eq!(
        d["source_principal"],
        "spiffe://cluster.local/ns/agents/sa/planner"
    );
    assert_eq!(
        d["attributes"]["source"]["principal"],
        d["source_principal"]
    );
}

#[test]
fn missing_http_attributes_is_an_error() {
    let req = CheckRequest::default();
    assert_eq!(
        CheckInput::try_from(&req).map(|_| ()),
        Err(InputError::NoHttpRequest)
    );
}

#[test]
fn timestamps() {
    let ts = rfc3339_utc;
    assert_eq!(ts(0, 0), "1970-01-01T00:00:00Z");
    assert_eq!(ts(951_782_400, 0), "2000-02-29T00:00:00Z");
    assert_eq!(ts(-1, 0), "1969-12-31T23:59:59Z");
    assert_eq!(ts(1_700_000_000, 123_000), "2023-11-14T22:13:20.000123Z");
}

#[test]
fn fast_key_paths_write_what_the_document_holds() {
    // With headers, and without any (then the document has no `headers` at all).
    for req in [
        request("/a?x=1", &[("x-tier", "gold")], ""),
        request("/a", &[], ""),
    ] {
        fast_and_slow_agree(&req);
    }
}

fn fast_and_slow_agree(req: &CheckRequest) {
    use crate::policy::analysis::Segment::Key;
    let input = CheckInput::try_from(req).expect("valid");
    let doc = input.document(auth().parts().expect("parts"));
    let path = |segs: &[&str]| segs.iter().map(|s| Key(s.to_string())).collect::<Vec<_>>();
    for p in [
        path(&["attributes", "request", "http", "method"]),
        path(&["attributes", "request", "http", "host"]),
        path(&["attributes", "request", "http", "headers", "x-tier"]),
        path(&["attributes", "request", "http", "headers", "x-absent"]),
        path(&["attributes", "request", "http", "scheme"]),
    ] {
        let mut fast = Vec::new();
        input.feed_key(&p, &mut fast).expect("key");
        // The slow way: the value in the built document.
        let mut slow = Vec::new();
        write_value::<Value>(lookup(&doc, &p), &mut slow).expect("key");
        assert_eq!(fast, slow, "{p:?}");
    }
}

#[test]
fn json_wins_over_grpc_in_the_content_type_as_in_opa_envoy() {
    let bodies =
        super::GrpcBodies::load(&[std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")])
            .expect("descriptors");
    let mut req = request(
        "/demo.flights.v1.FlightService/BookFlight",
        &[("content-type", "application/json; x=application/grpc")],
        "",
    );
    if let Some(http) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.raw_body = br#"{"price": 1}"#.to_vec();
    }
    let input = CheckInput::read(&req, Some(&bodies)).expect("valid");
    let doc =
        serde_json::to_value(input.document(crate::input::TokenParts::anonymous())).expect("json");
    assert_eq!(doc["parsed_body"], serde_json::json!({"price": 1}));
}
