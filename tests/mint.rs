//! Just-in-time upstream tokens over real gRPC: the minted token replaces the delegation
//! token, verifies against the JWKS served on the admin port, is reused for one decision only,
//! and follows a rotated key file.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

use crate::common::*;

const MINT_ISS: &str = "https://sidecar.onbehalf.test";

fn mint_yaml(idp: &IdpServer, mint: &str) -> String {
    format!(
        "{}mint:\n  enabled: true\n  issuer: {MINT_ISS}\n{mint}",
        config_yaml(&remote_issuer(idp))
    )
}

/// The same with the policy from `dir`.
fn with_policy(yaml: &str, dir: &std::path::Path) -> String {
    yaml.replace(
        &repo().join("policies").display().to_string(),
        &dir.display().to_string(),
    )
}

fn policy_dir(rego: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("authz.rego"), rego).expect("write policy");
    dir
}

async fn get_json(sidecar: &Sidecar, path: &str) -> (reqwest::header::HeaderMap, Value) {
    let resp = reqwest::get(format!("http://{}{path}", sidecar.running.admin_addr))
        .await
        .expect("admin");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let headers = resp.headers().clone();
    (headers, resp.json().await.expect("json"))
}

/// Verifies a minted token against the sidecar's own JWKS; returns its header and claims.
async fn verify(sidecar: &Sidecar, token: &str, aud: &str) -> (jsonwebtoken::Header, Value) {
    let (_, jwks) = get_json(sidecar, "/.well-known/jwks.json").await;
    let jwks: JwkSet = serde_json::from_value(jwks).expect("a JWKS");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("the kid is published");
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[MINT_ISS]);
    let data = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_jwk(jwk).expect("key"),
        &validation,
    )
    .expect("the minted token verifies");
    (data.header, data.claims)
}

fn minted(reply: &Reply) -> String {
    reply
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("a minted bearer token: {reply:?}"))
        .to_string()
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in\n{text}"))
}

#[tokio::test]
async fn the_upstream_gets_a_minted_token_never_the_delegation_token() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let sidecar = Sidecar::start(&mint_yaml(&idp, "")).await;
    sidecar.wait_ready().await;

    let mut claims = delegation(
        &idp.issuer(),
        &["travel-agent", "orchestrator"],
        "book_flight read_bookings",
    );
    claims["act"]["capabilities"] = json!(["book_flight"]);
    let token = sign("rsa-1", &claims);
    let reply = sidecar
        .check_token("POST", "/flights/bookings", &token)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let upstream = minted(&reply);
    assert_ne!(upstream, token);
    let signature = token.rsplit('.').next().expect("signature");
    for (name, values) in &reply.headers {
        for v in values {
            assert!(
                !v.contains(signature),
                "{name} carries the delegation token"
            );
        }
    }
    assert_eq!(reply.header("x-onbehalf-subject"), Some("alice"));

    let (header, minted_claims) = verify(&sidecar, &upstream, AUD).await;
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(minted_claims["iss"], MINT_ISS);
    assert_eq!(minted_claims["sub"], "alice");
    assert_eq!(
        minted_claims["act"], claims["act"],
        "the chain is copied exactly"
    );
    assert_eq!(minted_claims["aud"], AUD);
    // Only what this request needs: the route's capability, not every delegated scope.
    assert_eq!(minted_claims["scope"], "book_flight");
    let lifetime =
        minted_claims["exp"].as_i64().expect("exp") - minted_claims["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 60, "the shipped policy grants 60s");

    // The same decision again: the same token, not a new signature.
    let again = sidecar
        .check_token("POST", "/flights/bookings", &token)
        .await;
    assert_eq!(minted(&again), upstream);
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metric(&metrics, "onbehalf_minted_tokens_total{result=\"signed\"}"),
        1
    );
    assert_eq!(
        metric(&metrics, "onbehalf_minted_tokens_total{result=\"reused\"}"),
        1
    );

    // Another subject with the same grant gets its own token.
    let mut bob = claims.clone();
    bob["sub"] = json!("bob");
    let reply = sidecar
        .check_token("POST", "/flights/bookings", &sign("rsa-1", &bob))
        .await;
    let (_, bob_claims) = verify(&sidecar, &minted(&reply), AUD).await;
    assert_eq!(bob_claims["sub"], "bob");

    // Keys are served with their public members only; status shows key ids, never the key.
    let (headers, jwks) = get_json(&sidecar, "/.well-known/jwks.json").await;
    assert_eq!(headers["cache-control"], "public, max-age=30");
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["alg"].as_str(),
            key["use"].as_str()
        ),
        (Some("EC"), Some("ES256"), Some("sig"))
    );
    assert!(key.get("d").is_none());
    let (_, status) = get_json(&sidecar, "/v1/status").await;
    assert_eq!(status["mint"]["kids"], json!([key["kid"]]));
    assert!(!status.to_string().contains("\"d\""));
    sidecar.stop().await;
}

#[tokio::test]
async fn a_policy_can_neither_forge_the_minted_token_nor_strip_identity() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = policy_dir(
        r#"package envoy.authz
import rego.v1
allow := {
	"allowed": true,
	"headers": {"Authorization": "Bearer forged", "X-Onbehalf-Subject": "mallory", "x-extra": "kept"},
	"request_headers_to_remove": ["X-Onbehalf-Actor", "X-ONBEHALF-CHAIN"],
	"grant": {"scopes": ["read"], "audience": ["svc-1", "svc-2"], "ttl": "20s"},
}
"#,
    );
    let yaml = with_policy(&mint_yaml(&idp, ""), dir.path());
    let sidecar = Sidecar::start(&yaml).await;
    sidecar.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "read"),
    );
    let reply = sidecar.check_token("GET", "/anything", &token).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.headers["authorization"].len(), 1, "{reply:?}");
    let (_, claims) = verify(&sidecar, &minted(&reply), "svc-2").await;
    assert_eq!(claims["aud"], json!(["svc-1", "svc-2"]));
    assert_eq!(claims["scope"], "read");
    assert_eq!(reply.headers["x-onbehalf-subject"], ["alice"]);
    assert_eq!(reply.header("x-onbehalf-actor"), Some("travel-agent"));
    assert!(
        reply.removed.is_empty(),
        "identity headers removed: {:?}",
        reply.removed
    );
    assert_eq!(reply.header("x-extra"), Some("kept"));
    sidecar.stop().await;
}

#[tokio::test]
async fn an_allow_without_grant_is_denied_or_passed_as_configured() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = policy_dir("package envoy.authz\nimport rego.v1\nallow := true\n");
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "read"),
    );

    let deny = Sidecar::start(&with_policy(&mint_yaml(&idp, ""), dir.path())).await;
    deny.wait_ready().await;
    let reply = deny.check_token("GET", "/x", &token).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    let body: Value = serde_json::from_str(&reply.body).expect("json body");
    assert_eq!(body["error"], "access_denied");
    let metrics = deny.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "onbehalf_decisions_total{decision=\"deny\",reason=\"no_grant\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &metrics,
            "onbehalf_minted_tokens_total{result=\"no_grant\"}"
        ),
        1
    );
    deny.stop().await;

    let pass = Sidecar::start(&with_policy(
        &mint_yaml(&idp, "  without_grant: pass\n"),
        dir.path(),
    ))
    .await;
    pass.wait_ready().await;
    let reply = pass.check_token("GET", "/x", &token).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.header("authorization").is_none(),
        "nothing minted: {reply:?}"
    );
    assert!(!reply.removed.contains(&"authorization".to_string()));
    pass.stop().await;
}

#[tokio::test]
async fn another_header_carries_the_bare_token_and_the_delegation_token_is_removed() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let sidecar = Sidecar::start(&mint_yaml(
        &idp,
        "  header: x-upstream-token\n  format: txn-token\n",
    ))
    .await;
    sidecar.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "book_flight"),
    );
    let mut headers = vec![("x-request-id", "3f1c0a52-0000-4000-8000-000000000001")];
    let bearer = format!("Bearer {token}");
    headers.push(("authorization", &bearer));
    let reply = sidecar.check("POST", "/flights/bookings", &headers).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.removed.contains(&"authorization".to_string()),
        "{reply:?}"
    );
    let upstream = reply
        .header("x-upstream-token")
        .expect("minted")
        .to_string();
    let (header, claims) = verify(&sidecar, &upstream, AUD).await;
    assert_eq!(header.typ.as_deref(), Some("txntoken+jwt"));
    assert_eq!(claims["txn"], "3f1c0a52-0000-4000-8000-000000000001");
    assert_eq!(
        claims["tctx"],
        json!({"method": "POST", "path": "/flights/bookings"})
    );
    // Transaction tokens are per request.
    let again = sidecar.check("POST", "/flights/bookings", &headers).await;
    assert_ne!(again.header("x-upstream-token"), Some(upstream.as_str()));
    sidecar.stop().await;
}

#[tokio::test]
async fn a_new_key_file_signs_at_once_and_the_old_key_stays_published() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let keys = tempfile::tempdir().expect("tmp");
    let key_file = keys.path().join("mint.pem");
    std::fs::copy(fixture("rsa-1.pem"), &key_file).expect("key");
    let sidecar = Sidecar::start(&mint_yaml(
        &idp,
        &format!(
            "  algorithm: RS256\n  key_id: first\n  key_file: {}\n",
            key_file.display()
        ),
    ))
    .await;
    sidecar.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "book_flight"),
    );
    let before = minted(
        &sidecar
            .check_token("POST", "/flights/bookings", &token)
            .await,
    );
    assert_eq!(
        jsonwebtoken::decode_header(&before)
            .expect("h")
            .kid
            .as_deref(),
        Some("first")
    );

    // Replace the file the way a mounted Secret changes: write aside, rename over.
    let staged = keys.path().join(".staged.pem");
    std::fs::copy(fixture("rsa-2.pem"), &staged).expect("key");
    std::fs::rename(&staged, &key_file).expect("rename");
    let mut kids = Value::Null;
    for _ in 0..200 {
        let (_, status) = get_json(&sidecar, "/v1/status").await;
        kids = status["mint"]["kids"].clone();
        if kids.as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        kids.as_array().map(Vec::len),
        Some(2),
        "rotation seen: {kids}"
    );
    assert_eq!(kids[1], "first");
    let after = minted(
        &sidecar
            .check_token("POST", "/flights/bookings", &token)
            .await,
    );
    assert_eq!(
        jsonwebtoken::decode_header(&after)
            .expect("h")
            .kid
            .as_deref(),
        kids[0].as_str(),
        "the new key signs at once"
    );
    verify(&sidecar, &before, AUD).await;
    verify(&sidecar, &after, AUD).await;
    sidecar.stop().await;
}

/// Without required tokens, an anonymous allow brings no upstream token: it follows
/// `mint.without_grant`, and a client's own copy of the upstream token's header never passes.
#[tokio::test]
async fn anonymous_allows_follow_without_grant_and_never_pass_a_client_upstream_token() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = policy_dir(
        "package envoy.authz\nimport rego.v1\nallow if input.parsed_path[0] == \"public\"\n",
    );
    for (without_grant, status) in [("deny", 403), ("pass", 200)] {
        let yaml = with_policy(
            &mint_yaml(
                &idp,
                &format!("  header: x-upstream-token\n  without_grant: {without_grant}\n"),
            ),
            dir.path(),
        )
        .replace("authn:\n", "authn:\n  required: false\n");
        let s = Sidecar::start(&yaml).await;
        s.wait_ready().await;
        let r = s
            .check("GET", "/public", &[("x-upstream-token", "replayed")])
            .await;
        assert_eq!(r.status, status, "{without_grant}: {}", r.body);
        if status == 200 {
            assert!(r.header("x-upstream-token").is_none(), "{r:?}");
            assert!(r.removed.iter().any(|h| h == "x-upstream-token"), "{r:?}");
        }
        s.stop().await;
    }
}

/// An allow that mints nothing (`mint.without_grant: pass`) never passes a client's own copy
/// of the upstream token's header.
#[tokio::test]
async fn an_allow_without_a_grant_never_passes_a_client_upstream_token() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = policy_dir("package envoy.authz\nimport rego.v1\nallow := true\n");
    let yaml = with_policy(
        &mint_yaml(&idp, "  header: x-upstream-token\n  without_grant: pass\n"),
        dir.path(),
    );
    let s = Sidecar::start(&yaml).await;
    s.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "book_flight"),
    );
    let bearer = format!("Bearer {token}");
    let r = s
        .check(
            "GET",
            "/flights",
            &[("authorization", &bearer), ("x-upstream-token", "replayed")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("x-upstream-token").is_none(), "{r:?}");
    assert!(r.removed.iter().any(|h| h == "x-upstream-token"), "{r:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_route_names_the_audience_of_the_tokens_minted_for_it() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    // A grant without an audience, and no mint.audience: only the route can name one.
    let dir = policy_dir(
        "package envoy.authz\nimport rego.v1\n\
         allow := {\"allowed\": true, \"grant\": {\"scopes\": [\"read\"]}}\n",
    );
    let sidecar = Sidecar::start(&with_policy(&mint_yaml(&idp, ""), dir.path())).await;
    sidecar.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "read"),
    );
    let bearer = format!("Bearer {token}");
    let ask = |audience: Option<&str>| {
        let mut req = check_request("GET", "/bookings", &[("authorization", &bearer)]);
        if let (Some(aud), Some(attrs)) = (audience, req.attributes.as_mut()) {
            attrs
                .context_extensions
                .insert("onbehalf.mint_audience".into(), aud.into());
        }
        let mut client = sidecar.client.clone();
        async move { Reply::from(client.check(req).await.expect("decision").into_inner()) }
    };
    for aud in ["bookings-api", "ledger"] {
        let reply = ask(Some(aud)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let (_, claims) = verify(&sidecar, &minted(&reply), aud).await;
        assert_eq!(claims["aud"], aud);
    }
    // Without the route's audience there is none to mint for: denied, never unbounded.
    assert_eq!(ask(None).await.status, 403);
    assert_eq!(
        ask(Some("")).await.status,
        403,
        "an empty audience is a bad route"
    );
    sidecar.stop().await;
}
