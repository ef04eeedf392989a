//! `pub` and `sub` on async-std: not available yet. `surgemq-async-std` has the broker server but no
//! async client; once it has one with `surgemq_tokio::Client`'s API, this module runs
//! `crate::pubsub` on it. Until then these fail with a message instead of pretending (and
//! `bench`, which is tokio-only, still works).

use crate::app::Failure;
use crate::cli::{PubArgs, SubArgs};

/// The runtime's name.
pub(super) const NAME: &str = "async-std";

/// `--version`.
pub(super) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (runtime: async-std, no pub/sub yet)"
);

fn unavailable() -> Failure {
    Failure::failed(
        "pub and sub need an async client on async-std, which surgemq-async-std does not have yet; \
         rebuild with the tokio feature (the default)",
    )
}

/// Fails: no async-std client yet.
pub(super) fn publish(_args: PubArgs) -> Result<(), Failure> {
    Err(unavailable())
}

/// Fails: no async-std client yet.
pub(super) fn subscribe(_args: SubArgs) -> Result<(), Failure> {
    Err(unavailable())
}
