//! onbehalf in-process, asked over real gRPC on loopback, with keys from a real HTTP IdP.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::*;

async fn sidecar(idp: &IdpServer) -> Sidecar {
    let s = Sidecar::start(&config_yaml(&remote_issuer(idp))).await;
    s.wait_ready().await;
    s
}

#[tokio::test]
async fn delegation_allowed_with_identity_headers() {
    let idp = IdpServer::start(&["rsa-1", "ec-1", "ed-1"]).await;
    let s = sidecar(&idp).await;
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let claims = delegation(
            &idp.issuer(),
            &["travel-agent", "orchestrator"],
            "book_flight",
        );
        let token = sign(kid, &claims);
        let r = s.check_token("POST", "/flights/bookings", &token).await;
        assert_eq!(r.status, 200, "{kid}: {}", r.body);
        assert_eq!(r.grpc_code, tonic::Code::Ok as i32);
        assert_eq!(r.header("x-onbehalf-subject"), Some("alice"));
        assert_eq!(r.header("x-onbehalf-actor"), Some("travel-agent"));
        assert_eq!(
            r.header("x-onbehalf-chain"),
            Some("travel-agent,orchestrator")
        );
        assert_eq!(r.header("x-onbehalf-capabilities"), Some("book_flight"));
    }
    s.stop().await;
}

#[tokio::test]
async fn direct_user_gets_no_actor_header() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    let token = sign("rsa-1", &delegation(&idp.issuer(), &[], "read_bookings"));
    let bearer = format!("Bearer {token}");
    let r = s
        .check(
            "GET",
            "/flights",
            &[("authorization", &bearer), ("x-onbehalf-actor", "forged")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-onbehalf-subject"), Some("alice"));
    assert!(r.header("x-onbehalf-actor").is_none());
    assert!(r.removed.contains(&"x-onbehalf-actor".to_string()));
    assert!(r.removed.contains(&"x-onbehalf-chain".to_string()));
    s.stop().await;
}

#[tokio::test]
async fn unauthenticated_requests_get_401() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    let iss = idp.issuer();
    let with = |patch: serde_json::Value| {
        let mut c = delegation(&iss, &["travel-agent"], "book_flight");
        for (k, v) in patch.as_object().expect("object") {
            c[k] = v.clone();
        }
        sign("rsa-1", &c)
    };
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(delegation(&iss, &["travel-agent"], "book_flight"))
    );
    let cases = [
        ("expired", with(json!({"exp": now() - 120}))),
        ("wrong audience", with(json!({"aud": "another-service"}))),
        (
            "untrusted issuer",
            with(json!({"iss": "https://elsewhere"})),
        ),
        ("alg none", none),
        ("garbage", "not-a-token".to_string()),
    ];
    for (name, token) in cases {
        let r = s.check_token("POST", "/flights/bookings", &token).await;
        assert_eq!(r.status, 401, "{name}: {}", r.body);
        assert_eq!(r.grpc_code, tonic::Code::Unauthenticated as i32, "{name}");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("json body");
        assert_eq!(body["error"], "invalid_token", "{name}");
        assert!(
            !r.body.contains(&token) || token.len() < 20,
            "{name}: body echoes the token"
        );
    }
    let r = s.check("POST", "/flights/bookings", &[]).await;
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let r = s
        .check(
            "POST",
            "/flights/bookings",
            &[("authorization", "Basic YTpi")],
        )
        .await;
    assert_eq!(r.status, 401);
    s.stop().await;
}

#[tokio::test]
async fn policy_denials_get_403() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    let iss = idp.issuer();
    let cases = [
        (
            "missing capability",
            "POST",
            "/flights/bookings",
            delegation(&iss, &["ops-agent"], "book_flight"),
        ),
        (
            "chain too deep",
            "GET",
            "/flights",
            delegation(
                &iss,
                &["travel-agent", "orchestrator", "orchestrator"],
                "read_bookings",
            ),
        ),
        (
            "untrusted agent",
            "GET",
            "/flights",
            delegation(&iss, &["unknown-agent"], "read_bookings"),
        ),
        (
            "employee on admin",
            "GET",
            "/admin/users",
            delegation(&iss, &["ops-agent"], "admin"),
        ),
        (
            "unknown route",
            "GET",
            "/payroll",
            delegation(&iss, &["travel-agent"], "read_bookings"),
        ),
    ];
    for (name, method, path, claims) in cases {
        let r = s.check_token(method, path, &sign("rsa-1", &claims)).await;
        assert_eq!(r.status, 403, "{name}: {}", r.body);
        assert_eq!(r.grpc_code, tonic::Code::PermissionDenied as i32, "{name}");
        assert!(r.body.contains("access_denied"), "{name}: {}", r.body);
    }
    let r = s
        .check_token(
            "POST",
            "/flights/bookings",
            &sign(
                "rsa-1",
                &delegation(&iss, &["travel-agent"], "read_bookings"),
            ),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\", scope=\"book_flight\"")
    );

    let mut director = delegation(&iss, &["ops-agent"], "admin");
    director["department"] = json!("Operations");
    director["title"] = json!("Director");
    let r = s
        .check_token("GET", "/admin/users", &sign("rsa-1", &director))
        .await;
    assert_eq!(
        r.status, 200,
        "a Director in Operations reaches admin: {}",
        r.body
    );
    s.stop().await;
}

#[tokio::test]
async fn rotated_key_is_accepted_after_refresh_on_unknown_kid() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    assert_eq!(
        s.check_token("GET", "/flights", &sign("rsa-1", &claims))
            .await
            .status,
        200
    );

    // The IdP rotates: rsa-2 is new. The first token with kid rsa-2 triggers a fetch.
    idp.set_keys(&["rsa-1", "rsa-2"]);
    tokio::time::sleep(Duration::from_millis(300)).await; // past min_refresh_interval
    let r = s
        .check_token("GET", "/flights", &sign("rsa-2", &claims))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // rsa-1 retired: after the next refresh it no longer verifies.
    idp.set_keys(&["rsa-2"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for issuer in s.running.authorizer.verifier().issuers() {
        assert!(issuer.refresh(true).await);
    }
    assert_eq!(
        s.check_token("GET", "/flights", &sign("rsa-1", &claims))
            .await
            .status,
        401
    );
    s.stop().await;
}

/// An unknown `kid` while the IdP hangs: the request is answered 401 after
/// `authn.unknown_kid_wait` (100 ms), not after the fetch's timeout (1 s here) nor Envoy's
/// own ext_authz timeout; the fetch goes on, and once the IdP answers the new key verifies.
#[tokio::test]
async fn an_unknown_kid_while_the_idp_hangs_is_answered_within_the_wait() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    let known = sign("rsa-1", &claims);
    assert_eq!(s.check_token("GET", "/flights", &known).await.status, 200);

    idp.set_keys(&["rsa-1", "rsa-2"]);
    idp.set_delay(Duration::from_secs(3));
    // Past min_refresh_interval (250 ms), so that the unknown kid does start a fetch.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = idp.jwks_hits();
    let start = std::time::Instant::now();
    let r = s
        .check_token("GET", "/flights", &sign("rsa-2", &claims))
        .await;
    let waited = start.elapsed();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        waited < Duration::from_millis(900),
        "answered after {waited:?}: the request waited for the hanging fetch (timeout 1 s)"
    );
    // Known keys are not held up meanwhile.
    assert_eq!(s.check_token("GET", "/flights", &known).await.status, 200);

    // The IdP recovers: a later fetch brings rsa-2.
    idp.set_delay(Duration::ZERO);
    let mut status = 0;
    for _ in 0..100 {
        status = s
            .check_token("GET", "/flights", &sign("rsa-2", &claims))
            .await
            .status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "rsa-2 verifies once the IdP answers");
    assert!(idp.jwks_hits() > hits);
    s.stop().await;
}

/// While the IdP hangs, a burst of tokens with unknown kids starts one fetch, not one per
/// request, and every request is answered within the wait.
#[tokio::test]
async fn a_hanging_idp_gets_one_fetch_however_many_unknown_kids_wait() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = Arc::new(sidecar(&idp).await);
    idp.set_delay(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(300)).await; // past min_refresh_interval
    let hits = idp.jwks_hits();
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    let start = std::time::Instant::now();
    let mut burst = Vec::new();
    for i in 0..50 {
        let (s, mut claims) = (s.clone(), claims.clone());
        claims["jti"] = json!(i);
        burst.push(tokio::spawn(async move {
            s.check_token("GET", "/flights", &sign("rsa-2", &claims))
                .await
                .status
        }));
    }
    for r in burst {
        assert_eq!(r.await.expect("request"), 401);
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "50 requests took {:?}: they waited for the hanging fetch (timeout 1 s)",
        start.elapsed()
    );
    assert_eq!(idp.jwks_hits() - hits, 1, "one fetch for the whole burst");
    idp.set_delay(Duration::ZERO);
    Arc::into_inner(s).expect("one owner").stop().await;
}

/// A JWKS that is garbage, or larger than the limit, is refused whole: the keys already
/// known keep verifying, and a forced refresh reports the failure.
#[tokio::test]
async fn garbage_or_oversized_jwks_keeps_the_known_keys() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    let mut claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    for (what, body) in [
        ("garbage", "{\"keys\": [oops".to_string()),
        ("not a JWKS", "[1, 2, 3]".to_string()),
        (
            "over 1 MiB",
            format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(1_100_000)),
        ),
    ] {
        idp.set_body(Some(body));
        for issuer in s.running.authorizer.verifier().issuers() {
            assert!(!issuer.refresh(true).await, "{what}: the fetch must fail");
        }
        // A token new to the token cache: verified with the keys, not answered from it.
        claims["jti"] = json!(what);
        assert_eq!(
            s.check_token("GET", "/flights", &sign("rsa-1", &claims))
                .await
                .status,
            200,
            "{what}: the known key still verifies"
        );
    }
    idp.set_body(None);
    s.stop().await;
}

#[tokio::test]
async fn unknown_kids_do_not_hammer_the_idp() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let yaml = config_yaml(&remote_issuer(&idp))
        .replace("min_refresh_interval: 250ms", "min_refresh_interval: 1h");
    let s = Sidecar::start(&yaml).await;
    s.wait_ready().await;
    let before = idp.jwks_hits();
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    for _ in 0..20 {
        assert_eq!(
            s.check_token("GET", "/flights", &sign("rsa-2", &claims))
                .await
                .status,
            401
        );
    }
    assert!(
        idp.jwks_hits() - before <= 1,
        "{} fetches for 20 unknown kids",
        idp.jwks_hits() - before
    );
    s.stop().await;
}

#[tokio::test]
async fn idp_down_after_first_fetch_still_verifies() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    idp.set_up(false);
    for issuer in s.running.authorizer.verifier().issuers() {
        assert!(
            !issuer.refresh(true).await,
            "the fetch fails while the IdP is down"
        );
    }
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    let r = s
        .check_token("GET", "/flights", &sign("rsa-1", &claims))
        .await;
    assert_eq!(r.status, 200, "known keys keep working: {}", r.body);
    s.stop().await;
}

#[tokio::test]
async fn oidc_discovery_finds_the_keys() {
    let idp = IdpServer::start(&["ec-1"]).await;
    let issuer = format!(
        "    - issuer: {}\n      audiences: [{AUD}]\n      discovery: true\n",
        idp.issuer()
    );
    let s = Sidecar::start(&config_yaml(&issuer)).await;
    s.wait_ready().await;
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    assert_eq!(
        s.check_token("GET", "/flights", &sign("ec-1", &claims))
            .await
            .status,
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn not_ready_until_keys_load_and_health_follows() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    idp.set_up(false);
    let s = Sidecar::start(&config_yaml(&remote_issuer(&idp))).await;
    let readyz = format!("http://{}/readyz", s.running.admin_addr);
    let healthz = format!("http://{}/healthz", s.running.admin_addr);
    assert_eq!(reqwest::get(&healthz).await.expect("healthz").status(), 200);
    assert_eq!(reqwest::get(&readyz).await.expect("readyz").status(), 503);

    let addr = match &s.running.grpc_addr {
        onbehalf::config::ListenAddr::Tcp(a) => *a,
        other => panic!("tcp expected, got {other}"),
    };
    let channel = tonic::transport::Endpoint::try_from(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let ask = |svc: &str| HealthCheckRequest {
        service: svc.into(),
    };
    let status = health
        .check(ask("envoy.service.auth.v3.Authorization"))
        .await
        .expect("health")
        .into_inner();
    assert_eq!(status.status, ServingStatus::NotServing as i32);

    // Before keys load, a token cannot be checked: 503, not a false 401.
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    assert_eq!(
        s.check_token("GET", "/flights", &sign("rsa-1", &claims))
            .await
            .status,
        503
    );

    idp.set_up(true);
    s.wait_ready().await;
    let mut serving = false;
    for _ in 0..100 {
        let st = health
            .check(ask("envoy.service.auth.v3.Authorization"))
            .await
            .expect("health")
            .into_inner();
        if st.status == ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(serving, "gRPC health turns SERVING once ready");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("onbehalf_decisions_total{decision=\"deny\",reason=\"unavailable\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("onbehalf_ready 1"), "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("authz.sock");
    let yaml = config_yaml(&remote_issuer(&idp)).replace(
        "grpc_addr: 127.0.0.1:0",
        &format!("grpc_addr: unix:{}", sock.display()),
    );
    let config = parse_config(&yaml);
    let running = onbehalf::app::start(&config).await.expect("starts");
    let path = sock.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect over the socket");
    let mut client = AuthorizationClient::new(channel);
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    let bearer = format!("Bearer {}", sign("rsa-1", &claims));
    // Keys may still be loading: retry briefly.
    let mut status = 0;
    for _ in 0..100 {
        let resp = client
            .check(check_request(
                "GET",
                "/flights",
                &[("authorization", &bearer)],
            ))
            .await
            .expect("check")
            .into_inner();
        status = Reply::from(resp).status;
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200);
    running.stop(Duration::from_secs(2)).await.expect("stop");
    assert!(!sock.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn malformed_requests_are_denied_not_errors() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    let mut client = s.client.clone();
    let resp = client
        .check(envoy_types::ext_authz::v3::pb::CheckRequest::default())
        .await
        .expect("a decision")
        .into_inner();
    assert_eq!(Reply::from(resp).status, 400);
    let claims = delegation(&idp.issuer(), &["travel-agent"], "read_bookings");
    let r = s
        .check_token("GET", "/flights/%FF", &sign("rsa-1", &claims))
        .await;
    assert_eq!(r.status, 400);
    s.stop().await;
}

/// Shutdown under load, as in a pod: `/readyz` answers 503 and gRPC health NOT_SERVING first,
/// checks are still answered during `shutdown_delay` while the clients move away, and no
/// request sees a transport error; then the listener closes.
#[tokio::test]
async fn shutdown_under_load_turns_unready_first_and_drops_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = sidecar(&idp).await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "book_flight"),
    );
    let bearer = format!("Bearer {token}");
    let request = check_request("POST", "/flights/bookings", &[("authorization", &bearer)]);
    let onbehalf::config::ListenAddr::Tcp(grpc_addr) = s.running.grpc_addr.clone() else {
        panic!("tcp");
    };
    let admin = s.running.admin_addr;
    // Eight clients on connections of their own (as Envoy's workers), each checking in a loop
    // until it has seen readiness gone and then sent 20 more, as a client that is moved away
    // keeps sending for a moment.
    let unready = Arc::new(AtomicBool::new(false));
    let answered_after = Arc::new(AtomicU32::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client = AuthorizationClient::connect(format!("http://{grpc_addr}"))
            .await
            .expect("connect");
        let (request, unready, after) = (request.clone(), unready.clone(), answered_after.clone());
        clients.push(tokio::spawn(async move {
            let mut more = 20;
            loop {
                let was_unready = unready.load(Ordering::SeqCst);
                let reply = client
                    .check(request.clone())
                    .await
                    .expect("no transport error while shutting down")
                    .into_inner();
                assert_eq!(
                    reply.status.map(|s| s.code),
                    Some(tonic::Code::Ok as i32),
                    "allowed while shutting down"
                );
                if was_unready {
                    after.fetch_add(1, Ordering::SeqCst);
                    more -= 1;
                    if more == 0 {
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let Sidecar { running, client: _ } = s;
    let drain = tokio::spawn(running.drain(Duration::from_millis(1500), Duration::from_secs(2)));
    // Readiness goes first: /readyz 503 and health NOT_SERVING, while checks pass.
    let mut readyz = 200;
    for _ in 0..100 {
        readyz = reqwest::get(format!("http://{admin}/readyz"))
            .await
            .expect("the admin server still answers")
            .status()
            .as_u16();
        if readyz == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(readyz, 503, "/readyz turns 503 when shutdown begins");
    let channel = tonic::transport::Endpoint::try_from(format!("http://{grpc_addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("the gRPC listener is still open");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(status.status, ServingStatus::NotServing as i32);
    unready.store(true, Ordering::SeqCst);

    for c in clients {
        c.await.expect("every client's checks were answered");
    }
    assert_eq!(answered_after.load(Ordering::SeqCst), 8 * 20);
    drain.await.expect("drain task").expect("a clean drain");
    assert!(
        tokio::net::TcpStream::connect(grpc_addr).await.is_err(),
        "the listener is closed after the drain"
    );
}

/// `policy.dry_run`: every decision is made, logged and counted, then the request passes with
/// the would-be decision in `x-onbehalf-dry-run`; a token that does not verify is still
/// refused unless `authn.dry_run` too.
#[tokio::test]
async fn dry_run_decides_counts_and_lets_requests_pass() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let issuers = remote_issuer(&idp);
    let base = config_yaml(&issuers);
    let alice = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "book_flight"),
    );
    let bearer = format!("Bearer {alice}");
    for authn_dry_run in [false, true] {
        let yaml = base
            .replace("policy:\n", "policy:\n  dry_run: true\n")
            .replace("authn:\n", &format!("authn:\n  dry_run: {authn_dry_run}\n"));
        let s = Sidecar::start(&yaml).await;
        s.wait_ready().await;

        // The shipped policy allows the travel agent to book: passes, marked allow.
        let booked = s.check_token("POST", "/flights/bookings", &alice).await;
        assert_eq!(booked.status, 200, "{}", booked.body);
        assert_eq!(
            booked
                .response_headers
                .get("x-onbehalf-dry-run")
                .map(String::as_str),
            Some("allow")
        );
        // It denies the admin pages: passes anyway, with the verified identity, marked deny.
        let admin = s
            .check(
                "GET",
                "/admin/users",
                &[("authorization", &bearer), ("x-onbehalf-subject", "root")],
            )
            .await;
        assert_eq!(admin.status, 200, "{}", admin.body);
        assert_eq!(
            admin
                .response_headers
                .get("x-onbehalf-dry-run")
                .map(String::as_str),
            Some("deny; status=403; reason=policy")
        );
        assert_eq!(admin.header("x-onbehalf-subject"), Some("alice"));
        // No token: refused, unless authn.dry_run; then it passes without identity headers.
        let anonymous = s
            .check("GET", "/admin/users", &[("x-onbehalf-subject", "root")])
            .await;
        match authn_dry_run {
            false => assert_eq!(anonymous.status, 401, "{}", anonymous.body),
            true => {
                assert_eq!(anonymous.status, 200, "{}", anonymous.body);
                assert_eq!(
                    anonymous
                        .response_headers
                        .get("x-onbehalf-dry-run")
                        .map(String::as_str),
                    Some("deny; status=401; reason=missing_token")
                );
                assert!(anonymous.header("x-onbehalf-subject").is_none());
                assert!(anonymous.removed.iter().any(|h| h == "x-onbehalf-subject"));
            }
        }
        // A request onbehalf cannot read is refused whatever the dry run.
        let unreadable = s.check_token("GET", "/flights/%FF", &alice).await;
        assert_eq!(unreadable.status, 400, "{}", unreadable.body);
        // Counted as decided, and as passed by the dry run.
        let metrics = s.metrics().await;
        for line in [
            "onbehalf_decisions_total{decision=\"deny\",reason=\"policy\"} 1",
            "onbehalf_decisions_total{decision=\"deny\",reason=\"missing_token\"} 1",
            "onbehalf_dry_run_allowed_total{reason=\"policy\"} 1",
        ] {
            assert!(metrics.contains(line), "{line} missing:\n{metrics}");
        }
        let passed_without_token = format!(
            "onbehalf_dry_run_allowed_total{{reason=\"missing_token\"}} {}",
            u8::from(authn_dry_run)
        );
        assert!(metrics.contains(&passed_without_token), "{metrics}");
        s.stop().await;
    }
}

/// `policy.queries` and `onbehalf.policy`: a route decides by another rule of the same bundle;
/// the decision cache never answers one rule with the other's entry; an unknown name denies.
#[tokio::test]
async fn a_route_selects_its_rule_and_the_cache_keeps_rules_apart() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("authz.rego"),
        "package envoy.authz\nimport rego.v1\ndefault allow := false\n\
         default open := false\nopen if input.subject.id == \"alice\"\n",
    )
    .expect("policy");
    let yaml = config_yaml(&remote_issuer(&idp))
        .replace(
            &repo().join("policies").display().to_string(),
            &dir.path().display().to_string(),
        )
        .replace(
            "policy:\n",
            "policy:\n  queries:\n    open: data.envoy.authz.open\n",
        );
    let s = Sidecar::start(&yaml).await;
    s.wait_ready().await;
    let token = sign("rsa-1", &delegation(&idp.issuer(), &[], "read_bookings"));
    let bearer = format!("Bearer {token}");
    let ask = |rule: Option<&str>| {
        let mut req = check_request("GET", "/flights", &[("authorization", &bearer)]);
        if let (Some(rule), Some(attrs)) = (rule, req.attributes.as_mut()) {
            attrs
                .context_extensions
                .insert("onbehalf.policy".into(), rule.into());
        }
        let mut client = s.client.clone();
        async move {
            Reply::from(
                client
                    .check(req)
                    .await
                    .expect("Check returns a decision")
                    .into_inner(),
            )
        }
    };
    for _ in 0..3 {
        assert_eq!(ask(None).await.status, 403);
        assert_eq!(ask(Some("open")).await.status, 200);
    }
    let unknown = ask(Some("nope")).await;
    assert_eq!(unknown.status, 403, "{}", unknown.body);
    // A misspelt setting or value is a misconfigured route, not the default rule.
    for (key, value) in [("onbehalf.polcy", "open"), ("onbehalf.dry_run", "yes")] {
        let mut req = check_request("GET", "/flights", &[("authorization", &bearer)]);
        if let Some(attrs) = req.attributes.as_mut() {
            attrs.context_extensions.insert(key.into(), value.into());
        }
        let mut client = s.client.clone();
        let r = Reply::from(client.check(req).await.expect("decision").into_inner());
        assert_eq!(r.status, 403, "{key}: {}", r.body);
    }
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("onbehalf_decisions_total{decision=\"deny\",reason=\"route_config\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("onbehalf_decision_cache_total{result=\"hit\"} 4"),
        "{metrics}"
    );
    s.stop().await;
}
