//! Decision logs in OPA's shape: one JSON object per decision (`decision_id`, `timestamp`,
//! `path`, `input`, `result`, `bundles`, `metrics`, `labels`, `erased`), written off the
//! request path to stdout, a file, and/or an HTTP endpoint that speaks OPA's decision-log
//! upload (POST of a gzip-compressed JSON array).
//!
//! A Check only hands its entry to a bounded queue (`try_send`); one task masks, serializes
//! and writes in batches. A full queue drops the entry and counts it: a slow or dead sink
//! never holds a request, and memory stays bounded. An upload that fails is retried with
//! backoff (1 s doubling to 30 s) while new entries queue, then drop.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use regorus::Value;
use serde_json::{Map, Value as Json, json};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use crate::config::DecisionLogConfig;

/// Always masked, whatever the configuration adds: where a token or a credential can be in
/// the input document.
pub const DEFAULT_MASKS: &[&str] = &[
    "/input/attributes/request/http/headers/authorization",
    "/input/attributes/request/http/headers/cookie",
    "/input/attributes/request/http/headers/proxy-authorization",
    "/input/attributes/request/http/headers/txn-token",
    "/input/attributes/request/http/headerMap",
];

/// One decision, as the Check made it; masked and serialized by the writer task.
#[derive(Debug)]
pub struct Entry {
    pub decision_id: String,
    pub timestamp: SystemTime,
    pub input: Option<Value>,
    pub result: Option<Value>,
    pub revision: Option<Arc<str>>,
    /// The rule that decided (`data.envoy.authz.allow`).
    pub query: Option<String>,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub status: u16,
    pub dry_run: bool,
    pub error: Option<String>,
    pub handler_ns: u64,
    pub cached: bool,
}

/// Counters of what became of entries.
#[derive(Debug, Default)]
pub struct Counts {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    /// Entries a sink could not take (a file write failed, an upload was refused for good).
    pub failed: AtomicU64,
    pub upload_failures: AtomicU64,
}

/// The handle a Check logs through.
#[derive(Debug)]
pub struct DecisionLog {
    tx: mpsc::Sender<Entry>,
    counts: Arc<Counts>,
}

impl DecisionLog {
    /// Starts the writer task (on the current runtime). `None` when no sink is configured.
    pub fn start(
        config: &DecisionLogConfig,
        bundle_name: String,
        extra_masks: Vec<String>,
    ) -> anyhow::Result<Option<DecisionLog>> {
        if !config.enabled() {
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let counts = Arc::new(Counts::default());
        let http = match &config.url {
            Some(url) => Some(Upload {
                client: reqwest::Client::builder()
                    .timeout(config.timeout.0)
                    .build()?,
                url: url.clone(),
                token: config.bearer_token.as_ref().map(|t| t.expose().to_string()),
            }),
            None => None,
        };
        let mut masks: Vec<Vec<String>> = DEFAULT_MASKS
            .iter()
            .map(|m| m.to_string())
            .chain(extra_masks)
            .chain(config.mask.iter().cloned())
            .map(|m| pointer(&m))
            .collect();
        masks.sort();
        masks.dedup();
        let writer = Writer {
            console: config.console,
            file: config.file.clone(),
            http,
            masks,
            bundle_name,
            labels: json!({
                "app": "onbehalf",
                "id": crate::ids::uuid_v4(),
                "version": env!("CARGO_PKG_VERSION"),
            }),
            max_batch: config.max_batch.max(1),
            counts: counts.clone(),
        };
        // Its own thread and runtime: a stalled stdout, file or compression never holds the
        // threads that serve checks, probes or the admin port.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || runtime.block_on(writer.run(rx)))?;
        Ok(Some(DecisionLog { tx, counts }))
    }

    /// Queues `entry`, or drops and counts it when the queue is full. Never waits.
    pub fn log(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The counts for `/metrics`.
    pub fn scrape(&self) -> crate::telemetry::DecisionLogCounts {
        let c = &self.counts;
        crate::telemetry::DecisionLogCounts {
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            upload_failures: c.upload_failures.load(Ordering::Relaxed),
        }
    }
}

struct Upload {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

struct Writer {
    console: bool,
    file: Option<PathBuf>,
    http: Option<Upload>,
    masks: Vec<Vec<String>>,
    bundle_name: String,
    labels: Json,
    max_batch: usize,
    counts: Arc<Counts>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Entry>) {
        let mut file = match &self.file {
            Some(path) => match tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
            {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "Cannot open the decision log file");
                    None
                }
            },
            None => None,
        };
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.push(self.render(first));
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(entry) => batch.push(self.render(entry)),
                    Err(_) => break,
                }
            }
            if self.console {
                let mut out = std::io::stdout().lock();
                for entry in &batch {
                    let _ = writeln!(out, "{entry}");
                }
                let _ = out.flush();
            }
            let mut taken = self.file.is_none() || file.is_some();
            if let Some(f) = file.as_mut() {
                let mut lines = Vec::new();
                for entry in &batch {
                    lines.extend_from_slice(entry.to_string().as_bytes());
                    lines.push(b'\n');
                }
                if let Err(e) = f.write_all(&lines).await {
                    tracing::warn!(error = %e, "Writing the decision log file failed");
                    taken = false;
                }
            }
            if let Some(http) = &self.http {
                taken &= self.upload(http, &batch).await;
            }
            let counter = match taken {
                true => &self.counts.written,
                false => &self.counts.failed,
            };
            counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    }

    /// POSTs `batch` as a gzip-compressed JSON array, as OPA's decision-log plugin does,
    /// retrying with backoff while the endpoint is unreachable or answers 5xx, 408 or 429.
    /// Any other refusal drops the batch: it would be refused again. Whether it was taken.
    async fn upload(&self, http: &Upload, batch: &[Json]) -> bool {
        let body = match gzip(&Json::Array(batch.to_vec())) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "Compressing decision logs failed");
                return false;
            }
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut request = http
                .client
                .post(&http.url)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(body.clone());
            if let Some(token) = &http.token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(resp) if resp.status().is_success() => return true,
                Ok(resp)
                    if resp.status().is_client_error()
                        && !matches!(resp.status().as_u16(), 408 | 429) =>
                {
                    self.counts.upload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(status = %resp.status(), entries = batch.len(), "Decision log upload refused; the batch is dropped");
                    return false;
                }
                Ok(resp) => {
                    tracing::warn!(status = %resp.status(), "Decision log upload refused; retrying")
                }
                Err(e) => tracing::warn!(error = %e, "Decision log upload failed; retrying"),
            }
            self.counts.upload_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// The entry in OPA's decision-log shape, masked.
    fn render(&self, e: Entry) -> Json {
        let mut entry = Map::new();
        entry.insert("decision_id".into(), e.decision_id.into());
        entry.insert("labels".into(), self.labels.clone());
        if let Some(query) = &e.query {
            let path = query
                .strip_prefix("data.")
                .unwrap_or(query)
                .replace('.', "/");
            entry.insert("path".into(), path.into());
        }
        if let Some(input) = &e.input {
            entry.insert(
                "input".into(),
                serde_json::to_value(input).unwrap_or(Json::Null),
            );
        }
        if let Some(result) = &e.result {
            entry.insert(
                "result".into(),
                serde_json::to_value(result).unwrap_or(Json::Null),
            );
        }
        if let Some(revision) = &e.revision {
            entry.insert(
                "bundles".into(),
                json!({ &self.bundle_name: {"revision": &**revision} }),
            );
        }
        if let Some(error) = e.error {
            entry.insert("error".into(), json!({ "message": error }));
        }
        entry.insert(
            "metrics".into(),
            json!({"timer_server_handler_ns": e.handler_ns}),
        );
        let since = e
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        entry.insert(
            "timestamp".into(),
            crate::input::rfc3339_utc(
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                i32::try_from(since.subsec_nanos()).unwrap_or(0),
            )
            .into(),
        );
        entry.insert(
            "onbehalf".into(),
            json!({
                "decision": e.decision,
                "reason": e.reason,
                "status": e.status,
                "dry_run": e.dry_run,
                "cached": e.cached,
            }),
        );
        let mut entry = Json::Object(entry);
        let mut erased = Vec::new();
        for mask in &self.masks {
            if erase(&mut entry, mask) {
                erased.push(Json::from(format!("/{}", mask.join("/"))));
            }
        }
        if !erased.is_empty()
            && let Json::Object(m) = &mut entry
        {
            m.insert("erased".into(), Json::Array(erased));
        }
        entry
    }
}

/// A JSON pointer's tokens (`/a/b~1c` is `["a", "b/c"]`).
fn pointer(text: &str) -> Vec<String> {
    text.strip_prefix('/')
        .unwrap_or(text)
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Removes what `path` points at in `value`; whether there was something.
fn erase(value: &mut Json, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for token in parents {
        node = match node {
            Json::Object(m) => match m.get_mut(token) {
                Some(next) => next,
                None => return false,
            },
            Json::Array(a) => match token.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Json::Object(m) => m.remove(last).is_some(),
        _ => false,
    }
}

fn gzip(value: &Json) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    serde_json::to_writer(&mut encoder, value)?;
    encoder.finish()
}

#[cfg(test)]
mod tests;
