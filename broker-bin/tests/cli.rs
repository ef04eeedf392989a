//! The `surgemq` command line: help, version, usage errors, and config errors that name the
//! key at fault.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{SURGEMQ, run_bounded, write_file};
use surgemq_broker::config::{FileConfig, Settings};
use surgemq_broker::store::Mode;
use surgemq_core::broker::{BrokerConfig, Persistence};

fn surgemq(args: &[&str]) -> std::process::Output {
    run_bounded(Command::new(SURGEMQ).args(args), Duration::from_secs(20))
}

#[test]
fn help_lists_every_option_and_the_passwd_tool() {
    let output = surgemq(&["--help"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "-c, --config",
        "-p, --port",
        "-v, --verbose",
        "--log-level",
        "passwd",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    let output = surgemq(&["passwd", "--help"]);
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in ["-c", "-D", "-b", "<FILE>", "<USER>", "[PASSWORD]"] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

#[test]
fn version_names_the_runtime() {
    let output = surgemq(&["--version"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!(
            "surgemq {} (runtime: {})",
            env!("CARGO_PKG_VERSION"),
            surgemq_broker::runtime::NAME
        )
    );
}

#[test]
fn unknown_option_is_a_usage_error() {
    let output = surgemq(&["--no-such-option"]);
    assert_eq!(output.status.code(), Some(2));
    let output = surgemq(&["-p", "not-a-port"]);
    assert_eq!(output.status.code(), Some(2));
}

/// Runs `surgemq -c FILE` on `config` and returns its stderr, asserting exit status 1.
fn config_error(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "surgemq.toml", config);
    let output = surgemq(&["-c", path.to_str().unwrap()]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{config}\n{stderr}");
    assert!(
        stderr.contains("surgemq.toml"),
        "the file is not named:\n{stderr}"
    );
    stderr
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    for (config, key) in [
        ("max_inflite = 3\n", "max_inflite"),
        (
            "[[listener]]\nbind = \"127.0.0.1:1883\"\nport = 3\n",
            "port",
        ),
        (
            "[[listener]]\nbind = \"127.0.0.1:1883\"\ntls = { cert = \"a\", key = \"b\", verify = true }\n",
            "verify",
        ),
        ("[limits]\nmax_inflight = 3\n", "limits"),
    ] {
        let stderr = config_error(config);
        assert!(stderr.contains(key), "{key} not named:\n{stderr}");
        assert!(stderr.contains("unknown field"), "{stderr}");
    }
}

#[test]
fn bad_values_are_errors_naming_the_key() {
    for (config, key) in [
        ("max_inflight = \"lots\"\n", "max_inflight"),
        ("max_inflight = 70000\n", "max_inflight"),
        ("max_queued_messages = -1\n", "max_queued_messages"),
        ("connect_timeout = \"5 parsecs\"\n", "connect_timeout"),
        ("connect_timeout = 0\n", "connect_timeout"),
        ("overflow_policy = \"drop_everything\"\n", "overflow_policy"),
        ("allow_anonymous = \"yes\"\n", "allow_anonymous"),
        ("[[listener]]\nbind = \"localhost\"\n", "bind"),
        ("password_file = \"missing-passwd\"\n", "password_file"),
        (
            "[[listener]]\nbind = \"127.0.0.1:8883\"\ntls = { cert = \"none.crt\", key = \"none.key\" }\n",
            "tls.cert",
        ),
        (
            "[[listener]]\nbind = \"127.0.0.1:8883\"\ntls = { cert = \"a\", key = \"b\", require_client_cert = true }\n",
            "tls.require_client_cert",
        ),
    ] {
        let stderr = config_error(config);
        assert!(stderr.contains(key), "{key} not named:\n{stderr}");
    }
}

#[test]
fn missing_config_file_is_named() {
    let output = surgemq(&["-c", "/nonexistent/surgemq.toml"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("/nonexistent/surgemq.toml"), "{stderr}");
}

#[test]
fn example_config_parses_and_shows_the_true_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("surgemq.example.toml");
    let file = FileConfig::load(&path).unwrap();
    let settings = Settings::build(file, path.parent().unwrap(), None).unwrap();
    assert_eq!(
        settings.broker,
        BrokerConfig {
            persistence: Persistence::Durable,
            ..BrokerConfig::default()
        }
    );
    assert_eq!(settings.listeners.len(), 1);
    assert_eq!(settings.persistence.mode, Mode::Durable);
    assert_eq!(
        settings.persistence.data_dir,
        path.parent().unwrap().join("surgemq-data")
    );
}

#[test]
fn example_configs_commented_tls_listener_is_valid_toml_for_our_keys() {
    // The commented-out examples must stay in sync with the keys: uncomment and parse them.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("surgemq.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("[[listener]]")
                    || rest.starts_with("bind =")
                    || rest.starts_with("tls =")
                    || rest.starts_with("allow_anonymous =")
                    || rest.starts_with("password_file =")
                    || rest.starts_with("interval =") =>
            {
                rest
            }
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let file = FileConfig::parse(&uncommented).unwrap();
    assert_eq!(file.listeners.len(), 3);
    assert!(
        file.listeners[2]
            .tls
            .as_ref()
            .unwrap()
            .use_identity_as_username
    );
    assert!(file.password_file.is_some());
}
