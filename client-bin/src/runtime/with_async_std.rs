//! `pub` and `sub` on async-std: `async_std::task::block_on` running [`crate::pubsub`] with
//! `surgemq_async_std::Client`.

use std::time::{Duration, Instant};

pub(crate) use surgemq_async_std::{AsyncClientError, Client, ClientOptions, Messages};

use crate::app::Failure;

/// The runtime's name.
pub(super) const NAME: &str = "async-std";

/// `--version`.
pub(super) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (runtime: async-std)");

/// Runs `work` to completion on the current thread (the client's tasks run on async-std's
/// executor).
pub(super) fn block_on<T>(work: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    async_std::task::block_on(work)
}

/// Waits `duration`.
pub(crate) async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await;
}

/// `work`'s output, or `None` if `at` comes first.
pub(crate) async fn timeout_at<T>(at: Instant, work: impl Future<Output = T>) -> Option<T> {
    let left = at.saturating_duration_since(Instant::now());
    async_std::future::timeout(left, work).await.ok()
}
