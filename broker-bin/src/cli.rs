//! The command line ([`Cli`]), Mosquitto-style: `-c FILE`, `-p PORT`, `-v`, and the
//! `passwd` subcommand shaped like `mosquitto_passwd`.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use tracing::level_filters::LevelFilter;

use crate::passwd::DEFAULT_ITERATIONS;
use crate::runtime;
use crate::store::{DEFAULT_DATA_DIR, Mode};

/// `surgemq`: an MQTT 3.1, 3.1.1 and 5.0 broker.
#[derive(Debug, Parser)]
#[command(
    name = "surgemq",
    version = runtime::VERSION,
    about = "SurgeMQ: an MQTT 3.1 / 3.1.1 / 5.0 broker",
    long_about = "SurgeMQ: an MQTT 3.1 / 3.1.1 / 5.0 broker.\n\n\
        Without options it listens on 127.0.0.1:1883 and lets anonymous clients in from \
        loopback only (like Mosquitto 2), and keeps persistent sessions and retained messages \
        durably in ./surgemq-data. A config file (-c) adds listeners, TLS, a password file, \
        persistence settings and limits; see surgemq.example.toml. SIGINT or SIGTERM shut it \
        down gracefully.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// TOML config file (see surgemq.example.toml).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen on 127.0.0.1:PORT, plain TCP, instead of the config file's listeners (0 picks a
    /// free port).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<u16>,
    /// Persistence mode, overriding the config file's `[persistence] mode` (default: durable).
    #[arg(long = "persistence", value_name = "MODE", value_enum)]
    pub persistence: Option<Mode>,
    /// Directory of the store file, overriding the config file's `[persistence] data_dir`
    /// (default: ./surgemq-data).
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// More log output: -v for debug, -vv for trace (default: info).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, conflicts_with = "log_level")]
    pub verbose: u8,
    /// Log level (logs go to stderr).
    #[arg(long = "log-level", value_name = "LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,
    /// A tool instead of the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The log level the options ask for.
    pub fn level(&self) -> LevelFilter {
        match (self.log_level, self.verbose) {
            (Some(level), _) => level.into(),
            (None, 0) => LevelFilter::INFO,
            (None, 1) => LevelFilter::DEBUG,
            (None, _) => LevelFilter::TRACE,
        }
    }
}

/// `--log-level` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Nothing at all.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Start, stop, connections refused (default).
    Info,
    /// Every connection.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Off => Self::OFF,
            LogLevel::Error => Self::ERROR,
            LogLevel::Warn => Self::WARN,
            LogLevel::Info => Self::INFO,
            LogLevel::Debug => Self::DEBUG,
            LogLevel::Trace => Self::TRACE,
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage a password file (Mosquitto's format; like mosquitto_passwd).
    Passwd(PasswdArgs),
    /// Check or repair the persistence store (run while the broker is stopped).
    Store(StoreArgs),
}

/// `surgemq store check | repair [--data-dir DIR]`.
#[derive(Debug, Args)]
#[command(
    after_help = "check reads the store and reports every record it cannot read; it \
    changes nothing (exit status 1 when something is wrong).\n\
    repair keeps every readable record in a new file and moves the old one aside as \
    surgemq.redb.damaged-<time>; it never deletes it."
)]
pub struct StoreArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: StoreAction,
    /// The data directory (the broker's `--data-dir` / `[persistence] data_dir`).
    #[arg(long = "data-dir", value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// `surgemq store` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreAction {
    /// Report what the store holds and any damage; change nothing.
    Check,
    /// Keep every readable record, move the damaged file aside.
    Repair,
}

/// `surgemq passwd`, like `mosquitto_passwd [-c | -D] FILE USER` and
/// `mosquitto_passwd -b [-c] FILE USER PASSWORD`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    surgemq passwd -c /etc/surgemq/passwd alice       create the file, prompt for alice's password\n  \
    surgemq passwd -b /etc/surgemq/passwd bob s3cret  add or update bob\n  \
    surgemq passwd -D /etc/surgemq/passwd bob         delete bob")]
pub struct PasswdArgs {
    /// Create a new password file, overwriting an existing one.
    #[arg(short = 'c', conflicts_with = "delete")]
    pub create: bool,
    /// Delete USER instead of setting a password.
    #[arg(short = 'D')]
    pub delete: bool,
    /// Batch mode: take PASSWORD from the command line (visible to other users in `ps`).
    #[arg(short = 'b', requires = "password", conflicts_with = "delete")]
    pub batch: bool,
    /// PBKDF2 iterations for new hashes.
    #[arg(short = 'I', long = "iterations", value_name = "N", default_value_t = DEFAULT_ITERATIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,
    /// The password file.
    pub file: PathBuf,
    /// The user name.
    pub user: String,
    /// The password (with -b only; otherwise it is asked for).
    #[arg(requires = "batch")]
    pub password: Option<String>,
}
