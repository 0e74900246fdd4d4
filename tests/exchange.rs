//! RFC 8693 token exchange over real HTTP: issued tokens verify through the discovery
//! document's `jwks_uri`, the same process trusts them by discovery, and every refusal has
//! its status and OAuth error code. may_act on Check, too.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

use crate::common::*;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// onbehalf with the exchange on its admin listener, trusting the demo-like IdP and itself
/// (by discovery), with the repository's policies.
pub struct Exchange {
    pub sidecar: Sidecar,
    pub idp: IdpServer,
    pub issuer: String,
}

/// A loopback port free a moment ago: the exchange's issuer URL must be known before start.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Exchange {
    pub async fn start(exchange: &str) -> Exchange {
        Exchange::start_with("", exchange).await
    }

    /// With `authn` keys (indented, before `issuers`) and `exchange` keys added.
    pub async fn start_with(authn: &str, exchange: &str) -> Exchange {
        let idp = IdpServer::start(&["rsa-1"]).await;
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let issuers = format!(
            "{}    - issuer: {issuer}\n      audiences: [{AUD}]\n      discovery: true\n      \
             min_refresh_interval: 250ms\n      fetch_timeout: 1s\n",
            remote_issuer(&idp)
        );
        let yaml = config_yaml(&issuers)
            .replace(
                "admin_addr: 127.0.0.1:0",
                &format!("admin_addr: 127.0.0.1:{port}"),
            )
            .replace("authn:\n", &format!("authn:\n{authn}"))
            + &format!("exchange:\n  enabled: true\n  issuer: {issuer}\n{exchange}");
        let sidecar = Sidecar::start(&yaml).await;
        sidecar.wait_ready().await;
        Exchange {
            sidecar,
            idp,
            issuer,
        }
    }

    /// POSTs `pairs` form-encoded to `/token`: (status, headers, JSON body).
    pub async fn post(&self, pairs: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            form.append_pair(k, v);
        }
        self.post_raw("application/x-www-form-urlencoded", form.finish())
            .await
    }

    pub async fn post_raw(
        &self,
        content_type: &str,
        body: String,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /token");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body: {text}"));
        (status, headers, body)
    }

    /// Alice's token from the IdP, with `extra` claims merged in.
    pub fn alice(&self, scope: &str, extra: Value) -> String {
        let mut claims = delegation(&self.idp.issuer(), &[], scope);
        merge(&mut claims, extra);
        sign("rsa-1", &claims)
    }

    /// An agent's own token from the IdP.
    pub fn agent(&self, sub: &str, extra: Value) -> String {
        let mut claims = json!({"iss": self.idp.issuer(), "aud": AUD, "sub": sub,
                                "iat": now(), "exp": now() + 300});
        merge(&mut claims, extra);
        sign("rsa-1", &claims)
    }

    /// Exchanges `subject` for `actor` with `more` parameters.
    pub async fn exchange(
        &self,
        subject: &str,
        actor: &str,
        more: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut pairs = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("actor_token", actor),
            ("actor_token_type", ACCESS_TOKEN),
        ];
        pairs.extend_from_slice(more);
        self.post(&pairs).await
    }

    /// Verifies an issued token as a stranger would: discovery document, its `jwks_uri`.
    pub async fn verify(&self, token: &str) -> Value {
        let doc: Value = reqwest::get(format!("{}/.well-known/openid-configuration", self.issuer))
            .await
            .expect("discovery")
            .json()
            .await
            .expect("json");
        assert_eq!(doc["issuer"], self.issuer.as_str());
        assert_eq!(doc["token_endpoint"], format!("{}/token", self.issuer));
        let jwks: JwkSet = reqwest::get(doc["jwks_uri"].as_str().expect("jwks_uri"))
            .await
            .expect("jwks")
            .json()
            .await
            .expect("a JWKS");
        let header = jsonwebtoken::decode_header(token).expect("header");
        let jwk = jwks
            .find(header.kid.as_deref().expect("kid"))
            .expect("the kid is published");
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[AUD]);
        validation.set_issuer(&[&self.issuer]);
        jsonwebtoken::decode::<Value>(
            token,
            &DecodingKey::from_jwk(jwk).expect("key"),
            &validation,
        )
        .expect("the issued token verifies")
        .claims
    }
}

fn merge(claims: &mut Value, extra: Value) {
    if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        c.extend(extra);
    }
}

fn error(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("{body}"))
}

#[tokio::test]
async fn an_agent_gets_a_least_privilege_delegation_token_the_sidecar_enforces() {
    let x = Exchange::start("").await;
    let alice = x.alice("book_flight read_bookings admin", json!({}));
    let agent = x.agent("travel-agent", json!({"capabilities": ["book_flight"]}));
    let (status, headers, body) = x
        .exchange(
            &alice,
            &agent,
            &[("audience", AUD), ("scope", "book_flight")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["scope"], "book_flight");
    let expires_in = body["expires_in"].as_i64().expect("expires_in");
    assert!((1..=900).contains(&expires_in), "{expires_in}");
    let token = body["access_token"].as_str().expect("access_token");

    let claims = x.verify(token).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], AUD);
    assert_eq!(claims["scope"], "book_flight");
    assert_eq!(claims["client_id"], "travel-agent");
    assert_eq!(claims["employee"], true, "subject_claims copied");
    assert_eq!(
        claims["act"],
        json!({"sub": "travel-agent", "iss": x.idp.issuer(), "capabilities": ["book_flight"]})
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        expires_in
    );

    // The same process trusts its own exchange by discovery: the token is Alice via the agent.
    let booked = x
        .sidecar
        .check_token("POST", "/flights/bookings", token)
        .await;
    assert_eq!(booked.status, 200, "{booked:?}");
    assert_eq!(booked.header("x-onbehalf-subject"), Some("alice"));
    assert_eq!(booked.header("x-onbehalf-actor"), Some("travel-agent"));
    // Alice could read bookings herself, but the token carries book_flight only.
    let read = x.sidecar.check_token("GET", "/flights", token).await;
    assert_eq!(read.status, 403, "{read:?}");

    let metrics = x.sidecar.metrics().await;
    assert!(
        metrics.contains("onbehalf_token_exchanges_total{result=\"issued\"} 1"),
        "{metrics}"
    );
    x.sidecar.stop().await;
}

#[tokio::test]
async fn redelegation_nests_act_exactly_and_stops_at_the_depth_limit() {
    let x = Exchange::start("").await;
    let alice = x.alice("read_bookings admin", json!({}));
    let orchestrator = x.agent("orchestrator", json!({"team": "ops"}));
    let (status, _, first) = x.exchange(&alice, &orchestrator, &[]).await;
    assert_eq!(status, 200, "{first}");
    let first = first["access_token"].as_str().expect("token").to_string();

    // The orchestrator passes the delegation on to the ops agent.
    let ops = x.agent("ops-agent", json!({}));
    let (status, _, second) = x.exchange(&first, &ops, &[]).await;
    assert_eq!(status, 200, "{second}");
    let claims = x
        .verify(second["access_token"].as_str().expect("token"))
        .await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["act"],
        json!({"sub": "ops-agent", "iss": x.idp.issuer(),
               "act": {"sub": "orchestrator", "iss": x.idp.issuer()}}),
        "the earlier chain, exactly as signed, below the new actor"
    );
    assert_eq!(claims["scope"], "admin read_bookings");
    // Admin scope: the policy gives five minutes.
    let life = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert!(life <= 300, "{life}");

    // A third actor: the policy's data allows chains of two.
    let travel = x.agent("travel-agent", json!({}));
    let (status, _, body) = x
        .exchange(
            second["access_token"].as_str().expect("token"),
            &travel,
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error(&body), "unauthorized_client", "{body}");
    x.sidecar.stop().await;
}

#[tokio::test]
async fn a_chain_past_max_delegation_depth_is_an_invalid_request() {
    // authn.max_delegation_depth: 1 lets Alice's token through, and no re-delegation.
    let x = Exchange::start_with("  max_delegation_depth: 1\n", "").await;
    let alice = x.alice("read_bookings", json!({}));
    let (status, _, first) = x
        .exchange(&alice, &x.agent("orchestrator", json!({})), &[])
        .await;
    assert_eq!(status, 200, "{first}");
    let (status, _, body) = x
        .exchange(
            first["access_token"].as_str().expect("token"),
            &x.agent("ops-agent", json!({})),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error(&body), "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("max_delegation_depth")),
        "{body}"
    );
    x.sidecar.stop().await;
}

#[tokio::test]
async fn every_refusal_has_its_status_and_error_code() {
    let x = Exchange::start("  max_request_bytes: 4096\n").await;
    let alice = x.alice("book_flight read_bookings", json!({}));
    let agent = x.agent("travel-agent", json!({}));
    let iss = x.idp.issuer();

    let expired_alice = {
        let mut c = delegation(&iss, &[], "book_flight");
        c["exp"] = json!(now() - 120);
        sign("rsa-1", &c)
    };
    let expired_agent = sign(
        "rsa-1",
        &json!({"iss": iss, "aud": AUD, "sub": "travel-agent", "exp": now() - 120}),
    );
    // Signed by a key the IdP does not publish.
    let forged_alice = sign("rsa-2", &delegation(&iss, &[], "book_flight"));
    let forged_agent = sign(
        "rsa-2",
        &json!({"iss": iss, "aud": AUD, "sub": "travel-agent", "exp": now() + 60}),
    );
    let untrusted = sign(
        "rsa-1",
        &delegation("https://idp.untrusted.example", &[], "book_flight"),
    );
    let not_employee = {
        let mut c = delegation(&iss, &[], "book_flight");
        c["employee"] = json!(false);
        sign("rsa-1", &c)
    };
    let rogue = x.agent("rogue-agent", json!({}));
    // A delegation token as the actor token: whoever holds it would act as its subject.
    let delegated_actor = sign("rsa-1", &delegation(&iss, &["travel-agent"], "book_flight"));

    // (what, subject token, actor token, more parameters, error)
    type Case<'a> = (&'a str, String, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "expired subject",
            expired_alice,
            agent.clone(),
            vec![],
            "invalid_grant",
        ),
        (
            "expired actor",
            alice.clone(),
            expired_agent,
            vec![],
            "invalid_grant",
        ),
        (
            "forged subject",
            forged_alice,
            agent.clone(),
            vec![],
            "invalid_grant",
        ),
        (
            "forged actor",
            alice.clone(),
            forged_agent,
            vec![],
            "invalid_grant",
        ),
        (
            "untrusted issuer",
            untrusted,
            agent.clone(),
            vec![],
            "invalid_grant",
        ),
        (
            "not a token",
            "nope".into(),
            agent.clone(),
            vec![],
            "invalid_grant",
        ),
        (
            "a delegation token as actor",
            alice.clone(),
            delegated_actor,
            vec![],
            "invalid_grant",
        ),
        (
            "more scope than allowed",
            alice.clone(),
            agent.clone(),
            vec![("scope", "book_flight admin")],
            "invalid_scope",
        ),
        (
            "an audience the policy does not list",
            alice.clone(),
            agent.clone(),
            vec![("audience", "payroll")],
            "invalid_target",
        ),
        (
            "a resource the policy does not list",
            alice.clone(),
            agent.clone(),
            vec![("resource", "https://payroll.example/")],
            "invalid_target",
        ),
        (
            "an unregistered agent",
            alice.clone(),
            rogue,
            vec![],
            "unauthorized_client",
        ),
        (
            "a subject who is not an employee",
            not_employee,
            agent.clone(),
            vec![],
            "invalid_grant",
        ),
    ];
    for (what, subject, actor, more, want) in cases {
        let (status, headers, body) = x.exchange(&subject, &actor, &more).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(error(&body), want, "{what}: {body}");
        assert_eq!(headers["cache-control"], "no-store", "{what}");
        let text = body.to_string();
        assert!(
            !text.contains(&subject) && !text.contains(&actor),
            "{what}: a token echoed in {text}"
        );
    }

    // Malformed requests.
    let (status, _, body) = x
        .post_raw(
            "application/json",
            json!({"grant_type": TOKEN_EXCHANGE, "subject_token": alice}).to_string(),
        )
        .await;
    assert_eq!((status, error(&body)), (400, "invalid_request"), "{body}");
    let (status, _, body) = x.post(&[("grant_type", "password")]).await;
    assert_eq!(
        (status, error(&body)),
        (400, "unsupported_grant_type"),
        "{body}"
    );
    let (status, _, body) = x
        .exchange(&alice, &agent, &[("subject_token", &alice)])
        .await;
    assert_eq!((status, error(&body)), (400, "invalid_request"), "{body}");
    let (status, _, body) = x
        .post(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &alice),
            ("subject_token_type", ACCESS_TOKEN),
        ])
        .await;
    assert_eq!((status, error(&body)), (400, "invalid_request"), "{body}");
    let (status, _, body) = x
        .exchange(
            &alice,
            &agent,
            &[(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:saml2",
            )],
        )
        .await;
    assert_eq!((status, error(&body)), (400, "invalid_request"), "{body}");
    // Over the size limit: refused before it is parsed.
    let padding = "x".repeat(5000);
    let (status, _, body) = x.exchange(&alice, &agent, &[("pad", &padding)]).await;
    assert_eq!((status, error(&body)), (400, "invalid_request"), "{body}");
    assert!(body.to_string().contains("4096"), "{body}");

    let metrics = x.sidecar.metrics().await;
    for (result, n) in [
        ("invalid_grant", 8),
        ("invalid_scope", 1),
        ("invalid_target", 2),
        ("unauthorized_client", 1),
        ("unsupported_grant_type", 1),
        ("invalid_request", 5),
        ("issued", 0),
    ] {
        let series = format!("onbehalf_token_exchanges_total{{result=\"{result}\"}} {n}\n");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    x.sidecar.stop().await;
}

#[tokio::test]
async fn may_act_names_who_may_act_for_the_subject() {
    let x = Exchange::start("").await;
    let may_act = |sub: &str| json!({"may_act": {"sub": sub}});
    let agent = x.agent("travel-agent", json!({}));
    let (status, _, body) = x
        .exchange(
            &x.alice("book_flight", may_act("travel-agent")),
            &agent,
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = x
        .exchange(
            &x.alice("book_flight", may_act("orchestrator")),
            &agent,
            &[],
        )
        .await;
    assert_eq!((status, error(&body)), (400, "invalid_grant"), "{body}");
    assert!(body.to_string().contains("may_act"), "{body}");
    // may_act naming an issuer: the actor must come from it.
    let elsewhere = json!({"may_act": {"sub": "travel-agent", "iss": "https://other.example"}});
    let (status, _, body) = x
        .exchange(&x.alice("book_flight", elsewhere), &agent, &[])
        .await;
    assert_eq!((status, error(&body)), (400, "invalid_grant"), "{body}");
    let here = json!({"may_act": {"sub": "travel-agent", "iss": x.idp.issuer()}});
    let (status, _, body) = x.exchange(&x.alice("book_flight", here), &agent, &[]).await;
    assert_eq!(status, 200, "{body}");
    x.sidecar.stop().await;

    // require_may_act: a subject token without may_act is refused.
    let x = Exchange::start("  require_may_act: true\n").await;
    let agent = x.agent("travel-agent", json!({}));
    let (status, _, body) = x
        .exchange(&x.alice("book_flight", json!({})), &agent, &[])
        .await;
    assert_eq!((status, error(&body)), (400, "invalid_grant"), "{body}");
    let (status, _, body) = x
        .exchange(
            &x.alice("book_flight", may_act("travel-agent")),
            &agent,
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    x.sidecar.stop().await;
}

#[tokio::test]
async fn a_delegation_token_whose_actor_may_act_does_not_name_is_refused_on_check() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = Sidecar::start(&config_yaml(&remote_issuer(&idp))).await;
    s.wait_ready().await;
    let mut claims = delegation(&idp.issuer(), &["travel-agent"], "book_flight");
    claims["may_act"] = json!({"sub": "travel-agent"});
    let allowed = s
        .check_token("POST", "/flights/bookings", &sign("rsa-1", &claims))
        .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    claims["may_act"] = json!({"sub": "orchestrator"});
    let refused = s
        .check_token("POST", "/flights/bookings", &sign("rsa-1", &claims))
        .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|h| h.contains("invalid_token")),
        "{refused:?}"
    );
    claims["may_act"] = json!("travel-agent");
    let malformed = s
        .check_token("POST", "/flights/bookings", &sign("rsa-1", &claims))
        .await;
    assert_eq!(malformed.status, 401, "{malformed:?}");
    s.stop().await;
}

#[tokio::test]
async fn the_policy_sees_may_act() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("authz.rego"),
        "package envoy.authz\nimport rego.v1\ndefault allow := false\n\
         allow if input.delegation.may_act.sub == \"travel-agent\"\n",
    )
    .expect("write");
    let yaml = config_yaml(&remote_issuer(&idp)).replace(
        &repo().join("policies").display().to_string(),
        &dir.path().display().to_string(),
    );
    let s = Sidecar::start(&yaml).await;
    s.wait_ready().await;
    let mut claims = delegation(&idp.issuer(), &["travel-agent"], "");
    let without = s.check_token("GET", "/", &sign("rsa-1", &claims)).await;
    assert_eq!(without.status, 403, "{without:?}");
    claims["may_act"] = json!({"sub": "travel-agent"});
    let with = s.check_token("GET", "/", &sign("rsa-1", &claims)).await;
    assert_eq!(with.status, 200, "{with:?}");
    s.stop().await;
}

#[tokio::test]
async fn exp_is_never_after_either_input_token() {
    let x = Exchange::start("").await;
    let mut alice = delegation(&x.idp.issuer(), &[], "book_flight");
    let alice_exp = now() + 40;
    // A NumericDate may be a float: it bounds the issued token all the same.
    alice["exp"] = json!(alice_exp as f64 + 0.2);
    let agent_exp = now() + 70;
    let agent = sign(
        "rsa-1",
        &json!({"iss": x.idp.issuer(), "aud": AUD, "sub": "travel-agent", "exp": agent_exp}),
    );
    let (status, _, body) = x.exchange(&sign("rsa-1", &alice), &agent, &[]).await;
    assert_eq!(status, 200, "{body}");
    let claims = x
        .verify(body["access_token"].as_str().expect("token"))
        .await;
    assert_eq!(claims["exp"], alice_exp, "the subject token's exp");

    let short_agent = sign(
        "rsa-1",
        &json!({"iss": x.idp.issuer(), "aud": AUD, "sub": "travel-agent", "exp": now() + 20}),
    );
    alice["exp"] = json!(now() + 300);
    let (status, _, body) = x.exchange(&sign("rsa-1", &alice), &short_agent, &[]).await;
    assert_eq!(status, 200, "{body}");
    let claims = x
        .verify(body["access_token"].as_str().expect("token"))
        .await;
    assert!(
        claims["exp"].as_i64().expect("exp") <= now() + 20,
        "the actor token's exp: {claims}"
    );
    x.sidecar.stop().await;
}

#[tokio::test]
async fn an_actor_over_its_rate_limit_is_answered_429() {
    let x = Exchange::start("  rate_limit:\n    per_second: 0.5\n    burst: 2\n").await;
    let alice = x.alice("book_flight", json!({}));
    let agent = x.agent("travel-agent", json!({}));
    for _ in 0..2 {
        let (status, _, body) = x.exchange(&alice, &agent, &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, headers, body) = x.exchange(&alice, &agent, &[]).await;
    assert_eq!((status, error(&body)), (429, "slow_down"), "{body}");
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    // Another agent has its own bucket.
    let (status, _, body) = x
        .exchange(&alice, &x.agent("orchestrator", json!({})), &[])
        .await;
    assert_eq!(status, 200, "{body}");
    x.sidecar.stop().await;
}

#[tokio::test]
async fn the_exchange_may_have_its_own_listener_and_a_rotating_key_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("exchange.pem");
    std::fs::copy(fixture("rsa-1.pem"), &key).expect("copy");
    let idp = IdpServer::start(&["rsa-1"]).await;
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let yaml = config_yaml(&remote_issuer(&idp))
        + &format!(
            "exchange:\n  enabled: true\n  issuer: {issuer}\n  addr: 127.0.0.1:{port}\n  \
             algorithm: RS256\n  key_file: {}\n  key_id: exchange-1\n",
            key.display()
        );
    let sidecar = Sidecar::start(&yaml).await;
    sidecar.wait_ready().await;
    assert_eq!(sidecar.running.exchange_addr.map(|a| a.port()), Some(port));
    let x = Exchange {
        sidecar,
        idp,
        issuer: issuer.clone(),
    };
    // Not on the admin listener when it has its own.
    let admin = reqwest::get(format!(
        "http://{}/.well-known/openid-configuration",
        x.sidecar.running.admin_addr
    ))
    .await
    .expect("admin");
    assert_eq!(admin.status(), 404);
    let rfc8414: Value = reqwest::get(format!("{issuer}/.well-known/oauth-authorization-server"))
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(rfc8414["grant_types_supported"], json!([TOKEN_EXCHANGE]));

    let alice = x.alice("book_flight", json!({}));
    let agent = x.agent("travel-agent", json!({}));
    let (_, _, body) = x.exchange(&alice, &agent, &[]).await;
    let first = body["access_token"].as_str().expect("token").to_string();
    assert_eq!(
        jsonwebtoken::decode_header(&first)
            .expect("header")
            .kid
            .as_deref(),
        Some("exchange-1")
    );
    // Rotate: a new key signs, the old one stays published, both tokens verify.
    let replaced = dir.path().join("new.pem");
    std::fs::copy(fixture("rsa-2.pem"), &replaced).expect("copy");
    let _ = std::fs::remove_file(&key);
    std::fs::write(&key, std::fs::read(&replaced).expect("read")).expect("write");
    let mut second = String::new();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let (_, _, body) = x.exchange(&alice, &agent, &[]).await;
        let token = body["access_token"].as_str().expect("token").to_string();
        if jsonwebtoken::decode_header(&token)
            .expect("header")
            .kid
            .as_deref()
            != Some("exchange-1")
        {
            second = token;
            break;
        }
    }
    assert!(!second.is_empty(), "the rotated key never signed");
    x.verify(&first).await;
    x.verify(&second).await;
    x.sidecar.stop().await;
}
