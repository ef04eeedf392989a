//! `main` of `surgemq-client`: parse, dispatch, map the outcome to an exit code.
//!
//! Exit codes (like mosquitto_pub / mosquitto_sub where they have one): 0 success; 1 could not
//! connect, or failed; 2 bad command line (clap); 3 the broker refused the connection;
//! 27 timed out (`-W`).

use std::fmt;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::{bench, runtime};

/// Why a subcommand failed, and the exit code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What to print on stderr.
    pub message: String,
}

impl Failure {
    /// Exit code for a general failure (including "could not connect").
    pub const FAILED: u8 = 1;
    /// Exit code when the broker refused the connection (CONNACK with an error).
    pub const REFUSED: u8 = 3;
    /// Exit code when `-W` expired, as mosquitto_sub's.
    pub const TIMED_OUT: u8 = 27;

    /// A general failure.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: Self::FAILED,
            message: message.into(),
        }
    }

    /// The broker refused the connection.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            code: Self::REFUSED,
            message: message.into(),
        }
    }

    /// `-W` expired.
    pub fn timed_out() -> Self {
        Self {
            code: Self::TIMED_OUT,
            message: "Timed out".into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pub(args) => runtime::publish(args),
        Command::Sub(args) => runtime::subscribe(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if failure.code == Failure::TIMED_OUT {
                eprintln!("{failure}");
            } else {
                eprintln!("Error: {failure}");
            }
            ExitCode::from(failure.code)
        }
    }
}
