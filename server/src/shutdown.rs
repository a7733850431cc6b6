//! How a server process stops: the OS signal that starts it, and the stop
//! signal every long-lived task of the process watches.

use tokio::sync::watch;

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Tells every [`Stopping`] made from it that the process is stopping.
pub struct Stop(watch::Sender<bool>);

/// Watches for the process stopping; cheap to clone, one per task.
#[derive(Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Stop {
    pub fn new() -> (Self, Stopping) {
        let (tx, rx) = watch::channel(false);
        (Self(tx), Stopping(rx))
    }

    /// Starts stopping; every watcher's [`Stopping::wait`] resolves.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Stopping {
    /// Resolves once stopping has started (at once if it already has, or if
    /// the [`Stop`] is gone).
    pub async fn wait(&mut self) {
        // The guard `wait_for` returns is not Send: drop it here.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_watcher_sees_the_stop_even_if_it_looks_later() {
        let (stop, mut first) = Stop::new();
        let mut later = first.clone();
        assert!(!first.is_stopping());
        stop.stop();
        first.wait().await;
        later.wait().await;
        assert!(later.is_stopping());
    }
}
