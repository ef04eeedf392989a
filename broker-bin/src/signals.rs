//! SIGINT and SIGTERM on a plain thread (signal-hook), so the same code serves every async
//! runtime: the first signal starts a graceful shutdown, a second one exits at once.

/// Calls `shutdown` on the first SIGINT or SIGTERM; exits the process on the second.
#[cfg(unix)]
pub fn on_termination(shutdown: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("surgemq-signals".into())
        .spawn(move || {
            let mut shutdown = Some(shutdown);
            for signal in signals.forever() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                match shutdown.take() {
                    Some(shutdown) => {
                        tracing::info!("{name}: shutting down (send it again to exit at once)");
                        shutdown();
                    }
                    None => {
                        tracing::warn!("{name} again: exiting without finishing the shutdown");
                        std::process::exit(128 + signal);
                    }
                }
            }
        })?;
    Ok(())
}

/// Not on Unix: no signal handling; the process ends the usual way.
#[cfg(not(unix))]
pub fn on_termination(_shutdown: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    tracing::debug!("no SIGINT/SIGTERM handling on this platform");
    Ok(())
}
