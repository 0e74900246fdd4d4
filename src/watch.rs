//! Debounced change notifications for a watched directory, with a periodic rescan in case a
//! file system drops events. Kubernetes ConfigMaps and Secrets swap a `..data` symlink, so
//! callers watch the directory that holds their files, not the files.

use std::path::Path;
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::{mpsc, watch};

/// Quiet time after a file event before reloading: a ConfigMap update or an editor's save is
/// several events in quick succession.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Files are also re-read this often; callers skip unchanged content.
pub const RESCAN: Duration = Duration::from_secs(30);

/// Changes below one directory.
pub struct DirWatch {
    /// Dropping the watcher stops the events; `None` when watching failed (rescans only).
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::Receiver<()>,
}

// === impl DirWatch ===

impl DirWatch {
    /// Watches `dir`; when that fails (`what` names the watcher in the log), the rescan
    /// alone notices changes.
    pub fn new(dir: &Path, recursive: bool, what: &str) -> DirWatch {
        let (tx, events) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reading the files (our own reloads included) is not a change.
            let change = event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_)));
            if change {
                // A full channel already means "reload soon".
                let _ = tx.try_send(());
            }
        });
        let mode = match recursive {
            true => notify::RecursiveMode::Recursive,
            false => notify::RecursiveMode::NonRecursive,
        };
        let watcher = match watcher.and_then(|mut w| w.watch(dir, mode).map(|()| w)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    watch.what = what,
                    watch.dir = %dir.display(),
                    error = %e,
                    "Cannot watch for changes; re-reading every 30s instead"
                );
                None
            }
        };
        DirWatch {
            _watcher: watcher,
            events,
        }
    }

    /// Waits until something changed (once events have been quiet for a moment) or the
    /// rescan interval passed. `false` when `stop` turned true.
    pub async fn changed(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => return false,
            event = self.events.recv() => event,
            _ = tokio::time::sleep(RESCAN) => Some(()),
        };
        match event {
            // Debounce: wait until events stop for a moment.
            Some(()) => loop {
                let more = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return false,
                    more = tokio::time::timeout(DEBOUNCE, self.events.recv()) => more,
                };
                if !matches!(more, Ok(Some(()))) {
                    return true;
                }
            },
            // No watcher: the sender is gone; re-read on the rescan interval.
            None => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => false,
                    _ = tokio::time::sleep(RESCAN) => true,
                }
            }
        }
    }
}
