use jsonwebtoken::Algorithm;
use std::path::PathBuf;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::config::{Interval, IssuerConfig};

const ISS: &str = "https://idp.test";
const AUD: &str = "svc";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn jwk(kid: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(&format!("{kid}.jwk.json"))).expect("fixture");
    serde_json::from_str(&text).expect("jwk json")
}

fn sign(kid: &str, claims: &serde_json::Value) -> String {
    crate::testing::sign_fixture(kid, claims).expect("sign")
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).expect("time")
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now() + 300, "employee": true,
           "act": {"sub": "agent-a", "act": {"sub": "orchestrator"}}})
}

/// A verifier trusting ISS with keys from a JWKS file holding `kids`.
async fn verifier(kids: &[&str], dir: &tempfile::TempDir) -> Verifier {
    verifier_with(kids, dir, None).await
}

async fn verifier_with(
    kids: &[&str],
    dir: &tempfile::TempDir,
    max_token_lifetime: Option<Interval>,
) -> Verifier {
    let keys: Vec<_> = kids.iter().map(|k| jwk(k)).collect();
    verifier_of(json!({ "keys": keys }), dir, max_token_lifetime).await
}

/// A verifier trusting ISS with the JWKS `jwks`.
async fn verifier_of(
    jwks: serde_json::Value,
    dir: &tempfile::TempDir,
    max_token_lifetime: Option<Interval>,
) -> Verifier {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("write jwks");
    let issuer = IssuerConfig {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        leeway: Interval(std::time::Duration::from_secs(0)),
        max_token_lifetime,
        jwks_file: Some(path),
        jwks_uri: None,
        discovery: false,
        jwks_ttl: Interval(std::time::Duration::from_secs(300)),
        min_refresh_interval: Interval(std::time::Duration::from_secs(10)),
        fetch_timeout: Interval(std::time::Duration::from_secs(1)),
    };
    // Every verifier here caches, so each refusal below also shows a bad token is never
    // served from the cache.
    let cache = Arc::new(crate::authn::TokenCache::new(
        &crate::config::CacheConfig::default().tokens,
    ));
    let keys = Arc::new(IssuerKeys::new(&issuer, Some(cache.clone())).expect("client"));
    assert!(keys.refresh(true).await, "keys load");
    let config = crate::config::AuthnConfig {
        max_delegation_depth: 4,
        ..Default::default()
    };
    Verifier::new(&config, vec![keys], Some(cache))
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn bearer_extraction() {
    assert_eq!(
        extract_bearer(Some("Bearer abc.def.ghi")),
        Ok("abc.def.ghi")
    );
    assert_eq!(
        extract_bearer(Some("bearer   abc.def.ghi")),
        Ok("abc.def.ghi")
    );
    assert_eq!(extract_bearer(None), Err(AuthnError::Missing));
    assert_eq!(extract_bearer(Some("  ")), Err(AuthnError::Missing));
    assert_eq!(
        extract_bearer(Some("Basic dXNlcjpwdw==")),
        Err(AuthnError::NotBearer)
    );
    // Anything that tries a bearer credential is one, malformed, never another scheme
    // (which authn.required: false would judge anonymous).
    for tried in [
        "Bearer",
        "Bearer\tabc.def.ghi",
        "Basic dXNlcjpwdw==,Bearer abc.def.ghi",
        "BEARER",
    ] {
        assert_eq!(
            extract_bearer(Some(tried)),
            Err(AuthnError::Malformed),
            "{tried}"
        );
    }
    assert_eq!(
        extract_bearer(Some("Bearer a b")),
        Err(AuthnError::Malformed)
    );
    assert_eq!(
        extract_bearer(Some("Bearer a\"b")),
        Err(AuthnError::Malformed)
    );
}

#[tokio::test]
async fn verifies_rs256_es256_and_eddsa() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = verifier(&["rsa-1", "ec-1", "ed-1"], &dir).await;
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let verified = v.verify(&sign(kid, &claims())).await.expect(kid);
        let auth = &verified.auth;
        assert_eq!(&*auth.subject, "alice");
        let chain: Vec<&str> = auth.chain.iter().map(|p| &**p).collect();
        assert_eq!(chain, ["agent-a", "orchestrator"]);
        assert_eq!(&*auth.issuer, ISS);
        let token = auth.token_info().expect("token info");
        assert_eq!(token.issuer, ISS);
        assert_eq!(token.audience, [AUD]);
        assert_eq!(token.kind.as_deref(), Some("JWT"));
        // The parts built while verifying are the parts a cached token rebuilds.
        assert_eq!(verified.parts, Some(auth.parts().expect("parts")), "{kid}");
    }
}

#[tokio::test]
async fn refuses_bad_tokens_with_the_right_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = verifier(&["rsa-1"], &dir).await;
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        for (k, val) in patch.as_object().expect("object") {
            match val {
                serde_json::Value::Null => {
                    c.as_object_mut().expect("object").remove(k);
                }
                _ => c[k] = val.clone(),
            }
        }
        sign("rsa-1", &c)
    };
    let cases = [
        (
            "expired",
            with(json!({"exp": now() - 60})),
            AuthnError::Expired,
        ),
        (
            "not yet valid",
            with(json!({"nbf": now() + 600})),
            AuthnError::NotYetValid,
        ),
        (
            "wrong audience",
            with(json!({"aud": "other"})),
            AuthnError::Audience,
        ),
        (
            "untrusted issuer",
            with(json!({"iss": "https://evil"})),
            AuthnError::UntrustedIssuer,
        ),
        (
            "no exp",
            with(json!({"exp": null})),
            AuthnError::MissingClaim("exp"),
        ),
        (
            "no sub",
            with(json!({"sub": null})),
            AuthnError::MissingClaim("sub"),
        ),
        (
            "act not an object",
            with(json!({"act": "agent"})),
            AuthnError::InvalidActor,
        ),
        (
            "act without sub",
            with(json!({"act": {"client_id": "x"}})),
            AuthnError::InvalidActor,
        ),
        (
            "unknown kid",
            sign_with_kid("rsa-2", "rsa-2"),
            AuthnError::UnknownKeyId,
        ),
        (
            "signed by another key",
            sign_with_kid("rsa-2", "rsa-1"),
            AuthnError::Signature,
        ),
        ("not a JWT", "abc".to_string(), AuthnError::Malformed),
    ];
    for (name, token, want) in cases {
        assert_eq!(v.verify(&token).await.map(|_| ()), Err(want), "{name}");
    }
}

/// An RSA fixture key, for tokens whose header a test shapes itself.
fn rsa_key(kid: &str) -> EncodingKey {
    let pem = std::fs::read(crate::testing::fixture(&format!("{kid}.pem"))).expect("fixture");
    EncodingKey::from_rsa_pem(&pem).expect("rsa")
}

fn sign_with_kid(key: &str, kid: &str) -> String {
    let (k, alg) = (rsa_key(key), Algorithm::RS256);
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims(), &k).expect("sign")
}

#[tokio::test]
async fn alg_none_and_hmac_with_the_public_key_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = verifier(&["rsa-1"], &dir).await;
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})),
        b64(&claims())
    );
    assert_eq!(
        v.verify(&none).await.map(|_| ()),
        Err(AuthnError::Malformed)
    );

    // The classic confusion: HS256 keyed with the issuer's public key material.
    let public = jwk("rsa-1");
    let secret = public["n"].as_str().expect("n").as_bytes().to_vec();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let hs = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(&secret).expect("hmac key"),
    )
    .expect("sign");
    assert_eq!(v.verify(&hs).await.map(|_| ()), Err(AuthnError::Algorithm));
}

#[tokio::test]
async fn keys_named_by_the_token_are_ignored() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = verifier(&["rsa-1"], &dir).await;
    // Signed by rsa-2, carrying rsa-2's public key and a jku: still only rsa-1 may verify.
    let key = rsa_key("rsa-2");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    header.jku = Some("https://evil.example/jwks.json".into());
    header.jwk = serde_json::from_value(jwk("rsa-2")).ok();
    let token = jsonwebtoken::encode(&header, &claims(), &key).expect("sign");
    assert_eq!(
        v.verify(&token).await.map(|_| ()),
        Err(AuthnError::Signature)
    );
}

#[tokio::test]
async fn size_and_depth_limits() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = verifier(&["rsa-1"], &dir).await;
    let huge = "a".repeat(9000);
    assert_eq!(
        v.verify(&huge).await.map(|_| ()),
        Err(AuthnError::TooLarge(8192))
    );

    let mut act = json!({"sub": "agent-5"});
    for i in (0..5).rev() {
        act = json!({"sub": format!("agent-{i}"), "act": act});
    }
    let mut c = claims();
    c["act"] = act;
    let token = sign("rsa-1", &c);
    assert_eq!(
        v.verify(&token).await.map(|_| ()),
        Err(AuthnError::ChainTooDeep(4))
    );
}

#[test]
fn chain_of_a_direct_user_is_empty() {
    let c = json!({"sub": "alice", "email": "a@x"});
    let d = chain::decode(c.as_object().expect("object"), 4).expect("decodes");
    assert_eq!(d.actor(), None);
    assert_eq!(d.depth(), 0);
    assert_eq!(d.subject.claims.get("email"), Some(&json!("a@x")));
}

#[test]
fn actor_claims_exclude_the_nested_act() {
    let c = json!({"sub": "alice", "act": {"sub": "a", "client_id": "c1", "act": {"sub": "b"}}});
    let d = chain::decode(c.as_object().expect("object"), 4).expect("decodes");
    let actor = d.actor().expect("actor");
    assert_eq!(&*actor.id, "a");
    assert_eq!(actor.claims.get("client_id"), Some(&json!("c1")));
    assert!(actor.claims.get("act").is_none());
    assert!(d.subject.claims.get("act").is_none());
}

#[test]
fn scopes_from_scope_or_scp() {
    let info = |c: serde_json::Value| {
        TokenInfo::from_claims(c.as_object().expect("object"), None).expect("info")
    };
    let base = json!({"iss": ISS, "aud": [AUD, "x"]});
    let mut c = base.clone();
    c["scope"] = json!("a  b");
    assert_eq!(info(c).scopes, ["a", "b"]);
    let mut c = base.clone();
    c["scp"] = json!(["a", "b"]);
    assert_eq!(info(c).scopes, ["a", "b"]);
    assert_eq!(info(base).audience, [AUD, "x"]);
}

#[test]
fn claims_that_cannot_be_read_again_are_an_error_never_a_default() {
    let claims = json!({"iss": "i", "aud": "a", "sub": "alice", "exp": 4_000_000_000u64});
    let good =
        Authenticated::from_claims(claims.as_object().expect("object"), None, 4).expect("valid");
    assert!(good.parts().is_ok());
    // The cached text no longer parses: every re-read fails, none falls back to "no claims".
    let broken = Authenticated {
        claims: "{not json".into(),
        ..good
    };
    assert_eq!(broken.parts().map(|_| ()), Err(AuthnError::Malformed));
    assert!(broken.token_info().is_err());
    let err = crate::key::decision_key(1, &[vec![]], &input_for_key(), Some(&broken), &mut None);
    assert!(err.is_err(), "a key is never built from a default");
    let decision =
        crate::pipeline::rescue(&crate::pipeline::CheckError::Key(err.expect_err("error")));
    assert!(matches!(
        decision,
        crate::decision::Decision::Deny(d) if d.status == 403
            && d.reason == crate::decision::DenyReason::Internal
    ));
}

fn input_for_key() -> crate::input::CheckInput<'static> {
    use envoy_types::ext_authz::v3::pb::CheckRequest;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    let request: &'static CheckRequest = Box::leak(Box::new(CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }));
    crate::input::CheckInput::try_from(request).expect("input")
}

/// `exp`, `nbf` and `iat` are JSON numbers from 0 to the year 9999, `iat` is not in the
/// future, and an issuer may bound how long its tokens live.
#[tokio::test]
async fn registered_dates_are_checked_strictly() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = verifier_with(
        &["rsa-1"],
        &dir,
        Some(Interval(std::time::Duration::from_secs(3600))),
    )
    .await;
    let with = |name: &str, value: serde_json::Value| {
        let mut c = claims();
        c[name] = value;
        sign("rsa-1", &c)
    };
    let cases = [
        (
            "iat as a string",
            with("iat", json!("1700000000")),
            AuthnError::InvalidDate("iat"),
        ),
        (
            "iat as an object",
            with("iat", json!({"t": 1})),
            AuthnError::InvalidDate("iat"),
        ),
        (
            "iat negative",
            with("iat", json!(-1)),
            AuthnError::InvalidDate("iat"),
        ),
        (
            "iat a year ahead",
            with("iat", json!(now() + 31_536_000)),
            AuthnError::IssuedInFuture,
        ),
        (
            "exp 2^63",
            with("exp", json!(9_223_372_036_854_775_807_u64)),
            AuthnError::InvalidDate("exp"),
        ),
        (
            "exp past the year 9999",
            with("exp", json!(253_402_300_800_u64)),
            AuthnError::InvalidDate("exp"),
        ),
        (
            "exp in two hours",
            with("exp", json!(now() + 7200)),
            AuthnError::LifetimeTooLong,
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(v.verify(&token).await.map(|_| ()), Err(want), "{name}");
    }
    // Dates within bounds still verify, floats included.
    let ok = with("iat", json!(now() as f64 - 0.5));
    assert!(v.verify(&ok).await.is_ok());
}

#[tokio::test]
async fn keys_are_parsed_once_when_the_jwks_loads() {
    // A key whose point is not on its curve is left out of the set when it loads (not
    // found at each verification): a token naming it finds no key.
    let dir = tempfile::tempdir().expect("tmp");
    let mut off_curve = jwk("ec-1");
    off_curve["kid"] = json!("ec-off-curve");
    let x = off_curve["x"].as_str().expect("x").to_string();
    off_curve["y"] = json!(x);
    let jwks = json!({"keys": [jwk("rsa-1"), jwk("ec-1"), off_curve]});
    let v = verifier_of(jwks, &dir, None).await;
    let pem = std::fs::read(fixture("ec-1.pem")).expect("pem");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-off-curve".into());
    let key = EncodingKey::from_ec_pem(&pem).expect("key");
    let token = jsonwebtoken::encode(&header, &claims(), &key).expect("sign");
    assert_eq!(
        v.verify(&token).await.map(|_| ()),
        Err(AuthnError::UnknownKeyId)
    );
    // The parsed keys verify every time, not only the first.
    for _ in 0..3 {
        v.verify(&sign("ec-1", &claims())).await.expect("ec-1");
        v.verify(&sign("rsa-1", &claims())).await.expect("rsa-1");
    }
}

#[tokio::test]
async fn registered_claims_are_read_as_jsonwebtoken_reads_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = verifier(&["rsa-1"], &dir).await;
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        for (k, value) in patch.as_object().expect("object") {
            c[k] = value.clone();
        }
        sign("rsa-1", &c)
    };
    for (name, token) in [
        (
            "aud as a list naming this service",
            with(json!({"aud": ["other", AUD]})),
        ),
        ("exp as a float", with(json!({"exp": now() as f64 + 300.5}))),
        ("nbf just now", with(json!({"nbf": now()}))),
    ] {
        assert!(v.verify(&token).await.is_ok(), "{name}");
    }
    let cases = [
        (
            "aud a list with a number",
            with(json!({"aud": [AUD, 1]})),
            AuthnError::MissingClaim("aud"),
        ),
        (
            "aud missing",
            with(json!({"aud": null})),
            AuthnError::MissingClaim("aud"),
        ),
        (
            "aud a list of others",
            with(json!({"aud": ["a", "b"]})),
            AuthnError::Audience,
        ),
        (
            "exp negative",
            with(json!({"exp": -5})),
            AuthnError::MissingClaim("exp"),
        ),
        (
            "exp as a string",
            with(json!({"exp": "soon"})),
            AuthnError::MissingClaim("exp"),
        ),
        (
            "sub a number",
            with(json!({"sub": 7})),
            AuthnError::MissingClaim("sub"),
        ),
        (
            "nbf as a string",
            with(json!({"nbf": "now"})),
            AuthnError::Malformed,
        ),
        (
            "expired a minute ago",
            with(json!({"exp": now() - 60})),
            AuthnError::Expired,
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(v.verify(&token).await.map(|_| ()), Err(want), "{name}");
    }
}
