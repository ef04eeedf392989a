//! The broker on async-std (surgemq-async-std). async-std is discontinued upstream; this
//! build exists for users already on it.

use crate::config::Settings;

pub(super) const NAME: &str = "async-std";
pub(super) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (runtime: async-std)");

pub(super) fn serve(settings: Settings) -> Result<(), String> {
    async_std::task::block_on(serve_on!(surgemq_async_std, settings))
}
