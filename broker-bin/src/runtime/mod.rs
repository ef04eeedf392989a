//! The async runtime the broker runs on, chosen by cargo feature. With several enabled, the
//! first of `tokio`, `smol`, `async-std` wins, so `--all-features` still builds one binary;
//! `--no-default-features --features smol` (or `async-std`) picks another. Each runtime
//! module has the same three items: `NAME`, `VERSION` and `serve(Settings)`, and all of them
//! run the same `serve_on!` body: the adapters share one API.

/// The body shared by every runtime: adapt the listeners, bind, log, install the signal
/// handler, serve until shut down. `$adapter` is the adapter crate (same API in each).
macro_rules! serve_on {
    ($adapter:ident, $settings:expr) => {
        async move {
            let $crate::config::Settings {
                broker,
                listeners,
                authenticator,
                auth_summary,
                persistence,
            } = $settings;
            let adapter_listeners = listeners
                .iter()
                .map(|listener| {
                    let adapted = match &listener.tls {
                        None => $adapter::Listener::tcp(listener.bind),
                        Some(tls) => $adapter::Listener::tls(listener.bind, tls.clone()),
                    };
                    if listener.identity_as_username {
                        adapted.with_identity_as_username()
                    } else {
                        adapted
                    }
                })
                .collect();
            let auth_mode = broker.auth;
            let mut server = $adapter::Server::new(broker, adapter_listeners);
            if let Some(authenticator) = authenticator {
                server = server.with_authenticator(authenticator);
            }
            tracing::info!("persistence: {}", persistence.describe());
            if let Some(store) = $crate::store::setup(&persistence)? {
                server = server.with_store(store);
            }
            let bound = server
                .bind()
                .await
                .map_err(|e| $crate::app::bind_error(&listeners, &e))?;
            $crate::app::log_start(&listeners, &bound.local_addrs(), auth_mode, &auth_summary);
            let handle = bound.shutdown_handle();
            $crate::signals::on_termination(move || handle.shutdown())
                .map_err(|e| format!("cannot handle signals: {e}"))?;
            bound
                .run()
                .await
                .map_err(|e| format!("the broker failed: {e}"))?;
            tracing::info!("shut down");
            Ok::<(), String>(())
        }
    };
}

#[cfg(feature = "tokio")]
mod with_tokio;
#[cfg(feature = "tokio")]
use self::with_tokio as selected;

#[cfg(all(feature = "smol", not(feature = "tokio")))]
mod with_smol;
#[cfg(all(feature = "smol", not(feature = "tokio")))]
use self::with_smol as selected;

#[cfg(all(feature = "async-std", not(any(feature = "tokio", feature = "smol"))))]
mod with_async_std;
#[cfg(all(feature = "async-std", not(any(feature = "tokio", feature = "smol"))))]
use self::with_async_std as selected;

#[cfg(not(any(feature = "tokio", feature = "smol", feature = "async-std")))]
compile_error!("surgemq-broker needs a runtime feature: `tokio` (default), `smol` or `async-std`");

/// The runtime this binary was built with.
pub const NAME: &str = selected::NAME;

/// `--version` text: the crate version and the runtime.
pub const VERSION: &str = selected::VERSION;

/// Runs the broker until SIGINT/SIGTERM; errors are for the user (which address failed...).
pub fn serve(settings: crate::config::Settings) -> Result<(), String> {
    selected::serve(settings)
}
