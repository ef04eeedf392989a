//! The command line ([`Cli`]): `pub` and `sub` with the flags Mosquitto users know
//! (`-h host -p port -t topic -m message -q qos ...`), and `bench`.
//!
//! Owns parsing and the meaning of each flag. Never: connect, read files or build the MQTT
//! configuration (see [`crate::options`]).

use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand, ValueEnum};
use surgemq_core::codec::{ProtocolVersion, QoS};

use crate::runtime;

/// `surgemq-client`: publish, subscribe and load-test an MQTT broker.
#[derive(Debug, Parser)]
#[command(
    name = "surgemq-client",
    version = runtime::VERSION,
    about = "SurgeMQ's MQTT client: pub and sub (mosquitto_pub / mosquitto_sub flags) and bench",
    long_about = "SurgeMQ's MQTT client.\n\n\
        `pub` and `sub` take the flags of mosquitto_pub and mosquitto_sub (note: -h is the \
        host, so help is --help only). `bench` measures a broker: throughput, latency \
        percentiles, losses and, with --broker-pid, the broker's CPU time per delivered message.\n\n\
        Exit codes: 0 success; 1 could not connect, or failed; 2 bad command line; \
        3 the broker refused the connection; 27 timed out (-W), as mosquitto_sub."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish one message (-m, -f, -n, -s) or one per stdin line (-l), like mosquitto_pub.
    #[command(disable_help_flag = true)]
    Pub(PubArgs),
    /// Subscribe and print what arrives, like mosquitto_sub.
    #[command(disable_help_flag = true)]
    Sub(SubArgs),
    /// Load-test a broker: N publishers, M subscribers, throughput, latency, losses, CPU.
    ///
    /// Runs on tokio whatever runtime feature the binary was built with: its connections speak
    /// MQTT directly over TCP (pre-encoded PUBLISH batches, no per-message channel hop), so
    /// the tool is not the bottleneck it measures.
    #[command(disable_help_flag = true)]
    Bench(BenchArgs),
}

/// The MQTT protocol version (`-V`), named as mosquitto names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`).
    #[value(name = "mqttv31", alias = "31")]
    V31,
    /// MQTT 3.1.1 (the default).
    #[value(name = "mqttv311", alias = "311")]
    V311,
    /// MQTT 5.0.
    #[value(name = "mqttv5", alias = "5")]
    V5,
}

impl From<Version> for ProtocolVersion {
    fn from(version: Version) -> Self {
        match version {
            Version::V31 => Self::V3_1,
            Version::V311 => Self::V3_1_1,
            Version::V5 => Self::V5,
        }
    }
}

/// Parses a QoS flag: 0, 1 or 2.
fn parse_qos(text: &str) -> Result<QoS, String> {
    text.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("`{text}` is not a QoS: use 0, 1 or 2"))
}

/// Connection flags shared by `pub` and `sub`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker host name or address.
    #[arg(short = 'h', long = "host", default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port (default 1883, or 8883 with TLS).
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Client identifier (default: `surgemq-pub-PID` / `surgemq-sub-PID`).
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// User name.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password (needs -u).
    #[arg(short = 'P', long = "pw", requires = "username")]
    pub password: Option<String>,
    /// Keep alive in seconds (0 turns it off).
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// Persistent session: clean session / clean start off (needs -i). With -V mqttv5 the
    /// session never expires unless -x says otherwise.
    #[arg(short = 'c', long = "disable-clean-session", requires = "id")]
    pub persistent: bool,
    /// MQTT 5.0 Session Expiry Interval in seconds (default 0, or "never" with -c).
    #[arg(short = 'x', long = "session-expiry", value_name = "SECS")]
    pub session_expiry: Option<u32>,
    /// Protocol version: mqttv31, mqttv311 or mqttv5 (also 31, 311, 5).
    #[arg(
        short = 'V',
        long = "protocol-version",
        value_enum,
        default_value = "mqttv311"
    )]
    pub version: Version,
    /// PEM file of the CA certificates to trust; turns TLS on.
    #[arg(long = "cafile", value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// PEM file of the client certificate (with --key; needs --cafile).
    #[arg(long = "cert", value_name = "FILE", requires_all = ["key", "cafile"])]
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long = "key", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the host).
    #[arg(long = "tls-server-name", value_name = "NAME", requires = "cafile")]
    pub tls_server_name: Option<String>,
    /// Persist the client's session in DIR (the redb file store, each change committed before
    /// the packet that depends on it is sent; needs -c): keeps unfinished QoS 1/2 publishes
    /// (pub) and received QoS 2 state (sub) across a restart of surgemq-client, even kill -9.
    /// A pub resends what it had not finished before its new messages.
    #[arg(long = "data-dir", value_name = "DIR", requires = "persistent")]
    pub data_dir: Option<PathBuf>,
    /// Give up after this many seconds (exit code 27).
    #[arg(short = 'W', long = "timeout", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Print what the client does on stderr (CONNACK, SUBACK, publishes).
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// `pub`: where and what to publish.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["message", "file", "stdin_lines", "stdin_file", "null_message"])))]
pub struct PubArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to publish on.
    #[arg(short = 't', long = "topic")]
    pub topic: String,
    /// The message.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// Send a file's contents as the message.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Send each line of stdin as a message (without its line ending).
    #[arg(short = 'l', long = "stdin-line")]
    pub stdin_lines: bool,
    /// Send all of stdin as one message.
    #[arg(short = 's', long = "stdin-file")]
    pub stdin_file: bool,
    /// Send an empty (zero-length) message.
    #[arg(short = 'n', long = "null-message")]
    pub null_message: bool,
    /// Quality of service: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Ask the broker to retain the message.
    #[arg(short = 'r', long = "retain")]
    pub retain: bool,
}

/// `sub`: what to subscribe to and how to print it.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    /// Connection flags.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic filter to subscribe to; repeat for several.
    #[arg(short = 't', long = "topic", required = true)]
    pub topics: Vec<String>,
    /// Maximum QoS to subscribe with: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    pub count: Option<u64>,
    /// Print "topic payload" instead of the payload alone.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Do not print a newline after each message.
    #[arg(short = 'N')]
    pub no_newline: bool,
    /// Do not print retained messages (those sent because of the subscription).
    #[arg(short = 'R')]
    pub no_retained: bool,
}

/// How bench topics and subscriptions are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Everybody on one topic `PREFIX/0`: each subscriber gets every publisher's messages.
    Single,
    /// Publisher i on `PREFIX/i`; subscriber j subscribes to publisher j mod N (1→M is a
    /// fan-out, N→N are pairs).
    PerPublisher,
    /// Publisher i on `PREFIX/i`; every subscriber subscribes to `PREFIX/+`.
    Wildcard,
}

/// `bench`: the load and what to report.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Broker host (IP address or name).
    #[arg(short = 'h', long = "host", default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(short = 'p', long = "port", default_value_t = 1883)]
    pub port: u16,
    /// Protocol version: mqttv31, mqttv311 or mqttv5.
    #[arg(
        short = 'V',
        long = "protocol-version",
        value_enum,
        default_value = "mqttv311"
    )]
    pub version: Version,
    /// User name for every connection.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password for every connection.
    #[arg(short = 'P', long = "pw", requires = "username")]
    pub password: Option<String>,
    /// Publishing connections.
    #[arg(long = "publishers", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub publishers: u32,
    /// Subscribing connections.
    #[arg(long = "subscribers", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub subscribers: u32,
    /// Topic layout.
    #[arg(long = "layout", value_enum, default_value = "single")]
    pub layout: Layout,
    /// Topic prefix.
    #[arg(long = "topic-prefix", default_value = "surgemq-bench")]
    pub topic_prefix: String,
    /// QoS of the publishes and of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Payload size in bytes (at least 16: publisher id, sequence number, send time).
    #[arg(long = "payload", default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=16 * 1024 * 1024))]
    pub payload: u32,
    /// Messages per publisher (default 100000 unless --duration is given).
    #[arg(long = "count", conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Publish for this many seconds instead of a fixed count.
    #[arg(long = "duration", value_name = "SECS")]
    pub duration: Option<f64>,
    /// Messages per second per publisher; 0 publishes as fast as the broker takes them.
    #[arg(long = "rate", default_value_t = 0)]
    pub rate: u64,
    /// Unacknowledged QoS 1/2 messages per publisher at most.
    #[arg(long = "inflight", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=32_768))]
    pub inflight: u16,
    /// Connect every publisher and subscriber with clean session 0, so that a broker with
    /// persistence stores their sessions and in-flight messages (the sessions are discarded
    /// with a clean-session connect at the end).
    #[arg(long = "persistent")]
    pub persistent: bool,
    /// Seconds to wait after the last publish for messages still on their way.
    #[arg(long = "drain", value_name = "SECS", default_value_t = 5.0)]
    pub drain: f64,
    /// Worker threads of the bench's tokio runtime (default: the machine's cores).
    #[arg(long = "threads")]
    pub threads: Option<usize>,
    /// Process id of the broker: report its CPU time per delivered message (Linux /proc).
    #[arg(long = "broker-pid", value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// A name for this run in the reports (e.g. the broker's).
    #[arg(long = "label", default_value = "")]
    pub label: String,
    /// Print the results as JSON on stdout (the human report goes to stderr).
    #[arg(long = "json", conflicts_with = "csv")]
    pub json: bool,
    /// Print the results as CSV (a header line and a row) on stdout.
    #[arg(long = "csv")]
    pub csv: bool,
    /// Write an SVG plot of latency over time to this file.
    #[arg(long = "plot", value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// No live progress line.
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sub_takes_mosquitto_flags_and_repeated_topics() {
        let cli = Cli::try_parse_from([
            "surgemq-client",
            "sub",
            "-h",
            "localhost",
            "-p",
            "1884",
            "-t",
            "a/#",
            "-t",
            "b",
            "-q",
            "2",
            "-v",
            "-C",
            "3",
            "-W",
            "5",
            "-V",
            "5",
            "-c",
            "-i",
            "me",
        ])
        .unwrap();
        let Command::Sub(sub) = cli.command else {
            panic!("not sub");
        };
        assert_eq!(sub.topics, ["a/#", "b"]);
        assert_eq!(sub.qos, QoS::ExactlyOnce);
        assert_eq!(sub.connect.host, "localhost");
        assert_eq!(sub.connect.version, Version::V5);
        assert!(sub.connect.persistent && sub.verbose);
    }

    #[test]
    fn pub_needs_exactly_one_message_source() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["surgemq-client", "pub", "-t", "a"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        assert!(parse(&[]).is_err());
        assert!(parse(&["-m", "x", "-n"]).is_err());
        assert!(parse(&["-l"]).is_ok());
        assert!(parse(&["-m", "x", "-q", "3"]).is_err());
    }

    #[test]
    fn data_dir_needs_a_persistent_session() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["surgemq-client", "pub", "-t", "a", "-l", "--data-dir", "d"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        assert!(parse(&[]).is_err());
        let cli = parse(&["-c", "-i", "me"]).unwrap();
        let Command::Pub(pub_args) = cli.command else {
            panic!("not pub");
        };
        assert_eq!(pub_args.connect.data_dir, Some(PathBuf::from("d")));
        assert!(
            Cli::try_parse_from(["surgemq-client", "sub", "-t", "a", "--data-dir", "d"]).is_err()
        );
    }

    #[test]
    fn bench_refuses_payloads_too_small_for_the_stamp() {
        assert!(Cli::try_parse_from(["surgemq-client", "bench", "--payload", "15"]).is_err());
        assert!(Cli::try_parse_from(["surgemq-client", "bench", "--payload", "16"]).is_ok());
    }
}
