//! Where bundles come from, and the tasks that keep the active policy current: a watched
//! directory (Kubernetes ConfigMaps included), a watched local `.tar.gz`, or an HTTP bundle
//! server polled with ETags.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::bundle::Limits;
use super::{Bundle, BundleError, PolicyStore};
use crate::config::{PolicyConfig, PolicySourceConfig, Secret};
use crate::watch::DirWatch;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
}

/// A configured bundle source.
#[derive(Debug, Clone)]
pub struct PolicySource {
    kind: PolicySourceConfig,
    limits: Limits,
    poll_interval: Duration,
    max_backoff: Duration,
    bearer_token: Option<Secret>,
    bearer_token_file: Option<PathBuf>,
    client: reqwest::Client,
}

enum Fetched {
    NotModified,
    Bundle {
        bundle: Bundle,
        etag: Option<String>,
    },
}

// === impl PolicySource ===

impl PolicySource {
    pub fn new(config: &PolicyConfig) -> Result<PolicySource, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.fetch_timeout.0)
            .timeout(config.fetch_timeout.0)
            .user_agent(concat!("onbehalf/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(PolicySource {
            kind: config.source(),
            limits: Limits {
                max_archive_bytes: config.max_bundle_bytes,
                max_content_bytes: config.max_content_bytes,
            },
            poll_interval: config.poll_interval.0,
            max_backoff: config.max_backoff.0,
            bearer_token: config.bearer_token.clone(),
            bearer_token_file: config.bearer_token_file.clone(),
            client,
        })
    }

    /// How the source is shown in logs and `/v1/status`.
    pub fn describe(&self) -> String {
        match &self.kind {
            PolicySourceConfig::Dir(p) => format!("dir:{}", p.display()),
            PolicySourceConfig::BundleFile(p) => format!("file:{}", p.display()),
            PolicySourceConfig::BundleUrl(u) => u.clone(),
        }
    }

    /// A short name: the directory, the file, or the URL's path.
    pub fn name(&self) -> String {
        match &self.kind {
            PolicySourceConfig::Dir(p) | PolicySourceConfig::BundleFile(p) => {
                p.display().to_string()
            }
            PolicySourceConfig::BundleUrl(u) => u.clone(),
        }
    }

    /// Reads the bundle once (start-up, `onbehalf check`).
    pub async fn load(&self) -> Result<Bundle, SourceError> {
        match self.fetch(None).await? {
            Fetched::Bundle { bundle, .. } => Ok(bundle),
            Fetched::NotModified => Err(SourceError::Fetch {
                url: self.describe(),
                message: "304 Not Modified without an ETag sent".into(),
            }),
        }
    }

    async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, SourceError> {
        match &self.kind {
            PolicySourceConfig::Dir(dir) => {
                let dir = dir.clone();
                let bundle = tokio::task::spawn_blocking(move || Bundle::from_dir(&dir))
                    .await
                    .map_err(|e| SourceError::Fetch {
                        url: self.describe(),
                        message: e.to_string(),
                    })??;
                Ok(Fetched::Bundle { bundle, etag: None })
            }
            PolicySourceConfig::BundleFile(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|source| BundleError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                let bundle = Bundle::from_tar_gz(&bytes, self.limits)?;
                Ok(Fetched::Bundle { bundle, etag: None })
            }
            PolicySourceConfig::BundleUrl(url) => self.fetch_http(url, etag).await,
        }
    }

    async fn fetch_http(&self, url: &str, etag: Option<&str>) -> Result<Fetched, SourceError> {
        let fail = |message: String| SourceError::Fetch {
            url: url.to_string(),
            message,
        };
        let mut req = self.client.get(url);
        if let Some(etag) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let token = match &self.bearer_token_file {
            Some(path) => Some(
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| fail(format!("reading {}: {e}", path.display())))?
                    .trim()
                    .to_string(),
            ),
            None => self.bearer_token.as_ref().map(|t| t.expose().to_string()),
        };
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let mut resp = req.send().await.map_err(|e| fail(e.to_string()))?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP status {}", resp.status())));
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let max = self.limits.max_archive_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(BundleError::TooLarge(max).into());
            }
            body.extend_from_slice(&chunk);
        }
        let limits = self.limits;
        let bundle = tokio::task::spawn_blocking(move || Bundle::from_tar_gz(&body, limits))
            .await
            .map_err(|e| fail(e.to_string()))??;
        Ok(Fetched::Bundle { bundle, etag })
    }

    /// Keeps `store` current until `stop` turns true: watches files, or polls the server.
    /// The first load is retried (with backoff) until it succeeds.
    pub async fn run(self, store: Arc<PolicyStore>, stop: watch::Receiver<bool>) {
        match self.kind.clone() {
            PolicySourceConfig::Dir(dir) => self.watch(store, stop, dir, true).await,
            PolicySourceConfig::BundleFile(file) => {
                let dir = file
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                self.watch(store, stop, dir, false).await
            }
            PolicySourceConfig::BundleUrl(url) => self.poll(store, stop, &url).await,
        }
    }

    /// Reads the source and activates what it holds, unless it is the content read last
    /// time (`seen`): a rescan of unchanged files neither re-activates nor re-reports.
    async fn reload(&self, store: &PolicyStore, seen: &mut Option<String>) {
        match self.fetch(None).await {
            Ok(Fetched::Bundle { bundle, .. }) => {
                let digest = bundle.digest();
                if seen.as_ref() == Some(&digest) {
                    return;
                }
                *seen = Some(digest);
                let _ = store.activate(bundle).await;
            }
            Ok(Fetched::NotModified) => {}
            Err(e) => {
                let message = e.to_string();
                if seen.as_ref() != Some(&message) {
                    store.record_failure(&e);
                    *seen = Some(message);
                }
            }
        }
    }

    async fn watch(
        &self,
        store: Arc<PolicyStore>,
        mut stop: watch::Receiver<bool>,
        dir: PathBuf,
        recursive: bool,
    ) {
        let mut changes = DirWatch::new(&dir, recursive, &self.describe());
        let mut seen = None;
        self.reload(&store, &mut seen).await;
        while changes.changed(&mut stop).await {
            self.reload(&store, &mut seen).await;
        }
    }

    async fn poll(&self, store: Arc<PolicyStore>, mut stop: watch::Receiver<bool>, url: &str) {
        let mut etag: Option<String> = None;
        let mut failures: u32 = 0;
        loop {
            let ok = match self.fetch_http(url, etag.as_deref()).await {
                Ok(Fetched::NotModified) => true,
                Ok(Fetched::Bundle { bundle, etag: new }) => match store.activate(bundle).await {
                    Ok(_) => {
                        // Remember the ETag only for a bundle that activated: a rejected one
                        // is fetched (and reported) again.
                        etag = new;
                        true
                    }
                    Err(_) => false,
                },
                Err(e) => {
                    store.record_failure(&e);
                    false
                }
            };
            let wait = match ok {
                true => {
                    failures = 0;
                    jitter(self.poll_interval)
                }
                false => {
                    failures = failures.saturating_add(1);
                    // Doubling from min(poll_interval, 1s), up to max_backoff.
                    let base = self.poll_interval.min(Duration::from_secs(1));
                    let exp = base.saturating_mul(1u32 << failures.min(16).saturating_sub(1));
                    jitter(exp.min(self.max_backoff))
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// `d` ±20%, so that sidecars started together do not poll together.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // 0.8 .. 1.2 from the clock's low bits: spread, not security.
    let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
    d.mul_f64(factor)
}
