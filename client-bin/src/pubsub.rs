//! `pub` and `sub` on the selected runtime's async client ([`crate::runtime`]): connect, publish or subscribe,
//! print like mosquitto_sub, disconnect. Runs inside whatever runtime `crate::runtime` started.
//! With `--data-dir` the client's session lives in the redb file store there
//! ([`surgemq_core::store::redb`], durable: group commits), resumed at start.
//!
//! Never: speak MQTT itself (the client does), or wait without a bound when `-W` is given.

use std::io::{BufRead as _, Read as _};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use surgemq_core::client::IncomingMessage;
use surgemq_core::codec::SubscriptionOptions;
use surgemq_core::store::StoreSetup;
use surgemq_core::store::redb::{self, CommitPolicy, OnClose};
use surgemq_core::topic::{TopicFilter, TopicName};
use tokio::sync::mpsc;

use crate::app::Failure;
use crate::cli::{ConnectArgs, PubArgs, SubArgs};
use crate::options;
use crate::runtime::{self, AsyncClientError, Client, ClientOptions, Messages};

/// Time given to the client's writer after DISCONNECT before the runtime is dropped: the
/// async client's `disconnect()` resolves once DISCONNECT is queued, not once it is written,
/// and dropping the runtime stops its writer task wherever it is.
const FLUSH_GRACE: Duration = Duration::from_millis(50);

/// `-d`: what the client does, on stderr, in mosquitto's words.
struct Trace {
    enabled: bool,
    client_id: String,
}

impl Trace {
    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.enabled {
            eprintln!("Client {} {what}", self.client_id);
        }
    }
}

/// Connects as `args` say; maps the failure to the exit code mosquitto would use.
async fn connect(args: &ConnectArgs, role: &str) -> Result<(Client, Messages, Trace), Failure> {
    let connection = options::connection(args, role)?;
    let trace = Trace {
        enabled: args.debug,
        client_id: connection.config.client_id.as_str().to_owned(),
    };
    trace.log(format_args!("sending CONNECT to {}", connection.address));
    let mut client_options = ClientOptions::new(connection.address, connection.config);
    if let Some((tls, name)) = connection.tls {
        client_options = client_options.with_tls(tls, name);
    }
    let store = args.data_dir.as_deref().map(open_store).transpose()?;
    // The async client answers `connect` only on CONNACK or on a failed TCP/TLS connect; a
    // connection closed before CONNACK (e.g. a TLS listener refusing a client without a
    // certificate) would leave it waiting, so bound it.
    let limit = client_options.config.connect_timeout + Duration::from_secs(1);
    let address = client_options.address.clone();
    let connecting = async {
        match store {
            None => Client::connect(client_options)
                .await
                .map(|(client, messages)| (client, messages, None)),
            Some(store) => Client::connect_with_store(client_options, store)
                .await
                .map(|(client, messages, report)| (client, messages, Some(report))),
        }
    };
    let (client, messages, report) = runtime::timeout_at(Instant::now() + limit, connecting)
        .await
        .ok_or_else(|| {
            Failure::failed(format!(
                "no CONNACK from {address} within {limit:?}: the connection was closed or \
                 the broker did not answer"
            ))
        })?
        .map_err(|e| match e {
            AsyncClientError::Refused(reason) => {
                Failure::refused(format!("Connection Refused: {reason:?}"))
            }
            AsyncClientError::Io(e) => Failure::failed(capitalize(&e.to_string())),
            other => Failure::failed(other.to_string()),
        })?;
    if let (Some(dir), Some(report)) = (&args.data_dir, report) {
        trace.log(format_args!("restored from {}: {report}", dir.display()));
    }
    trace.log(format_args!("received CONNACK"));
    Ok((client, messages, trace))
}

/// `--data-dir`: opens (creating) the store in `dir`; commits in groups, each one before what
/// depends on it goes on the wire (durable, the async client's default with a store).
fn open_store(dir: &Path) -> Result<StoreSetup, Failure> {
    let shown = dir.display().to_string();
    let on_close: OnClose = Box::new(move |_, result| {
        if let Err(e) = result {
            eprintln!("Error: the last commit to the store in {shown} failed: {e}");
        }
    });
    redb::setup(dir, CommitPolicy::Group, on_close)
        .map_err(|e| Failure::failed(format!("cannot open the store in {}: {e}", dir.display())))
}

/// "connection refused" → "Connection refused", as mosquitto prints it.
fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// When `-W` runs out, counted from now.
fn deadline(timeout: Option<u64>) -> Option<Instant> {
    timeout.map(|secs| Instant::now() + Duration::from_secs(secs))
}

/// Runs `work`, bounded by the `-W` deadline when there is one.
async fn bounded<T>(
    deadline: Option<Instant>,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match deadline {
        Some(at) => runtime::timeout_at(at, work)
            .await
            .unwrap_or_else(|| Err(Failure::timed_out())),
        None => work.await,
    }
}

/// Where `pub` takes its messages from.
enum Source {
    /// One message (-m, -f, -n, -s).
    One(Bytes),
    /// One message per stdin line (-l).
    Lines,
}

fn source(args: &PubArgs) -> Result<Source, Failure> {
    if let Some(message) = &args.message {
        return Ok(Source::One(Bytes::from(message.clone().into_bytes())));
    }
    if let Some(file) = &args.file {
        return std::fs::read(file)
            .map(|bytes| Source::One(Bytes::from(bytes)))
            .map_err(|e| Failure::failed(format!("cannot read {}: {e}", file.display())));
    }
    if args.stdin_file {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::failed(format!("cannot read stdin: {e}")))?;
        return Ok(Source::One(Bytes::from(bytes)));
    }
    if args.stdin_lines {
        return Ok(Source::Lines);
    }
    Ok(Source::One(Bytes::new()))
}

/// Reads stdin line by line on a plain thread (stdin has no portable async API) and hands the
/// lines over a bounded channel, so a slow broker makes us stop reading.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(Bytes::from(line))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// `pub`: connects, publishes, disconnects.
pub async fn publish(args: PubArgs) -> Result<(), Failure> {
    let topic = TopicName::parse(&args.topic)
        .map_err(|e| Failure::failed(format!("invalid topic `{}`: {e}", args.topic)))?;
    let source = source(&args)?;
    bounded(deadline(args.connect.timeout), async {
        let (client, _messages, trace) = connect(&args.connect, "pub").await?;
        let trace = &trace;
        let send = |payload: Bytes| {
            let client = &client;
            let topic = topic.clone();
            async move {
                let len = payload.len();
                let result = client
                    .publish(topic.clone(), payload, args.qos, args.retain)
                    .await;
                trace.log(format_args!(
                    "published to {topic} (q{}, r{}, {len} bytes): {result:?}",
                    args.qos.as_u8(),
                    u8::from(args.retain)
                ));
                result
                    .map_err(|e| Failure::failed(format!("publish failed: {e}")))
                    .and_then(|reason| {
                        if reason.is_error() {
                            Err(Failure::failed(format!("publish refused: {reason:?}")))
                        } else {
                            Ok(())
                        }
                    })
            }
        };
        let result = match source {
            Source::One(payload) => send(payload).await,
            Source::Lines => {
                let mut lines = stdin_lines();
                let mut result = Ok(());
                while let Some(line) = lines.recv().await {
                    result = match line {
                        Ok(payload) => send(payload).await,
                        Err(e) => Err(Failure::failed(format!("cannot read stdin: {e}"))),
                    };
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        trace.log(format_args!("sending DISCONNECT"));
        client.disconnect().await;
        runtime::sleep(FLUSH_GRACE).await;
        result
    })
    .await
}

/// `sub`: subscribes, prints each message, stops after `-C` messages or `-W` seconds.
pub async fn subscribe(args: SubArgs) -> Result<(), Failure> {
    let options = SubscriptionOptions::qos(args.qos);
    let filters = args
        .topics
        .iter()
        .map(|topic| {
            TopicFilter::parse(topic)
                .map(|filter| (filter, options))
                .map_err(|e| Failure::failed(format!("invalid topic filter `{topic}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = deadline(args.connect.timeout);
    let (client, mut messages, trace) = bounded(deadline, connect(&args.connect, "sub")).await?;
    let received = bounded(deadline, async {
        let reasons = client
            .subscribe(filters)
            .await
            .map_err(|e| Failure::failed(format!("subscribe failed: {e}")))?;
        trace.log(format_args!("received SUBACK: {reasons:?}"));
        for (topic, reason) in args.topics.iter().zip(&reasons) {
            if reason.is_error() {
                eprintln!("Warning: subscription to {topic} denied: {reason:?}");
            }
        }
        if reasons.iter().all(|reason| reason.is_error()) {
            return Err(Failure::failed("All subscription requests were denied."));
        }
        let mut stdout = std::io::stdout().lock();
        let mut count = 0u64;
        while args.count.is_none_or(|limit| count < limit) {
            let Some(message) = messages.recv().await else {
                return Err(Failure::failed("the connection to the broker was lost"));
            };
            if args.no_retained && message.publish.retain {
                continue;
            }
            if let Err(e) = print(&mut stdout, &message, &args) {
                // A closed stdout (`| head`) ends us quietly, as it ends mosquitto_sub.
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(Failure::failed(format!("cannot write to stdout: {e}")));
            }
            count += 1;
        }
        Ok(())
    })
    .await;
    trace.log(format_args!("sending DISCONNECT"));
    client.disconnect().await;
    runtime::sleep(FLUSH_GRACE).await;
    received
}

/// Prints a message as mosquitto_sub does: the payload, or with `-v` "topic payload" where an
/// empty payload shows as `(null)`.
fn print(
    out: &mut impl std::io::Write,
    message: &IncomingMessage,
    args: &SubArgs,
) -> std::io::Result<()> {
    let publish = &message.publish;
    if args.verbose {
        out.write_all(publish.topic.as_str().as_bytes())?;
        out.write_all(b" ")?;
        if publish.payload.is_empty() {
            out.write_all(b"(null)")?;
        }
    }
    out.write_all(&publish.payload)?;
    if !args.no_newline {
        out.write_all(b"\n")?;
    }
    out.flush()
}
