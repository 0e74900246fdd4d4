//! gRPC serving threads: one per core, each with a single-threaded tokio runtime.
//!
//! A connection is served start to end by one thread, as Envoy's workers serve theirs: its
//! requests, the work they need and its responses stay on one core, the responses of a burst
//! of finished requests leave in one write, and no request wakes another thread. The accept
//! loop hands connections out round-robin; Envoy opens one ext_authz connection per worker of
//! its own, so the load spreads as the connections do.

use std::io;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, Router};

/// A connection that can move from the runtime that accepted it to a worker's runtime.
pub trait Handoff: AsyncRead + AsyncWrite + Connected + Unpin + Send + Sized + 'static {
    type Std: Send + 'static;
    fn into_std(self) -> io::Result<Self::Std>;
    fn from_std(std: Self::Std) -> io::Result<Self>;
}

impl Handoff for tokio::net::TcpStream {
    type Std = std::net::TcpStream;
    fn into_std(self) -> io::Result<Self::Std> {
        tokio::net::TcpStream::into_std(self)
    }
    fn from_std(std: Self::Std) -> io::Result<Self> {
        tokio::net::TcpStream::from_std(std)
    }
}

impl Handoff for tokio::net::UnixStream {
    type Std = std::os::unix::net::UnixStream;
    fn into_std(self) -> io::Result<Self::Std> {
        tokio::net::UnixStream::into_std(self)
    }
    fn from_std(std: Self::Std) -> io::Result<Self> {
        tokio::net::UnixStream::from_std(std)
    }
}

/// The number of serving threads for `configured` (0: one per core).
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// Serves the connections of `incoming` on `workers` threads, each with its own `router`
/// (from `make`), until `stop` turns true; then every worker drains its connections, and this
/// returns when all have.
pub async fn serve<S, I>(
    workers: usize,
    mut incoming: I,
    make: impl Fn() -> Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    S: Handoff,
    I: Stream<Item = io::Result<S>> + Unpin,
{
    let mut queues = Vec::new();
    let mut done = Vec::new();
    for i in 0..workers.max(1) {
        let (queue, conns) = mpsc::unbounded_channel::<S::Std>();
        let (finished, result) = oneshot::channel();
        let router = make();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("onbehalf-serving-{i}"))
            .spawn(move || {
                let _ = finished.send(worker::<S>(router, conns, stop));
            })
            .context("cannot start a gRPC serving thread")?;
        queues.push(queue);
        done.push(result);
    }

    let mut next = 0;
    loop {
        let conn = tokio::select! {
            conn = incoming.next() => conn,
            _ = stop.wait_for(|s| *s) => break,
        };
        match conn.map(|c| c.and_then(S::into_std)) {
            Some(Ok(conn)) => {
                if hand_out(&queues, &mut next, conn).is_err() {
                    anyhow::bail!("every gRPC serving thread has ended");
                }
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(error = %e, "Cannot accept a gRPC connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => break,
        }
    }
    drop(queues);

    let mut result = Ok(());
    for worker in done {
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(anyhow::anyhow!("a gRPC serving thread panicked")),
        }
    }
    result
}

/// Gives `conn` to the worker after the last one used; one whose thread has ended is passed
/// over. Gives it back when every worker has ended.
fn hand_out<C>(queues: &[mpsc::UnboundedSender<C>], next: &mut usize, conn: C) -> Result<(), C> {
    let mut conn = conn;
    for _ in 0..queues.len() {
        let worker = *next;
        *next = (worker + 1) % queues.len();
        let Some(queue) = queues.get(worker) else {
            break;
        };
        match queue.send(conn) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::SendError(back)) => {
                tracing::error!(worker, "A gRPC serving thread has ended; passing it over");
                conn = back;
            }
        }
    }
    Err(conn)
}

/// One serving thread: a current-thread runtime serving the connections it is handed.
fn worker<S: Handoff>(
    router: Router,
    conns: mpsc::UnboundedReceiver<S::Std>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a gRPC worker's runtime")?;
    runtime.block_on(async move {
        let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(conns).map(S::from_std);
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .context("gRPC server failed")
    })
}

#[cfg(test)]
mod tests;
