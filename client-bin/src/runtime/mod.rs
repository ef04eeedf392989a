//! The async runtime `pub` and `sub` run on, chosen by cargo feature. With several enabled, the
//! first of `tokio`, `smol`, `async-std` wins (like the broker binary), so `--all-features`
//! still builds. Each runtime module has the same items: `NAME`, `VERSION`, `block_on`, `sleep`,
//! `timeout_at`, and that runtime's `Client`, `ClientOptions`, `Messages` and
//! `AsyncClientError` (the three clients share one API), so [`crate::pubsub`] is one code for
//! all. `bench` is tokio-only whatever is selected here.

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
compile_error!("surgemq-client needs a runtime: enable the feature tokio, smol or async-std");

pub(crate) use selected::{AsyncClientError, Client, ClientOptions, Messages, sleep, timeout_at};

/// The runtime's name.
pub const NAME: &str = selected::NAME;

/// The version string `--version` prints: the crate's version and the runtime.
pub const VERSION: &str = selected::VERSION;

/// Runs `pub` on the selected runtime.
pub fn publish(args: crate::cli::PubArgs) -> Result<(), crate::app::Failure> {
    selected::block_on(crate::pubsub::publish(args))
}

/// Runs `sub` on the selected runtime.
pub fn subscribe(args: crate::cli::SubArgs) -> Result<(), crate::app::Failure> {
    selected::block_on(crate::pubsub::subscribe(args))
}
