//! `pub` and `sub` on smol: `smol::block_on` running [`crate::pubsub`] with
//! `surgemq_smol::Client`.

use std::time::{Duration, Instant};

pub(crate) use surgemq_smol::{AsyncClientError, Client, ClientOptions, Messages};

use crate::app::Failure;

/// The runtime's name.
pub(super) const NAME: &str = "smol";

/// `--version`.
pub(super) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (runtime: smol)");

/// Runs `work` to completion on the current thread (the client's tasks run on smol's global
/// executor).
pub(super) fn block_on<T>(work: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    smol::block_on(work)
}

/// Waits `duration`.
pub(crate) async fn sleep(duration: Duration) {
    smol::Timer::after(duration).await;
}

/// `work`'s output, or `None` if `at` comes first.
pub(crate) async fn timeout_at<T>(at: Instant, work: impl Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(work.await) }, async {
        smol::Timer::at(at).await;
        None
    })
    .await
}
