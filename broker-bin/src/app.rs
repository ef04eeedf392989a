//! The program: parse the command line, set up logging, load the config, run the broker or
//! the `passwd` tool; plus the start-up log lines every runtime shares.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser as _;
use surgemq_core::broker::AuthMode;
use tracing::level_filters::LevelFilter;

use crate::cli::{Cli, Command};
use crate::config::{FileConfig, ListenerSettings, Settings};
use crate::{passwd_cmd, runtime, store};

/// `surgemq`'s `main`: exit status 0 after a clean shutdown, 1 for config and start-up
/// errors, 2 for command-line mistakes (clap's convention).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Passwd(args)) => {
            return match passwd_cmd::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("surgemq passwd: error: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Store(args)) => {
            return match store::run_command(args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(error) => {
                    eprintln!("surgemq store: error: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    init_logging(cli.level());
    let settings = match load_settings(&cli) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("surgemq: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "surgemq {} starting (runtime: {})",
        env!("CARGO_PKG_VERSION"),
        runtime::NAME
    );
    match runtime::serve(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("surgemq: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, in colour only on a terminal.
fn init_logging(level: LevelFilter) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .init();
}

/// The settings the command line asks for: the config file (if any) with `-p`,
/// `--persistence` and `--data-dir` applied.
pub fn load_settings(cli: &Cli) -> Result<Settings, String> {
    let mut settings = match &cli.config {
        None => Settings::defaults(cli.port),
        Some(path) => {
            let file = FileConfig::load(path).map_err(|e| e.to_string())?;
            let base_dir = path.parent().unwrap_or(Path::new("."));
            Settings::build(file, base_dir, cli.port)
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    if let Some(mode) = cli.persistence {
        settings.persistence.mode = mode;
    }
    if let Some(dir) = &cli.data_dir {
        settings.persistence.data_dir = dir.clone();
    }
    settings.broker.persistence = settings.persistence.core_mode();
    Ok(settings)
}

/// The message for listeners that could not be bound.
pub fn bind_error(listeners: &[ListenerSettings], error: &std::io::Error) -> String {
    let addresses: Vec<String> = listeners.iter().map(|l| l.bind.to_string()).collect();
    format!("cannot listen on {}: {error}", addresses.join(", "))
}

/// Logs every bound address and who may connect.
pub fn log_start(
    listeners: &[ListenerSettings],
    bound: &[SocketAddr],
    auth: AuthMode,
    auth_summary: &str,
) {
    for (listener, address) in listeners.iter().zip(bound) {
        let kind = match (&listener.tls, listener.identity_as_username) {
            (None, _) => "MQTT over TCP",
            (Some(_), false) => "MQTT over TLS",
            (Some(_), true) => "MQTT over TLS, certificate common name as user name",
        };
        tracing::info!("listening on {address} ({kind})");
        if auth == AuthMode::LoopbackOnly && !address.ip().is_loopback() {
            tracing::warn!(
                "{address} accepts anonymous clients from loopback only: set password_file \
                 or allow_anonymous in the config file to let others in"
            );
        }
    }
    tracing::info!("auth: {auth_summary}");
}
