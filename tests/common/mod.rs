//! Shared test harness: keys and tokens, a real HTTP JWKS/OIDC server, an in-process
//! onbehalf over real gRPC on loopback, and a header-echoing upstream.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use onbehalf::app::Running;
use onbehalf::config::{Config, Source};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const AUD: &str = "service-b";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    onbehalf::testing::fixture(name)
}

pub fn jwk(kid: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("{kid}.jwk.json"))).expect("fixture");
    serde_json::from_str(&text).expect("jwk")
}

pub fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).expect("time")
}

/// Signs `claims` with the fixture key `kid`.
pub fn sign(kid: &str, claims: &Value) -> String {
    onbehalf::testing::sign_fixture(kid, claims).expect("sign")
}

/// Claims of a delegation: `sub` = alice (an employee), actors current first.
pub fn delegation(iss: &str, actors: &[&str], scope: &str) -> Value {
    let mut claims = json!({"iss": iss, "aud": AUD, "sub": "alice", "employee": true,
                            "exp": now() + 300, "iat": now(), "scope": scope});
    let mut act: Option<Value> = None;
    for actor in actors.iter().rev() {
        act = Some(match act {
            Some(inner) => json!({"sub": actor, "act": inner}),
            None => json!({"sub": actor}),
        });
    }
    if let Some(act) = act {
        claims["act"] = act;
    }
    claims
}

/// A real HTTP server for JWKS and OIDC discovery whose keys and availability tests control.
pub struct IdpServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
    _stop: oneshot::Sender<()>,
}

struct IdpState {
    keys: Vec<Value>,
    up: bool,
    /// How long the JWKS endpoint takes to answer (an IdP that hangs).
    delay: Duration,
    /// A body served instead of the JWKS (garbage, an oversized document).
    body: Option<String>,
    jwks_hits: usize,
    issuer: String,
}

/// A loopback listener on an ephemeral port.
pub async fn bind() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// Serves `app` on `listener` until the returned sender is dropped.
pub fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}

impl IdpServer {
    pub async fn start(kids: &[&str]) -> IdpServer {
        let (listener, addr) = bind().await;
        let state = Arc::new(Mutex::new(IdpState {
            keys: kids.iter().map(|k| jwk(k)).collect(),
            up: true,
            delay: Duration::ZERO,
            body: None,
            jwks_hits: 0,
            issuer: format!("http://{addr}"),
        }));
        let app = axum::Router::new()
            .route("/jwks.json", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .with_state(state.clone());
        let stop = serve(listener, app);
        IdpServer {
            addr,
            state,
            _stop: stop,
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn set_keys(&self, kids: &[&str]) {
        self.state.lock().expect("lock").keys = kids.iter().map(|k| jwk(k)).collect();
    }

    /// Serves `body` as the JWKS document (200), or the keys again with `None`.
    pub fn set_body(&self, body: Option<String>) {
        self.state.lock().expect("lock").body = body;
    }

    /// Makes the JWKS endpoint answer only after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().expect("lock").delay = delay;
    }

    pub fn set_up(&self, up: bool) {
        self.state.lock().expect("lock").up = up;
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.lock().expect("lock").jwks_hits
    }
}

async fn jwks(State(state): State<Arc<Mutex<IdpState>>>) -> impl IntoResponse {
    // Counted as the request arrives, before any delay.
    let delay = {
        let mut s = state.lock().expect("lock");
        s.jwks_hits += 1;
        s.delay
    };
    tokio::time::sleep(delay).await;
    let s = state.lock().expect("lock");
    match (s.up, &s.body) {
        (false, _) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        (true, Some(body)) => (StatusCode::OK, body.clone()).into_response(),
        (true, None) => (StatusCode::OK, Json(json!({"keys": s.keys}))).into_response(),
    }
}

async fn discovery(State(state): State<Arc<Mutex<IdpState>>>) -> impl IntoResponse {
    let s = state.lock().expect("lock");
    let issuer = s.issuer.clone();
    Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")}))
}

/// onbehalf running in this process on loopback ports.
pub struct Sidecar {
    pub running: Running,
    pub client: AuthorizationClient<tonic::transport::Channel>,
}

/// A config using the repository's default policy, on ephemeral ports.
pub fn config_yaml(issuers: &str) -> String {
    format!(
        "server:\n  grpc_addr: 127.0.0.1:0\n  admin_addr: 127.0.0.1:0\n  shutdown_grace: 2s\n\
         policy:\n  dir: {}\nauthn:\n  issuers:\n{issuers}",
        repo().join("policies").display()
    )
}

pub fn remote_issuer(idp: &IdpServer) -> String {
    format!(
        "    - issuer: {}\n      audiences: [{AUD}]\n      jwks_uri: {}\n      min_refresh_interval: 250ms\n      fetch_timeout: 1s\n",
        idp.issuer(),
        idp.jwks_uri()
    )
}

pub fn parse_config(yaml: &str) -> Config {
    Config::from_yaml(
        &Source::Embedded,
        yaml,
        std::iter::empty::<(String, String)>(),
    )
    .expect("test config is valid")
}

impl Sidecar {
    pub async fn start(yaml: &str) -> Sidecar {
        let config = parse_config(yaml);
        let running = onbehalf::app::start(&config)
            .await
            .expect("onbehalf starts");
        let client = match &running.grpc_addr {
            onbehalf::config::ListenAddr::Tcp(addr) => {
                AuthorizationClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect")
            }
            onbehalf::config::ListenAddr::Unix(_) => panic!("use connect_unix for sockets"),
        };
        Sidecar { running, client }
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.running.admin_addr);
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("onbehalf did not become ready");
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.running.admin_addr))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    pub async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut client = self.client.clone();
        let resp = client
            .check(check_request(method, path, headers))
            .await
            .expect("Check returns a decision, never a gRPC error")
            .into_inner();
        Reply::from(resp)
    }

    pub async fn check_token(&self, method: &str, path: &str, token: &str) -> Reply {
        let bearer = format!("Bearer {token}");
        self.check(method, path, &[("authorization", &bearer)])
            .await
    }

    pub async fn stop(self) {
        self.running
            .stop(Duration::from_secs(2))
            .await
            .expect("clean stop");
    }
}

/// The CheckRequest Envoy sends for a request to Service B, built as `onbehalf check`,
/// the benchmarks and the load tool build it.
pub fn check_request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    onbehalf::cli::check::RequestSpec {
        method: method.into(),
        path: path.into(),
        host: Some(AUD.into()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        token: None,
        body: None,
    }
    .to_check_request("authorization")
}

/// A CheckResponse flattened for assertions.
#[derive(Debug)]
pub struct Reply {
    pub grpc_code: i32,
    /// 200 for an allow, else the denial's status.
    pub status: i32,
    pub headers: HashMap<String, Vec<String>>,
    pub removed: Vec<String>,
    pub body: String,
    /// Headers for the client's response (`response_headers_to_add` of an allow).
    pub response_headers: HashMap<String, String>,
}

impl From<CheckResponse> for Reply {
    fn from(r: CheckResponse) -> Reply {
        let grpc_code = r.status.as_ref().map_or(-1, |s| s.code);
        let mut headers: HashMap<String, Vec<String>> = HashMap::new();
        let mut collect = |hs: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
            for h in hs.iter().filter_map(|h| h.header.as_ref()) {
                headers
                    .entry(h.key.clone())
                    .or_default()
                    .push(h.value.clone());
            }
        };
        match r.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                collect(&ok.headers);
                Reply {
                    grpc_code,
                    status: 200,
                    headers,
                    removed: ok.headers_to_remove,
                    body: String::new(),
                    response_headers: ok
                        .response_headers_to_add
                        .iter()
                        .filter_map(|h| h.header.as_ref())
                        .map(|h| (h.key.clone(), h.value.clone()))
                        .collect(),
                }
            }
            Some(HttpResponse::DeniedResponse(d)) => {
                collect(&d.headers);
                Reply {
                    grpc_code,
                    status: d.status.map_or(0, |s| s.code),
                    headers,
                    removed: Vec::new(),
                    body: d.body,
                    response_headers: HashMap::new(),
                }
            }
            _ => Reply {
                grpc_code,
                status: 0,
                headers,
                removed: Vec::new(),
                body: String::new(),
                response_headers: HashMap::new(),
            },
        }
    }
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// An upstream that answers every request with the request's headers as JSON.
pub struct EchoServer {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        let (listener, addr) = bind().await;
        let app = axum::Router::new().fallback(echo);
        let stop = serve(listener, app);
        EchoServer { addr, _stop: stop }
    }
}

async fn echo(headers: HeaderMap) -> Json<Value> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in &headers {
        map.entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    Json(json!({ "headers": map }))
}
