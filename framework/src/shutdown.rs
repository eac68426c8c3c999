//! A shutdown signal passed into every long-running part (never a global).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Cloneable; triggering any clone stops everything that holds one.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    triggered: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    /// A signal that fires only when [`Shutdown::trigger`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal that also fires on SIGTERM or ctrl-c (SIGINT). Needs a Tokio runtime.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            trigger.trigger();
        });
        shutdown
    }

    /// Fires the signal.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::Release);
        self.inner.notify.notify_waiters();
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::Acquire)
    }

    /// Resolves once the signal has fired.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_trigger() {
        let shutdown = Shutdown::new();
        let waiter = shutdown.clone();
        let task = tokio::spawn(async move { waiter.wait().await });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        task.await.expect("waiter finished");
        assert!(shutdown.is_triggered());
        shutdown.wait().await;
    }
}
