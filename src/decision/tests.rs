use envoy_types::ext_authz::v3::pb::HttpResponse;

use super::*;

fn identity() -> Vec<(String, Option<String>)> {
    vec![
        ("x-onbehalf-subject".into(), Some("alice".into())),
        ("x-onbehalf-actor".into(), None),
    ]
}

fn header<'a>(hs: &'a [HeaderValueOption], name: &str) -> Vec<(&'a str, i32)> {
    hs.iter()
        .filter_map(|h| h.header.as_ref().map(|v| (v, h.append_action)))
        .filter(|(v, _)| v.key == name)
        .map(|(v, a)| (v.value.as_str(), a))
        .collect()
}

#[test]
fn allow_sets_identity_last_and_policy_cannot_forge_it() {
    let verdict = Verdict {
        allowed: true,
        headers: vec![
            set("x-onbehalf-subject", "mallory".into()),
            set("x-extra", "1".into()),
        ],
        request_headers_to_remove: vec!["x-onbehalf-subject".into(), "cookie".into()],
        ..Default::default()
    };
    let resp = Decision::from_verdict(verdict).to_check_response(&identity());
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(tonic::Code::Ok as i32)
    );
    let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
        panic!("expected an OK response")
    };
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert_eq!(
        header(&ok.headers, "x-onbehalf-subject"),
        [("alice", overwrite)]
    );
    assert_eq!(header(&ok.headers, "x-extra"), [("1", overwrite)]);
    // No actor: a client-sent actor header is removed, never passed through.
    assert_eq!(ok.headers_to_remove, ["cookie", "x-onbehalf-actor"]);
}

#[test]
fn missing_token_is_401_with_a_bare_challenge() {
    let resp = Decision::invalid_token(&AuthnError::Missing).to_check_response(&[]);
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(tonic::Code::Unauthenticated as i32)
    );
    let Some(HttpResponse::DeniedResponse(d)) = resp.http_response else {
        panic!("expected a denial")
    };
    assert_eq!(d.status.map(|s| s.code), Some(401));
    assert_eq!(header(&d.headers, "www-authenticate")[0].0, "Bearer");
    let body: serde_json::Value = serde_json::from_str(&d.body).expect("json body");
    assert_eq!(body["error"], "invalid_token");
}

#[test]
fn invalid_token_says_why_in_the_challenge() {
    let resp = Decision::invalid_token(&AuthnError::Expired).to_check_response(&[]);
    let Some(HttpResponse::DeniedResponse(d)) = resp.http_response else {
        panic!("expected a denial")
    };
    assert_eq!(
        header(&d.headers, "www-authenticate")[0].0,
        "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
    );
}

#[test]
fn policy_denials() {
    let plain = Decision::from_verdict(Verdict::default());
    let Decision::Deny(d) = &plain else {
        panic!("deny")
    };
    assert_eq!(d.status, 403);
    assert!(d.body.contains("access_denied"));

    let scoped = Decision::from_verdict(Verdict {
        insufficient_scope: vec!["book_flight".into()],
        ..Default::default()
    });
    let resp = scoped.to_check_response(&[]);
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(tonic::Code::PermissionDenied as i32)
    );
    let Some(HttpResponse::DeniedResponse(d)) = resp.http_response else {
        panic!("expected a denial")
    };
    assert_eq!(
        header(&d.headers, "www-authenticate")[0].0,
        "Bearer error=\"insufficient_scope\", scope=\"book_flight\""
    );

    let custom = Decision::from_verdict(Verdict {
        http_status: Some(429),
        body: Some("slow down".into()),
        headers: vec![set("retry-after", "5".into())],
        ..Default::default()
    });
    let Decision::Deny(d) = &custom else {
        panic!("deny")
    };
    assert_eq!((d.status, d.body.as_str()), (429, "slow down"));
    assert_eq!(d.headers.len(), 1);
}

#[test]
fn failures_deny_without_leaking_details() {
    use crate::pipeline::{CheckError, rescue};
    use crate::policy::{PolicyError, VerdictError};
    for (error, reason) in [
        (
            CheckError::Policy(PolicyError::Parse {
                path: "secret.rego".into(),
                message: "secret detail".into(),
            }),
            DenyReason::Internal,
        ),
        (
            CheckError::Verdict(VerdictError::Malformed("secret detail".into())),
            DenyReason::PolicyResult,
        ),
    ] {
        let Decision::Deny(d) = rescue(&error) else {
            panic!("deny")
        };
        assert_eq!((d.status, d.reason), (403, reason));
        assert!(!d.body.contains("secret"), "{}", d.body);
    }
}

#[test]
fn dynamic_metadata_becomes_a_struct() {
    let mut meta = serde_json::Map::new();
    meta.insert(
        "agent".into(),
        serde_json::json!({"id": "a", "depth": 2, "ok": true}),
    );
    let allow = Decision::Allow(Allow {
        dynamic_metadata: Some(meta),
        ..Default::default()
    });
    let resp = allow.to_check_response(&[]);
    let s = resp.dynamic_metadata.expect("metadata");
    let agent = s.fields.get("agent").and_then(|v| v.kind.as_ref());
    let Some(pbuf::value::Kind::StructValue(agent)) = agent else {
        panic!("struct")
    };
    assert_eq!(
        agent.fields.get("depth").and_then(|v| v.kind.clone()),
        Some(pbuf::value::Kind::NumberValue(2.0))
    );
}
