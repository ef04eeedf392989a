//! `pub` and `sub` on tokio: a current-thread runtime running [`crate::pubsub`] with
//! `surgemq_tokio::Client`.

use crate::app::Failure;
use crate::cli::{PubArgs, SubArgs};

/// The runtime's name.
pub(super) const NAME: &str = "tokio";

/// `--version`.
pub(super) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (runtime: tokio)");

fn block_on<T>(work: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the tokio runtime: {e}")))?;
    runtime.block_on(work)
}

/// Runs `pub`.
pub(super) fn publish(args: PubArgs) -> Result<(), Failure> {
    block_on(crate::pubsub::publish(args))
}

/// Runs `sub`.
pub(super) fn subscribe(args: SubArgs) -> Result<(), Failure> {
    block_on(crate::pubsub::subscribe(args))
}
