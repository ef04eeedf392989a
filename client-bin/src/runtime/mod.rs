//! The async runtime `pub` and `sub` run on, chosen by cargo feature. With several enabled, the
//! first of `tokio`, `smol`, `async-std` wins (like the broker binary), so `--all-features`
//! still builds. Each runtime module has the same items: `NAME`, `VERSION`, `publish` and
//! `subscribe`.
//!
//! Only tokio has an async client today (`surgemq_tokio::Client`). The smol and async-std
//! modules are wired but say so instead of pretending: their `publish` / `subscribe` fail with
//! a message naming the missing client. `bench` is tokio-only whatever is selected here.

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

/// The runtime's name.
pub const NAME: &str = selected::NAME;

/// The version string `--version` prints: the crate's version and the runtime.
pub const VERSION: &str = selected::VERSION;

/// Runs `pub` on the selected runtime.
pub fn publish(args: crate::cli::PubArgs) -> Result<(), crate::app::Failure> {
    selected::publish(args)
}

/// Runs `sub` on the selected runtime.
pub fn subscribe(args: crate::cli::SubArgs) -> Result<(), crate::app::Failure> {
    selected::subscribe(args)
}
