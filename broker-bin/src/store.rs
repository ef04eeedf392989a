//! Persistence for the binary: opens the redb store in the data directory, restores from it,
//! and starts its group-commit worker ([`setup`]); the `surgemq store check | repair`
//! subcommands ([`run_command`]).
//!
//! The store itself (file format, group commit, check and repair) is
//! `surgemq_core::store::redb`; this module only chooses the directory and the commit policy
//! and reports to the user.

use std::path::{Path, PathBuf};
use std::time::Duration;

use surgemq_core::broker::Persistence;
use surgemq_core::store::StoreSetup;
use surgemq_core::store::redb::{self, CommitPolicy, FILE_NAME, OnClose, RedbStore};

use crate::cli::{StoreAction, StoreArgs};

/// The data directory when neither the config file nor `--data-dir` names one.
pub const DEFAULT_DATA_DIR: &str = "surgemq-data";

/// The commit interval of `periodic` mode when the config does not set one.
pub const DEFAULT_PERIODIC_INTERVAL: Duration = Duration::from_secs(1);

/// `[persistence] mode` and `--persistence` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Acknowledge QoS 1/2 messages only after their commit is on disk (group commit).
    Durable,
    /// Commit every `interval`; acknowledgements do not wait (a crash loses at most the last
    /// interval's acknowledged messages).
    Periodic,
    /// Nothing on disk: sessions and retained messages end with the process.
    Memory,
}

/// Where and how the broker persists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistenceSettings {
    /// The mode.
    pub mode: Mode,
    /// The directory holding the store file.
    pub data_dir: PathBuf,
    /// `periodic` mode's commit interval.
    pub interval: Duration,
}

impl Default for PersistenceSettings {
    fn default() -> Self {
        Self {
            mode: Mode::Durable,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            interval: DEFAULT_PERIODIC_INTERVAL,
        }
    }
}

impl PersistenceSettings {
    /// The core's setting for this mode.
    pub fn core_mode(&self) -> Persistence {
        match self.mode {
            Mode::Durable => Persistence::Durable,
            Mode::Periodic => Persistence::Periodic,
            Mode::Memory => Persistence::Off,
        }
    }

    /// The store file.
    pub fn file(&self) -> PathBuf {
        self.data_dir.join(FILE_NAME)
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Durable => format!(
                "durable in {} (QoS 1/2 acknowledged once on disk)",
                self.file().display()
            ),
            Mode::Periodic => format!(
                "periodic in {}, committed every {:?} (a crash loses at most that much)",
                self.file().display(),
                self.interval
            ),
            Mode::Memory => "memory only (nothing survives a restart)".to_owned(),
        }
    }
}

/// Opens the store, reads it, and returns what the adapter needs (`None` in memory mode).
/// Errors are for the user: they name the file and what to do.
pub fn setup(settings: &PersistenceSettings) -> Result<Option<StoreSetup>, String> {
    if settings.mode == Mode::Memory {
        return Ok(None);
    }
    let policy = match settings.mode {
        Mode::Periodic => CommitPolicy::Every(settings.interval),
        _ => CommitPolicy::Group,
    };
    let on_close: OnClose = Box::new(|stats, result| match result {
        Ok(()) => tracing::info!(
            commits = stats.commits,
            operations = stats.ops,
            "store closed"
        ),
        Err(error) => tracing::error!(%error, "the store's last commit failed"),
    });
    redb::setup(&settings.data_dir, policy, on_close)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// `surgemq store check | repair`: exit status 0 when the store is healthy (check) or was
/// repaired (repair).
pub fn run_command(args: &StoreArgs) -> Result<bool, String> {
    let dir: &Path = &args.data_dir;
    match args.action {
        StoreAction::Check => {
            let report = RedbStore::check(dir).map_err(|e| e.to_string())?;
            println!("{report}");
            Ok(report.is_healthy())
        }
        StoreAction::Repair => {
            let report = RedbStore::repair(dir).map_err(|e| e.to_string())?;
            println!("{report}");
            Ok(true)
        }
    }
}
