//! The shutdown signal: SIGTERM, which Kubernetes sends to stop a pod, or Ctrl-C.

/// Completes when the process is asked to stop.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "Cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "Cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!("Received Ctrl-C, shutting down"),
        () = terminate => tracing::info!("Received SIGTERM, shutting down"),
    }
}

/// Tells long-lived streams, such as change feeds, that the server is stopping, so that they
/// end and let the server drain. Clients resume from the last cursor they processed.
#[derive(Debug, Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

/// Sets [`Stopping`] for every stream that holds a copy.
#[derive(Debug)]
pub struct StopSignal(tokio::sync::watch::Sender<bool>);

/// Creates a stop signal and the receiver that streams watch.
pub fn stop_signal() -> (StopSignal, Stopping) {
    let (sender, receiver) = tokio::sync::watch::channel(false);
    (StopSignal(sender), Stopping(receiver))
}

impl StopSignal {
    /// Tells every stream to end.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Stopping {
    /// Returns true once the server is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when the server starts stopping, or at once if it already has.
    pub async fn wait(&mut self) {
        // An error means the signal was dropped, which also means the server is going away.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}
