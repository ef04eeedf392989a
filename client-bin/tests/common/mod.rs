//! Helpers for the integration tests: brokers to test against (Mosquitto, and our `surgemq`
//! binary), free loopback ports, child processes killed on drop, bounded runs.
//!
//! A missing Mosquitto fails the test when `SURGEMQ_REQUIRE_INTEROP=1`, else skips it with a
//! message on stderr. Every wait is bounded.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The `surgemq-client` binary under test.
pub const CLIENT: &str = env!("CARGO_BIN_EXE_surgemq-client");

/// How long any one child process may run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes a line to the real stderr, past the test harness's capture: a skip must show.
pub fn note(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

/// Where `name` is installed, searching `PATH` and the sbin folders (mosquitto lives in
/// /usr/sbin, often outside a user's `PATH`).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether a missing tool must fail the test instead of skipping it.
pub fn interop_required() -> bool {
    std::env::var("SURGEMQ_REQUIRE_INTEROP").as_deref() == Ok("1")
}

/// The tool, or `None` after printing why the test is skipped (a panic instead when
/// `SURGEMQ_REQUIRE_INTEROP=1`: CI must not pass by skipping).
pub fn require_tool(test: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = find_tool(name) {
        return Some(path);
    }
    let message = format!("{test}: {name} not installed");
    assert!(!interop_required(), "{message} (SURGEMQ_REQUIRE_INTEROP=1)");
    note(&format!(
        "SKIPPED {message}; set SURGEMQ_REQUIRE_INTEROP=1 to make this a failure"
    ));
    None
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free port on 127.0.0.1")
}

/// A child process, killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Starts `command` with stdout and stderr piped (stdin too when `stdin` is set).
    pub fn spawn(command: &mut Command, stdin: bool) -> Self {
        let child = command
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self(child)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a finished process printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Finished {
    /// The exit code (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `command` to completion (feeding it `stdin`), killing it after [`RUN_TIMEOUT`].
pub fn run(command: &mut Command, stdin: Option<&[u8]>) -> Finished {
    let mut guard = ChildGuard::spawn(command, stdin.is_some());
    if let Some(input) = stdin {
        let mut pipe = guard.0.stdin.take().expect("stdin piped");
        pipe.write_all(input).expect("write stdin");
        // Dropping the pipe closes it: end of input.
    }
    let stdout = read_all(guard.0.stdout.take().expect("stdout piped"));
    let stderr = read_all(guard.0.stderr.take().expect("stderr piped"));
    let Some(status) = guard.wait_timeout(RUN_TIMEOUT) else {
        panic!("{command:?} still running after {RUN_TIMEOUT:?}");
    };
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Which output of a background process is watched line by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Standard output (mosquitto_sub -d logs there).
    Stdout,
    /// Standard error (surgemq-client -d logs there).
    Stderr,
}

/// A process started in the background with one output watched line by line, e.g. for a
/// subscriber's "received SUBACK".
pub struct Background {
    guard: ChildGuard,
    watch: Watch,
    other: Option<thread::JoinHandle<String>>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    /// Starts `command`, watching `watch`.
    pub fn start(command: &mut Command, watch: Watch) -> Self {
        let mut guard = ChildGuard::spawn(command, false);
        let stdout = guard.0.stdout.take().expect("stdout piped");
        let stderr = guard.0.stderr.take().expect("stderr piped");
        let (watched, other): (Box<dyn std::io::Read + Send>, Box<dyn std::io::Read + Send>) =
            match watch {
                Watch::Stdout => (Box::new(stdout), Box::new(stderr)),
                Watch::Stderr => (Box::new(stderr), Box::new(stdout)),
            };
        let other = read_all(other);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(watched).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            guard,
            watch,
            other: Some(other),
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits at most `timeout` for a watched line containing `text`.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no `{text}` on {:?} within {timeout:?}; seen: {:?}",
            self.watch, self.seen
        );
    }

    /// Waits for the process to exit (at most [`RUN_TIMEOUT`]) and collects its output.
    pub fn finish(mut self) -> Finished {
        let Some(status) = self.guard.wait_timeout(RUN_TIMEOUT) else {
            panic!("background process still running after {RUN_TIMEOUT:?}");
        };
        let other = self
            .other
            .take()
            .expect("output reader")
            .join()
            .expect("output reader");
        let mut watched: String = self.seen.iter().map(|line| format!("{line}\n")).collect();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            watched.push_str(&line);
            watched.push('\n');
        }
        let (stdout, stderr) = match self.watch {
            Watch::Stdout => (watched, other),
            Watch::Stderr => (other, watched),
        };
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

/// Starts a broker with `command` and waits until it accepts TCP connections on
/// 127.0.0.1:`port`. Its output is drained by threads (a full pipe would stall it) and shown
/// if it exits early.
fn start_broker(name: &str, command: &mut Command, port: u16) -> ChildGuard {
    let mut guard = ChildGuard::spawn(command, false);
    let stdout = read_all(guard.0.stdout.take().expect("stdout piped"));
    let stderr = read_all(guard.0.stderr.take().expect("stderr piped"));
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return guard;
        }
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            panic!(
                "{name} exited before listening on {port}: {status}\n{}{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{name}: nothing listens on {address} after 10 s");
}

/// A broker running on a free 127.0.0.1 port, stopped on drop.
pub struct Broker {
    /// Which broker.
    pub name: &'static str,
    /// Its port.
    pub port: u16,
    guard: ChildGuard,
}

impl Broker {
    /// Mosquitto (its own defaults: anonymous clients from loopback), or `None` when it is not
    /// installed (see [`require_tool`]).
    pub fn mosquitto(test: &str) -> Option<Self> {
        let mosquitto = require_tool(test, "mosquitto")?;
        let port = free_port();
        let guard = start_broker(
            "mosquitto",
            Command::new(mosquitto).args(["-p", &port.to_string()]),
            port,
        );
        Some(Self {
            name: "mosquitto",
            port,
            guard,
        })
    }

    /// Our `surgemq` binary, or `None` after saying why it is skipped.
    pub fn surgemq(test: &str) -> Option<Self> {
        let binary = surgemq_binary(test)?;
        let port = free_port();
        let guard = start_broker(
            "surgemq",
            Command::new(binary).args([
                "-p",
                &port.to_string(),
                "--log-level",
                "warn",
                // Brokers of concurrent tests must not share ./surgemq-data.
                "--persistence",
                "memory",
            ]),
            port,
        );
        Some(Self {
            name: "surgemq",
            port,
            guard,
        })
    }

    /// A broker started by `command`, ready once `port` accepts connections.
    pub fn custom(name: &'static str, command: &mut Command, port: u16) -> Self {
        let guard = start_broker(name, command, port);
        Self { name, port, guard }
    }

    /// Every broker available: Mosquitto (required as [`require_tool`] says) and `surgemq`.
    pub fn all(test: &str) -> Vec<Self> {
        Self::mosquitto(test)
            .into_iter()
            .chain(Self::surgemq(test))
            .collect()
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// `-p PORT` for the client.
    pub fn port_arg(&self) -> String {
        self.port.to_string()
    }
}

/// `target/<profile>/surgemq`, next to the client binary under test, built with
/// `cargo build -p surgemq-broker` (same profile) so it is never stale. `None`, with a message,
/// when the crate is not in the workspace or cannot be built from here.
pub fn surgemq_binary(test: &str) -> Option<PathBuf> {
    let client = Path::new(CLIENT);
    let profile_dir = client.parent()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    if !workspace.join("broker-bin").join("Cargo.toml").is_file() {
        note(&format!(
            "SKIPPED {test} on surgemq: the surgemq-broker crate is not in the workspace"
        ));
        return None;
    }
    static BUILD: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let built = BUILD.get_or_init(|| build_broker(workspace, profile_dir));
    let binary = profile_dir.join(format!("surgemq{}", std::env::consts::EXE_SUFFIX));
    match built {
        Ok(()) if binary.is_file() => Some(binary),
        Ok(()) => {
            note(&format!(
                "SKIPPED {test} on surgemq: {} missing after the build",
                binary.display()
            ));
            None
        }
        Err(why) if binary.is_file() => {
            note(&format!(
                "{test}: could not rebuild surgemq ({why}); using {}",
                binary.display()
            ));
            Some(binary)
        }
        Err(why) => {
            note(&format!("SKIPPED {test} on surgemq: {why}"));
            None
        }
    }
}

/// `cargo build -p surgemq-broker` in the profile of the binary under test, bounded.
fn build_broker(workspace: &Path, profile_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace).args([
        "build",
        "--quiet",
        "-p",
        "surgemq-broker",
        "--bin",
        "surgemq",
    ]);
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
        None => return Err("unknown build profile".into()),
    }
    if let Some(target_dir) = profile_dir.parent() {
        command.env("CARGO_TARGET_DIR", target_dir);
    }
    let mut guard = ChildGuard::spawn(&mut command, false);
    let stderr = read_all(guard.0.stderr.take().expect("stderr piped"));
    drop(guard.0.stdout.take());
    let timeout = Duration::from_secs(900);
    match guard.wait_timeout(timeout) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!(
            "cargo build -p surgemq-broker failed ({status}): {}",
            stderr.join().unwrap_or_default()
        )),
        None => Err(format!(
            "cargo build -p surgemq-broker took over {timeout:?}"
        )),
    }
}
