//! Wiring: build the authorizer, start the gRPC and admin servers and the key refresh tasks,
//! and drain on shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic_health::ServingStatus;

use crate::authn::TokenCache;
use crate::authn::{IssuerKeys, Verifier, jwks::KeySource};
use crate::config::{Config, ListenAddr};
use crate::decision_log::DecisionLog;
use crate::exchange::Exchanger;
use crate::grpc::AuthzService;
use crate::input::GrpcBodies;
use crate::mint::{KeyRing, Minter};
use crate::pipeline::Authorizer;
use crate::policy::PolicyStore;
use crate::policy::bundle::SigningKey;
use crate::policy::source::PolicySource;
use crate::policy::store::Signing;
use crate::watch::DirWatch;

/// The connections of a gRPC listener. Checks are small messages on long-lived HTTP/2
/// connections: Nagle's algorithm would hold responses back waiting for more bytes.
pub fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "Cannot set TCP_NODELAY");
            }
        })
    })
}

/// gRPC service name as health checks ask for it.
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// A started server: its bound addresses and the handle to stop it.
pub struct Running {
    pub grpc_addr: ListenAddr,
    pub admin_addr: SocketAddr,
    /// The exchange's own listener (`exchange.addr`), when it has one.
    pub exchange_addr: Option<SocketAddr>,
    pub authorizer: Arc<Authorizer>,
    shutdown: watch::Sender<bool>,
    /// Turns true when shutdown begins, before `shutdown`: health reports NOT_SERVING.
    draining: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    background: Vec<JoinHandle<()>>,
    /// Why a server ended, sent when it does (asked to or not).
    exited: mpsc::UnboundedReceiver<String>,
}

/// Serves `router` on `listener` until `stop` turns true, as a server task (`spawn_server`).
fn spawn_http(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    exited: mpsc::UnboundedSender<String>,
) -> JoinHandle<anyhow::Result<()>> {
    spawn_server(
        name,
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .with_context(|| format!("{name} server failed"))
        },
        exited,
    )
}

/// Spawns a server's task, which says on `exited` when and why it ended — also when it
/// panicked.
fn spawn_server(
    name: &'static str,
    server: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    exited: mpsc::UnboundedSender<String>,
) -> JoinHandle<anyhow::Result<()>> {
    /// Reports a panic: dropped without a result when the task unwinds.
    struct Report(&'static str, Option<mpsc::UnboundedSender<String>>);
    impl Drop for Report {
        fn drop(&mut self) {
            if let Some(exited) = self.1.take() {
                let _ = exited.send(format!("the {} server panicked", self.0));
            }
        }
    }
    tokio::spawn(async move {
        let mut report = Report(name, Some(exited));
        let result = server.await;
        if let Some(exited) = report.1.take() {
            let why = match &result {
                Ok(()) => format!("the {name} server stopped"),
                Err(e) => format!("the {name} server failed: {e:#}"),
            };
            let _ = exited.send(why);
        }
        result
    })
}

/// Builds the authorizer with no policy active yet and no keys loaded: `start` (or
/// `load_once`) loads them.
pub fn build_authorizer(config: &Config) -> anyhow::Result<(Authorizer, PolicySource)> {
    let source = PolicySource::new(&config.policy).context("policy: building the HTTP client")?;
    let mut keys = Vec::new();
    for (i, key) in config.policy.signing.keys.iter().enumerate() {
        let what = || format!("policy.signing.keys[{i}]");
        let pem = std::fs::read(&key.public_key_file).with_context(|| {
            format!("{}: cannot read {}", what(), key.public_key_file.display())
        })?;
        let alg = crate::jose::parse_algorithm(&key.algorithm)
            .with_context(|| format!("{}: unknown algorithm {}", what(), key.algorithm))?;
        let key = SigningKey::from_pem(&key.id, alg, &pem)
            .map_err(|e| anyhow::anyhow!("{}: {}: {e}", what(), key.public_key_file.display()))?;
        keys.push(key);
    }
    let signing = Signing {
        keys,
        required: config.policy.signing.required,
    };
    let mut store = PolicyStore::new(
        &config.policy.query,
        source.describe(),
        source.name(),
        signing,
    );
    if config.exchange.enabled {
        store = store.require(&config.exchange.policy_query);
    }
    store = store.with_queries(
        config
            .policy
            .queries
            .iter()
            .map(|(name, query)| (name.clone(), query.clone()))
            .collect(),
    );
    let store = Arc::new(store);
    let token_cache = config
        .cache
        .tokens
        .enabled
        .then(|| Arc::new(TokenCache::new(&config.cache.tokens)));
    let mut issuers = Vec::new();
    for (i, issuer) in config.authn.issuers.iter().enumerate() {
        let keys = IssuerKeys::new(issuer, token_cache.clone())
            .with_context(|| format!("authn.issuers[{i}]: building the HTTP client"))?
            .with_unknown_kid_wait(config.authn.unknown_kid_wait.0);
        issuers.push(Arc::new(keys));
    }
    let verifier = Verifier::new(&config.authn, issuers, token_cache);
    let minter = match config.mint.enabled {
        true => Some(Arc::new(Minter::new(&config.mint).map_err(|e| {
            let file = config
                .mint
                .key_file
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default();
            anyhow::anyhow!("mint.key_file{file}: {e}")
        })?)),
        false => None,
    };
    // The token's headers are masked in decision logs, whatever they are called here.
    let mut token_headers = vec![format!(
        "/input/attributes/request/http/headers/{}",
        config.authn.header
    )];
    if let Some(minter) = &minter {
        token_headers.push(format!(
            "/input/attributes/request/http/headers/{}",
            minter.header()
        ));
    }
    // The bundle's name as logs show it, without a URL's query (which may carry a token).
    let bundle_name = source
        .name()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let decision_log = DecisionLog::start(&config.decision_logs, bundle_name, token_headers)
        .context("decision_logs")?;
    let mut authorizer =
        Authorizer::new(config, verifier, store, minter).with_decision_log(decision_log);
    if !config.policy.proto_descriptors.is_empty() {
        let bodies = GrpcBodies::load(&config.policy.proto_descriptors)
            .map_err(|e| anyhow::anyhow!("policy.proto_descriptors: {e}"))?;
        tracing::info!(methods = ?bodies.methods(), "gRPC request bodies are decoded");
        authorizer = authorizer.with_grpc_bodies(bodies);
    }
    Ok((authorizer, source))
}

/// Loads keys from files (an error stops start-up: the file is configuration).
async fn load_file_keys(authorizer: &Authorizer) -> anyhow::Result<()> {
    for issuer in authorizer.verifier().issuers() {
        if let KeySource::File(path) = issuer.source()
            && !issuer.refresh(true).await
        {
            anyhow::bail!(
                "issuer {}: no usable keys in {} (see the log line above)",
                issuer.issuer(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Loads the policy and every issuer's keys once, for one-shot use (`onbehalf check`); a
/// policy that does not load is an error. The configuration's own exchange issuer is not
/// fetched: that exchange is served by `serve`, which a one-shot run does not start.
pub async fn load_once(
    authorizer: &Authorizer,
    source: &PolicySource,
    config: &Config,
) -> anyhow::Result<()> {
    let bundle = source.load().await?;
    authorizer
        .policies()
        .activate(bundle)
        .await
        .with_context(|| format!("loading the policy from {}", source.describe()))?;
    load_file_keys(authorizer).await?;
    let own = config
        .exchange
        .enabled
        .then_some(config.exchange.issuer.as_str());
    for issuer in authorizer.verifier().issuers() {
        if !issuer.loaded() && Some(issuer.issuer()) != own {
            issuer.refresh(true).await;
        }
    }
    Ok(())
}

/// Binds, starts serving, and returns at once. Keys from files are loaded before this
/// returns; remote keys load in the background and `/readyz` says when.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let (authorizer, source) = build_authorizer(config)?;
    let authorizer = Arc::new(authorizer);
    load_file_keys(&authorizer).await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (draining, draining_rx) = watch::channel(false);
    let mut background = Vec::new();
    // The policy loads (and reloads) in the background; until the first load succeeds the
    // server is not ready and answers 503.
    background.push(tokio::spawn(
        source.run(authorizer.policies().clone(), shutdown_rx.clone()),
    ));
    for issuer in authorizer.verifier().issuers() {
        if !matches!(issuer.source(), KeySource::File(_)) {
            background.push(tokio::spawn(refresh_keys(
                issuer.clone(),
                shutdown_rx.clone(),
            )));
        }
    }

    if let Some(minter) = authorizer.minter()
        && minter.keys().key_file().is_some()
    {
        background.push(tokio::spawn(watch_signing_key(
            minter.keys().clone(),
            shutdown_rx.clone(),
        )));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    background.push(tokio::spawn(report_ready(
        authorizer.clone(),
        health.clone(),
        draining_rx,
    )));

    let admin_listener = tokio::net::TcpListener::bind(config.server.admin_addr)
        .await
        .with_context(|| {
            format!(
                "server.admin_addr: cannot listen on {}",
                config.server.admin_addr
            )
        })?;
    let admin_addr = admin_listener.local_addr()?;
    let mut admin = crate::admin::router(authorizer.clone());
    let (exited_tx, exited) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    let mut exchange_addr = None;
    if config.exchange.enabled {
        let exchanger = Exchanger::new(config, authorizer.clone()).map_err(|e| {
            let file = config
                .exchange
                .key_file
                .as_ref()
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default();
            anyhow::anyhow!("exchange.key_file{file}: {e}")
        })?;
        let exchanger = Arc::new(exchanger);
        if exchanger.keys().key_file().is_some() {
            background.push(tokio::spawn(watch_signing_key(
                exchanger.keys().clone(),
                shutdown_rx.clone(),
            )));
        }
        let routes = crate::exchange::http::router(exchanger);
        match config.exchange.addr {
            None => admin = admin.merge(routes),
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("exchange.addr: cannot listen on {addr}"))?;
                exchange_addr = Some(listener.local_addr()?);
                tasks.push(spawn_http(
                    "exchange",
                    listener,
                    routes,
                    shutdown_rx.clone(),
                    exited_tx.clone(),
                ));
            }
        }
        tracing::info!(
            exchange.issuer = %config.exchange.issuer,
            exchange.addr = %exchange_addr.map_or_else(|| admin_addr.to_string(), |a| a.to_string()),
            "Serving token exchange"
        );
    }
    let admin_task = spawn_http(
        "admin",
        admin_listener,
        admin,
        shutdown_rx.clone(),
        exited_tx.clone(),
    );

    // Each serving thread gets its own router over the one shared authorizer.
    let make_router = {
        let authorizer = authorizer.clone();
        move || {
            tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .add_service(AuthorizationServer::new(AuthzService::new(
                    authorizer.clone(),
                )))
        }
    };
    let workers = crate::serving::count(config.server.worker_threads);
    let grpc_stop = shutdown_rx.clone();
    let (grpc_addr, grpc_task) = match &config.server.grpc_addr {
        ListenAddr::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("server.grpc_addr: cannot listen on {addr}"))?;
            let bound = listener.local_addr()?;
            let incoming = tcp_incoming(listener);
            let task = spawn_server(
                "gRPC",
                crate::serving::serve(workers, incoming, make_router, grpc_stop),
                exited_tx,
            );
            (ListenAddr::Tcp(bound), task)
        }
        ListenAddr::Unix(path) => {
            // A socket file left by a previous run would make bind fail.
            if path.exists() {
                std::fs::remove_file(path).with_context(|| {
                    format!(
                        "server.grpc_addr: cannot remove stale socket {}",
                        path.display()
                    )
                })?;
            }
            let listener = tokio::net::UnixListener::bind(path).with_context(|| {
                format!("server.grpc_addr: cannot listen on unix:{}", path.display())
            })?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let task = spawn_server(
                "gRPC",
                crate::serving::serve(workers, incoming, make_router, grpc_stop),
                exited_tx,
            );
            (ListenAddr::Unix(path.clone()), task)
        }
    };
    tracing::info!(
        grpc.addr = %grpc_addr,
        admin.addr = %admin_addr,
        grpc.workers = workers,
        "Serving ext_authz"
    );
    tasks.extend([grpc_task, admin_task]);
    Ok(Running {
        grpc_addr,
        admin_addr,
        exchange_addr,
        authorizer,
        shutdown,
        draining,
        tasks,
        background,
        exited,
    })
}

/// Runs until SIGTERM or SIGINT; then reports not ready and answers on for
/// `server.shutdown_delay`, and drains for at most `server.shutdown_grace`.
/// A server that ends on its own stops the process with an error, so that the orchestrator
/// restarts it rather than leave it half serving.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut running = start(&config).await?;
    tokio::select! {
        _ = wait_for_signal() => {}
        why = running.ended() => {
            tracing::error!(reason = %why, "A server ended unasked; stopping");
            let _ = running.stop(config.server.shutdown_grace.0).await;
            anyhow::bail!("{why}");
        }
    }
    tracing::info!(
        delay = ?config.server.shutdown_delay.0,
        "Shutting down: not ready from now on; still answering until the delay is over"
    );
    running
        .drain(
            config.server.shutdown_delay.0,
            config.server.shutdown_grace.0,
        )
        .await
}

// === impl Running ===

impl Running {
    /// Waits until a server ends, and says which and why.
    pub async fn ended(&mut self) -> String {
        match self.exited.recv().await {
            Some(why) => why,
            // Every server task is gone without a word: cannot happen (each reports).
            None => std::future::pending().await,
        }
    }

    /// Shuts down as a pod should: `/readyz` answers 503 and gRPC health NOT_SERVING at once,
    /// while checks are still answered for `delay` (Envoy and the Kubernetes endpoints move
    /// away meanwhile); then `stop`.
    pub async fn drain(self, delay: Duration, grace: Duration) -> anyhow::Result<()> {
        self.authorizer.readiness().set_draining();
        let _ = self.draining.send(true);
        tokio::time::sleep(delay).await;
        tracing::info!("Draining in-flight requests");
        self.stop(grace).await
    }

    /// Stops accepting, lets in-flight requests finish within `grace`, and returns.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        self.authorizer.readiness().set_draining();
        let _ = self.draining.send(true);
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(grace, async {
            let mut result = Ok(());
            for task in self.tasks {
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => result = Err(e),
                    Err(e) => result = Err(anyhow::anyhow!("server task failed: {e}")),
                }
            }
            result
        })
        .await;
        for task in &self.background {
            task.abort();
        }
        if let ListenAddr::Unix(path) = &self.grpc_addr {
            let _ = std::fs::remove_file(path);
        }
        match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("Shutdown grace period over; closing remaining connections");
                Ok(())
            }
        }
    }
}

/// First load with backoff until it succeeds, then a refresh every `jwks_ttl`.
async fn refresh_keys(issuer: Arc<IssuerKeys>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let ok = issuer.refresh(true).await;
        let wait = match (ok, issuer.loaded()) {
            (true, _) => {
                backoff = Duration::from_millis(250);
                issuer.ttl()
            }
            // Never loaded: retry soon, backing off to 30s.
            (false, false) => {
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                wait
            }
            // Keys known (stale-on-error): retry sooner than the TTL, but not in a hot loop.
            (false, true) => issuer.ttl().min(Duration::from_secs(30)),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Watches the directory of `mint.key_file` (a mounted Secret swaps a symlink): a new key
/// signs at once, the previous one stays published. A file that does not hold a usable key is
/// logged once and changes nothing.
async fn watch_signing_key(keys: Arc<KeyRing>, mut stop: watch::Receiver<bool>) {
    let Some(file) = keys.key_file().map(Path::to_path_buf) else {
        return;
    };
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let what = format!("{}.key_file", keys.section());
    let mut changes = DirWatch::new(&dir, false, &what);
    let mut last_error: Option<String> = None;
    while changes.changed(&mut stop).await {
        let ring = keys.clone();
        match tokio::task::spawn_blocking(move || ring.reload()).await {
            Ok(Ok(_)) => last_error = None,
            Ok(Err(e)) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::error!(
                        key.section = keys.section(),
                        key.file = %file.display(),
                        error = %message,
                        "Cannot load the new signing key; still signing with the current one"
                    );
                    last_error = Some(message);
                }
            }
            Err(e) => tracing::error!(error = %e, "Key reload task failed"),
        }
    }
}

/// Flips the gRPC health status to SERVING once ready; NOT_SERVING again as soon as
/// shutdown begins (`stop` is the draining signal).
async fn report_ready(
    authorizer: Arc<Authorizer>,
    health: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    while !authorizer.is_ready() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    set_health(&health, ServingStatus::Serving).await;
    let _ = stop.wait_for(|s| *s).await;
    set_health(&health, ServingStatus::NotServing).await;
}

/// The Authorization service and the server as a whole ("") share one status.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status(AUTHZ_SERVICE, status).await;
    health.set_service_status("", status).await;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot listen for SIGTERM; only SIGINT stops");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests;
