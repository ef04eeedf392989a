//! `pub` and `sub` on tokio: a current-thread runtime running [`crate::pubsub`] with
//! `surgemq_tokio::Client`.

use std::time::{Duration, Instant};

pub(crate) use surgemq_tokio::{AsyncClientError, Client, ClientOptions, Messages};

use crate::app::Failure;

/// The runtime's name.
pub(super) const NAME: &str = "tokio";

/// `--version`.
pub(super) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (runtime: tokio)");

/// Runs `work` to completion on a fresh current-thread runtime.
pub(super) fn block_on<T>(work: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the tokio runtime: {e}")))?;
    runtime.block_on(work)
}

/// Waits `duration`.
pub(crate) async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// `work`'s output, or `None` if `at` comes first.
pub(crate) async fn timeout_at<T>(at: Instant, work: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(at.into(), work).await.ok()
}
