//! How every rooms server process checks its flags and stops: SIGTERM
//! (Kubernetes) or Ctrl-C.

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
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

/// `--check-config`: reports whether the flags make a valid configuration
/// and exits (0 valid, 2 invalid, as for a flag clap refuses).
pub fn check_config<C, E: std::fmt::Display>(binary: &str, config: Result<C, E>) -> ! {
    match config {
        Ok(_) => {
            println!("{binary}: configuration is valid");
            std::process::exit(0)
        }
        Err(error) => {
            eprintln!("{binary}: invalid configuration: {error}");
            std::process::exit(2)
        }
    }
}
