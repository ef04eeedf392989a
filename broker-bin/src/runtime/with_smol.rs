//! The broker on smol (surgemq-smol): tasks on smol's global executor, whose thread count
//! the `SMOL_THREADS` environment variable sets (smol's default: 1).

use crate::config::Settings;

pub(super) const NAME: &str = "smol";
pub(super) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (runtime: smol)");

pub(super) fn serve(settings: Settings) -> Result<(), String> {
    smol::block_on(serve_on!(surgemq_smol, settings))
}
