//! The broker on tokio (surgemq-tokio), on a multi-threaded runtime.

use crate::config::Settings;

pub(super) const NAME: &str = "tokio";
pub(super) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (runtime: tokio)");

pub(super) fn serve(settings: Settings) -> Result<(), String> {
    let runtime = ::tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("surgemq")
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(serve_on!(surgemq_tokio, settings))
}
