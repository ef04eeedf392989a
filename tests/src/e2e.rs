//! End to end on loopback: the real `surgemq` binary, built once per runtime per test process,
//! against real third-party clients (mosquitto_pub/sub, Paho C, Paho Python) and raw TCP
//! sockets. The scenarios live here; `tests/tests/e2e_{tokio,smol,async_std}.rs` run each of
//! them on their runtime.
//!
//! A missing client skips a scenario with a `SKIPPED` line on stderr, or fails it when
//! `SURGEMQ_REQUIRE_INTEROP=1` (CI must not pass by skipping). Every process a scenario starts
//! is killed when the scenario ends, pass or fail, and every wait is bounded. Nothing here
//! touches more than 127.0.0.1 and temporary folders.
//!
//! Subscribers print through a pipe, so nothing tells when their subscription is in place: a
//! scenario publishes a probe until the subscriber prints it, then sends what it checks.
//! Exactly-once checks end with a marker message: once the marker is in, any duplicate sent
//! before it is too.

use std::fmt;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// How long a scenario waits for something that should happen soon (a message, a close).
const WAIT: Duration = Duration::from_secs(5);
/// How long a client process may take before it is killed as hung.
const PROCESS_BOUND: Duration = Duration::from_secs(20);
/// How long a subscriber gets to print a probe before the next probe is sent.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Polling period of every wait.
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// The broker binary, one per runtime.

/// The async runtime the `surgemq` binary is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// The default feature `tokio`.
    Tokio,
    /// `--no-default-features --features smol`.
    Smol,
    /// `--no-default-features --features async-std`.
    AsyncStd,
}

impl Runtime {
    /// The runtime's name, as `surgemq --version` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokio => "tokio",
            Self::Smol => "smol",
            Self::AsyncStd => "async-std",
        }
    }

    fn cargo_features(self) -> &'static [&'static str] {
        match self {
            Self::Tokio => &[],
            Self::Smol => &["--no-default-features", "--features", "smol"],
            Self::AsyncStd => &["--no-default-features", "--features", "async-std"],
        }
    }

    /// `target/e2e/bin/surgemq-<runtime>`, built on first use in this process.
    pub fn broker_binary(self) -> &'static Path {
        static BINARIES: [OnceLock<PathBuf>; 3] = [const { OnceLock::new() }; 3];
        let index = match self {
            Self::Tokio => 0,
            Self::Smol => 1,
            Self::AsyncStd => 2,
        };
        BINARIES[index].get_or_init(|| build_broker(self))
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds `surgemq` for `runtime` into `target/e2e` — its own target folder, so the build never
/// waits on the lock of the `cargo test` that runs us — and copies it to `target/e2e/bin/`.
fn build_broker(runtime: Runtime) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is a folder of the workspace");
    let target_dir = workspace.join("target").join("e2e");
    let bin_dir = target_dir.join("bin");
    let built = target_dir
        .join("debug")
        .join(format!("surgemq{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let wanted = format!("(runtime: {runtime})");
    note(&format!(
        "e2e: building surgemq (runtime {runtime}) into {}",
        target_dir.display()
    ));
    // Other test processes build other runtimes into the same folder: one may replace
    // `debug/surgemq` between our build and our copy. The copy's `--version` tells; build again.
    for _attempt in 0..3 {
        let output = Command::new(&cargo)
            .current_dir(workspace)
            .args([
                "build",
                "--quiet",
                "-p",
                "surgemq-broker",
                "--bin",
                "surgemq",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .args(runtime.cargo_features())
            // Line tables keep backtraces readable and build faster than full debug info.
            .env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.display()));
        assert!(
            output.status.success(),
            "building surgemq (runtime {runtime}) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::create_dir_all(&bin_dir).expect("cannot create target/e2e/bin");
        let staged = bin_dir.join(format!("surgemq-{runtime}.{}.tmp", std::process::id()));
        std::fs::copy(&built, &staged)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
        let version = spawn_retrying(Command::new(&staged).arg("--version"))
            .wait_with_output()
            .expect("surgemq --version");
        if String::from_utf8_lossy(&version.stdout).contains(&wanted) {
            let binary = bin_dir.join(format!("surgemq-{runtime}{}", std::env::consts::EXE_SUFFIX));
            std::fs::rename(&staged, &binary).expect("cannot rename the staged binary");
            return binary;
        }
        let _ = std::fs::remove_file(&staged);
    }
    panic!("{} never came out built for {runtime}", built.display());
}

/// Starts `command` with piped output, retrying "text file busy": a binary copied a moment ago
/// may still be open for writing in a child forked meanwhile by another test thread.
fn spawn_retrying(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Ok(child) => return child,
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                attempts += 1;
                thread::sleep(POLL);
            }
            Err(e) => panic!("cannot start {command:?}: {e}"),
        }
    }
}

/// Writes a line to the process's stderr, past the test harness's capture: it must show.
fn note(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Third-party clients.

/// A third-party client a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `mosquitto_pub` (Debian package mosquitto-clients).
    MosquittoPub,
    /// `mosquitto_sub` (Debian package mosquitto-clients).
    MosquittoSub,
    /// `paho_c_pub` (Debian package paho.mqtt.c-examples).
    PahoCPub,
    /// `paho_c_sub` (Debian package paho.mqtt.c-examples).
    PahoCSub,
    /// `python3` with paho-mqtt 2 (`python3 -m pip install paho-mqtt`).
    PahoPython,
}

impl Tool {
    const ALL: [Self; 5] = [
        Self::MosquittoPub,
        Self::MosquittoSub,
        Self::PahoCPub,
        Self::PahoCSub,
        Self::PahoPython,
    ];

    fn program(self) -> &'static str {
        match self {
            Self::MosquittoPub => "mosquitto_pub",
            Self::MosquittoSub => "mosquitto_sub",
            Self::PahoCPub => "paho_c_pub",
            Self::PahoCSub => "paho_c_sub",
            Self::PahoPython => "python3",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::PahoPython => "python3 with paho-mqtt >= 2",
            other => other.program(),
        }
    }

    /// Where the tool is installed (and, for Python, that paho-mqtt 2 imports), looked up once.
    pub fn path(self) -> Option<&'static Path> {
        static FOUND: OnceLock<[Option<PathBuf>; 5]> = OnceLock::new();
        let found = FOUND.get_or_init(|| Self::ALL.map(Self::locate));
        let index = Self::ALL.iter().position(|tool| *tool == self)?;
        found[index].as_deref()
    }

    fn locate(self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let program = std::env::split_paths(&path)
            .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
            .map(|dir| dir.join(self.program()))
            .find(|candidate| candidate.is_file())?;
        if self == Self::PahoPython {
            let check = "import paho.mqtt.client as mqtt; mqtt.CallbackAPIVersion.VERSION2";
            let finished = run(
                "python3 (paho-mqtt check)",
                Command::new(&program).args(["-c", check]),
            );
            if !finished.status.success() {
                return None;
            }
        }
        Some(program)
    }

    fn must(self) -> &'static Path {
        self.path()
            .unwrap_or_else(|| panic!("{} is not installed", self.describe()))
    }
}

/// `true` when every tool is installed. Otherwise prints a `SKIPPED` line and returns `false`,
/// or panics when `SURGEMQ_REQUIRE_INTEROP=1`.
fn tools_present(tools: &[Tool]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|tool| tool.path().is_none())
        .map(|tool| tool.describe())
        .collect();
    if missing.is_empty() {
        return true;
    }
    // libtest names each test's thread after the test.
    let test = thread::current().name().unwrap_or("e2e").to_owned();
    let message = format!("{test}: {} not installed", missing.join(", "));
    if std::env::var("SURGEMQ_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{message} (SURGEMQ_REQUIRE_INTEROP=1)");
    }
    note(&format!(
        "SKIPPED {message}; set SURGEMQ_REQUIRE_INTEROP=1 to make this a failure"
    ));
    false
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child process whose stdout lines and stderr text are collected as they come; killed and
/// reaped when dropped.
pub struct Proc {
    label: String,
    child: Mutex<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// A process that ran to its end.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Proc {
    /// Starts `command`; `label` names it in failure messages.
    pub fn spawn(label: &str, command: &mut Command) -> Self {
        let mut child = spawn_retrying(command);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect_lines(child.stdout.take().expect("piped"), Arc::clone(&stdout)),
            collect_text(child.stderr.take().expect("piped"), Arc::clone(&stderr)),
        ];
        Self {
            label: label.to_owned(),
            child: Mutex::new(child),
            stdout,
            stderr,
            readers,
        }
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many printed lines equal `line`.
    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits at most `timeout` for a printed line that satisfies `wanted`.
    pub fn wait_for_line(&self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        wait_until(timeout, || self.lines().iter().any(|line| wanted(line)))
    }

    /// Waits at most `timeout` for stderr to satisfy `wanted`.
    fn wait_for_stderr(&self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if wanted(&self.stderr()) {
                return true;
            }
            if Instant::now() >= deadline || self.exited() {
                // A last look: the output may have come just before the exit.
                return wanted(&self.stderr());
            }
            thread::sleep(POLL);
        }
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How it ended, if it did.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().expect("try_wait")
    }

    fn exited(&self) -> bool {
        self.exit_status().is_some()
    }

    /// Waits for the exit (at most `PROCESS_BOUND`) and for the last of its output.
    pub fn finish(mut self) -> Finished {
        let Some(status) = self.wait_exit(PROCESS_BOUND) else {
            panic!(
                "{} still running after {PROCESS_BOUND:?}\n{}",
                self.label,
                self.describe()
            );
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Finished {
            status,
            stdout: self.lines().join("\n"),
            stderr: self.stderr(),
        }
    }

    /// SIGTERM (by `kill -TERM PID`; this crate has no `unsafe` for `libc::kill`). Does not
    /// wait: see [`Proc::wait_exit`].
    pub fn terminate(&self) {
        let mut child = self.child();
        // Not reaped yet, so the id is still this process's.
        if matches!(child.try_wait(), Ok(None)) {
            let pid = child.id().to_string();
            let sent = Command::new("kill")
                .args(["-TERM", &pid])
                .stdin(Stdio::null())
                .status();
            assert!(
                sent.is_ok_and(|status| status.success()),
                "kill -TERM {pid} failed"
            );
        }
    }

    /// SIGKILL (on Unix), and reaps it.
    pub fn kill(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Its name, output and error output, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "--- {} stdout:\n{}\n--- {} stderr:\n{}",
            self.label,
            self.lines().join("\n"),
            self.label,
            self.stderr()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect_lines(pipe: ChildStdout, into: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            into.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(text);
            line.clear();
        }
    })
}

fn collect_text(mut pipe: ChildStderr, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
            into.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&text);
        }
    })
}

/// Runs `command` to its end (killed as hung after `PROCESS_BOUND`).
fn run(label: &str, command: &mut Command) -> Finished {
    Proc::spawn(label, command).finish()
}

/// Polls `done` until it holds or `timeout` passes; `done`'s last answer.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return done();
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// The broker process.

/// Starts `surgemq ARGS --data-dir DATA -v` and waits until it has bound its listeners;
/// returns it with its ports, or the process if it exited first.
fn launch(runtime: Runtime, args: &[String], data: &Path) -> Result<(Proc, Vec<u16>), Proc> {
    let mut command = Command::new(runtime.broker_binary());
    command.args(args).arg("--data-dir").arg(data).arg("-v");
    let process = Proc::spawn(&format!("surgemq ({runtime})"), &mut command);
    // The start-up log names every bound address, then who may connect.
    if !process.wait_for_stderr(|log| log.contains(" auth: "), PROCESS_BOUND) {
        process.kill();
        return Err(process);
    }
    let ports = process
        .stderr()
        .lines()
        .filter_map(|line| line.split_once("listening on ")?.1.split_once(' '))
        .filter_map(|(address, _)| address.parse::<SocketAddr>().ok())
        .map(|address| address.port())
        .collect::<Vec<_>>();
    assert!(!ports.is_empty(), "no listener in\n{}", process.describe());
    Ok((process, ports))
}

/// A running `surgemq`, its log (stderr, at debug level) collected; killed when dropped.
///
/// Each broker has its own data directory (durable persistence, the default), removed with
/// it. It can be stopped ([`Broker::kill9`], [`Broker::stop`]) and started again on the same
/// data directory ([`Broker::restart`]) — on the same port when it was started with `-p`.
pub struct Broker {
    runtime: Runtime,
    process: Proc,
    ports: Vec<u16>,
    /// The arguments it runs with (before `--data-dir` and `-v`); `-p 0` is replaced by the
    /// port it got, so that a restart binds the same one.
    args: Vec<String>,
    data: tempfile::TempDir,
    /// The logs of the runs before the current one, for failure messages.
    earlier_logs: String,
    /// Runs whose log is in `earlier_logs`.
    earlier_runs: usize,
    restarts: usize,
    /// Restart attempts that found the port still taken.
    rebind_retries: usize,
}

/// How long a restart keeps trying to bind a port that is still taken.
const REBIND_BOUND: Duration = Duration::from_secs(10);

impl Broker {
    /// `surgemq -p 0`: one plain listener on a free 127.0.0.1 port, default settings.
    pub fn plain(runtime: Runtime) -> Self {
        Self::start(runtime, &["-p", "0"])
    }

    /// `surgemq -p 0 EXTRA...` (e.g. `--persistence memory`).
    pub fn plain_with(runtime: Runtime, extra: &[&str]) -> Self {
        Self::start(runtime, &[&["-p", "0"][..], extra].concat())
    }

    /// `surgemq -c dir/surgemq.toml` with `config` (listeners should bind `127.0.0.1:0`).
    pub fn with_config(runtime: Runtime, dir: &Path, config: &str) -> Self {
        let path = dir.join("surgemq.toml");
        std::fs::write(&path, config).expect("cannot write the config file");
        Self::start(runtime, &["-c", path.to_str().expect("a UTF-8 temp path")])
    }

    fn start(runtime: Runtime, args: &[&str]) -> Self {
        let data = temp_dir();
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (process, ports) = match launch(runtime, &args, data.path()) {
            Ok(started) => started,
            Err(process) => panic!(
                "surgemq ({runtime}) {args:?} did not start\n{}",
                process.describe()
            ),
        };
        // A restart binds the same port.
        if let Some(at) = args.iter().position(|a| a == "-p")
            && let Some(port) = args.get_mut(at + 1)
        {
            *port = ports[0].to_string();
        }
        Self {
            runtime,
            process,
            ports,
            args,
            data,
            earlier_logs: String::new(),
            earlier_runs: 0,
            restarts: 0,
            rebind_retries: 0,
        }
    }

    /// The broker's data directory (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// How many times [`Broker::restart`] started it again.
    pub fn restarts(&self) -> usize {
        self.restarts
    }

    /// How many restart attempts found the port still taken (and were retried).
    pub fn rebind_retries(&self) -> usize {
        self.rebind_retries
    }

    /// SIGKILL: the broker dies at once, with no chance to write anything more (reaped before
    /// this returns).
    pub fn kill9(&self) {
        self.process.kill();
    }

    /// SIGTERM, then waits for the graceful shutdown (at most `PROCESS_BOUND`); fails unless
    /// it exits with status 0.
    pub fn stop(&self) {
        self.process.terminate();
        match self.process.wait_exit(PROCESS_BOUND) {
            Some(status) if status.success() => {}
            Some(status) => self.fail(&format!("exited with {status} after SIGTERM")),
            None => {
                self.process.kill();
                self.fail(&format!("still running {PROCESS_BOUND:?} after SIGTERM"));
            }
        }
    }

    /// Starts the broker again, after [`Broker::kill9`] or [`Broker::stop`], with the same
    /// arguments and data directory: on the same port when it was started with `-p`. A port
    /// still taken right after the kill (the listener has `SO_REUSEADDR`, but a client's
    /// outgoing connection may hold the number for a moment) is retried for at most
    /// `REBIND_BOUND`.
    pub fn restart(&mut self) {
        if !self.process.exited() {
            self.fail("restart() while the broker still runs: kill9() or stop() it first");
        }
        let deadline = Instant::now() + REBIND_BOUND;
        loop {
            match launch(self.runtime, &self.args, self.data.path()) {
                Ok((process, ports)) => {
                    self.retire(process);
                    if self.args.iter().any(|a| a == "-p") && ports != self.ports {
                        self.fail(&format!(
                            "restarted on {ports:?} instead of {:?}",
                            self.ports
                        ));
                    }
                    self.ports = ports;
                    self.restarts += 1;
                    return;
                }
                Err(process) => {
                    let log = process.stderr();
                    let taken = log.contains("cannot listen on") && log.contains("in use");
                    self.retire(process);
                    if !taken || Instant::now() >= deadline {
                        self.fail("did not start again");
                    }
                    self.rebind_retries += 1;
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// [`Broker::kill9`] then [`Broker::restart`].
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.restart();
    }

    /// Makes `process` the current run, keeping the log of the one it replaces.
    fn retire(&mut self, process: Proc) {
        let old = std::mem::replace(&mut self.process, process);
        old.kill();
        self.earlier_runs += 1;
        let run = self.earlier_runs;
        let status = old
            .exit_status()
            .map_or_else(|| "running".to_owned(), |s| s.to_string());
        self.earlier_logs
            .push_str(&format!("--- run {run} ({status}):\n{}", old.stderr()));
    }

    /// Starts another `surgemq` with this broker's arguments and data directory, which must
    /// refuse to start (this one stopped first), and returns how it ended. Fails if it starts.
    pub fn start_refused(&self) -> Finished {
        if !self.process.exited() {
            self.fail("start_refused() while the broker still runs");
        }
        match launch(self.runtime, &self.args, self.data.path()) {
            Ok((process, _)) => {
                process.kill();
                self.fail(&format!("it started:\n{}", process.describe()))
            }
            Err(process) => process.finish(),
        }
    }

    /// `surgemq store ACTION --data-dir DIR` on this broker's data directory, run to its end.
    pub fn store_command(&self, action: &str) -> Finished {
        run(
            &format!("surgemq store {action}"),
            Command::new(self.runtime.broker_binary())
                .args(["store", action, "--data-dir"])
                .arg(self.data.path()),
        )
    }

    /// The first listener's port.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// Every listener's port, in the config's order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The log so far: earlier runs (before restarts) first.
    pub fn log(&self) -> String {
        if self.earlier_logs.is_empty() {
            return self.process.stderr();
        }
        let run = self.earlier_runs + 1;
        format!(
            "{}--- run {run} (current):\n{}",
            self.earlier_logs,
            self.process.stderr()
        )
    }

    /// Panics with `what` and the broker's log.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "[runtime {}] {what}\n--- broker log:\n{}",
            self.runtime,
            self.log()
        )
    }

    /// Fails unless the process is still running: bad input must never crash it.
    pub fn assert_alive(&self) {
        if let Some(status) = self.process.exit_status() {
            self.fail(&format!("the broker exited: {status}"));
        }
    }

    /// The broker's peak resident memory (Linux only).
    fn peak_memory_kib(&self) -> Option<u64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.child().id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Fails with the process's output unless it exited successfully.
    fn expect_success(&self, finished: &Finished, what: &str) {
        if !finished.status.success() {
            self.fail(&format!("{what} failed: {finished:?}"));
        }
    }

    /// Fails unless `process` prints `line` within `WAIT`.
    fn expect_line(&self, process: &Proc, line: &str) {
        if !process.wait_for_line(|l| l == line, WAIT) {
            self.fail(&format!(
                "expected the line {line:?}\n{}",
                process.describe()
            ));
        }
    }

    /// Sends `probe` until `ready` holds; fails if `client` exits first, or after
    /// `PROCESS_BOUND`.
    fn probe_until(&self, client: &Proc, mut probe: impl FnMut(), mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + PROCESS_BOUND;
        loop {
            probe();
            if wait_until(PROBE_EVERY, &mut ready) {
                return;
            }
            if client.exited() {
                self.fail(&format!(
                    "exited before it was ready\n{}",
                    client.describe()
                ));
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "not ready after {PROCESS_BOUND:?}\n{}",
                    client.describe()
                ));
            }
        }
    }

    /// Publishes `payload` to `topic` from a raw client until `sub` prints a line ending in it.
    fn await_subscribed(&self, sub: &Proc, topic: &str, payload: &str) {
        self.probe_until(
            sub,
            || raw::publish(self.port(), topic, payload.as_bytes()),
            || {
                sub.lines()
                    .iter()
                    .any(|l| l.contains(topic) && l.ends_with(payload))
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Raw MQTT 3.1.1 over TCP, for probes and for bad input.

/// Hand-made MQTT 3.1.1 packets and socket helpers: the bytes are the point, so no codec.
pub mod raw {
    use std::io::{ErrorKind, Read as _, Write as _};
    use std::net::{Shutdown, TcpStream};
    use std::time::{Duration, Instant};

    use super::WAIT;

    /// CONNACK, session not present, accepted.
    pub const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
    /// PINGREQ.
    pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
    /// PINGRESP.
    pub const PINGRESP: [u8; 2] = [0xD0, 0x00];
    /// DISCONNECT.
    pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

    /// A packet: `first_byte`, the remaining length, `body`.
    pub fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![first_byte];
        let mut length = body.len();
        loop {
            let digit = (length % 128) as u8;
            length /= 128;
            bytes.push(if length > 0 { digit | 0x80 } else { digit });
            if length == 0 {
                break;
            }
        }
        bytes.extend_from_slice(body);
        bytes
    }

    fn push_str(body: &mut Vec<u8>, text: &str) {
        let length = u16::try_from(text.len()).expect("a short string");
        body.extend_from_slice(&length.to_be_bytes());
        body.extend_from_slice(text.as_bytes());
    }

    /// CONNECT, MQTT 3.1.1, clean session, no will, no credentials.
    pub fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
        let mut body = Vec::new();
        push_str(&mut body, "MQTT");
        body.push(4);
        body.push(0x02);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        push_str(&mut body, client_id);
        packet(0x10, &body)
    }

    /// PUBLISH at QoS 0, not retained.
    pub fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        push_str(&mut body, topic);
        body.extend_from_slice(payload);
        packet(0x30, &body)
    }

    /// SUBSCRIBE with packet id `packet_id` to one filter at QoS 0.
    pub fn subscribe_packet(packet_id: u16, filter: &str) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        push_str(&mut body, filter);
        body.push(0);
        packet(0x82, &body)
    }

    /// A TCP connection to 127.0.0.1:`port`, Nagle off.
    pub fn open(port: u16) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
    }

    /// Reads exactly `n` bytes within `WAIT`.
    pub fn read_exactly(stream: &mut TcpStream, n: usize) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + WAIT;
        let mut bytes = vec![0; n];
        let mut filled = 0;
        while filled < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{filled} of {n} bytes after {WAIT:?}: {bytes:02x?}"
                ));
            }
            stream.set_read_timeout(Some(left)).expect("read timeout");
            match stream.read(&mut bytes[filled..]) {
                Ok(0) => return Err(format!("closed after {filled} of {n} bytes")),
                Ok(read) => filled += read,
                Err(e) if is_timeout(e.kind()) => {}
                Err(e) => return Err(format!("{e} after {filled} of {n} bytes")),
            }
        }
        Ok(bytes)
    }

    /// A connection that sent CONNECT (keep alive off) and got CONNACK "accepted".
    pub fn connected(port: u16, client_id: &str) -> TcpStream {
        let mut stream = open(port);
        stream
            .write_all(&connect_packet(client_id, 0))
            .expect("write CONNECT");
        match read_exactly(&mut stream, 4) {
            Ok(connack) if connack == CONNACK_ACCEPTED => stream,
            other => panic!("{client_id}: no CONNACK 0: {other:?}"),
        }
    }

    /// Connects, publishes at QoS 0 and disconnects, waiting until the broker closed.
    pub fn publish(port: u16, topic: &str, payload: &[u8]) {
        let mut stream = connected(port, "e2e-raw-publisher");
        let mut bytes = publish_packet(topic, payload);
        bytes.extend_from_slice(&DISCONNECT);
        stream.write_all(&bytes).expect("write PUBLISH");
        let _ = stream.shutdown(Shutdown::Write);
        let _ = wait_closed(&mut stream, WAIT);
    }

    /// How a connection ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Ending {
        /// The broker closed it (read returned 0).
        Closed,
        /// The broker reset it.
        Reset,
        /// Still open at the deadline.
        StillOpen,
    }

    /// Reads (and drops) whatever comes until the connection ends or `within` passes.
    pub fn wait_closed(stream: &mut TcpStream, within: Duration) -> Ending {
        let deadline = Instant::now() + within;
        let mut buffer = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ending::StillOpen;
            }
            stream.set_read_timeout(Some(left)).expect("read timeout");
            match stream.read(&mut buffer) {
                Ok(0) => return Ending::Closed,
                Ok(_) => {}
                Err(e) if is_timeout(e.kind()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::ConnectionAborted
                            | ErrorKind::BrokenPipe
                    ) =>
                {
                    return Ending::Reset;
                }
                Err(e) => panic!("reading a connection: {e}"),
            }
        }
    }

    fn is_timeout(kind: ErrorKind) -> bool {
        matches!(
            kind,
            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates.

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// Writes into `dir`: `ca.pem`; `server.pem`/`server.key` (127.0.0.1 and localhost) and
/// `client.pem`/`client.key` (common name `alice`), both signed by it; and `other-ca.pem` with
/// `other-client.pem`/`other-client.key`, a CA nobody trusts and a client it signed.
fn write_certificates(dir: &Path) {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).expect("cannot write a certificate");
    };
    let ca = |common_name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("self-signed CA")
    };
    let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>,
                name: &str,
                sans: &[&str],
                purpose: ExtendedKeyUsagePurpose,
                common_name: &str| {
        let sans: Vec<String> = sans.iter().map(|san| (*san).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, issuer).expect("signed leaf");
        write(&format!("{name}.pem"), pem("CERTIFICATE", cert.der()));
        write(
            &format!("{name}.key"),
            pem("PRIVATE KEY", &key.serialize_der()),
        );
    };
    let trusted = ca("SurgeMQ e2e CA");
    write("ca.pem", pem("CERTIFICATE", trusted.der()));
    leaf(
        &trusted,
        "server",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
        "localhost",
    );
    leaf(
        &trusted,
        "client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        "alice",
    );
    let other = ca("Some other CA");
    write("other-ca.pem", pem("CERTIFICATE", other.der()));
    leaf(
        &other,
        "other-client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        "mallory",
    );
}

// ---------------------------------------------------------------------------------------------
// Client command lines.

/// The MQTT version a third-party client is told to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V311,
}

impl MqttVersion {
    fn mosquitto(self) -> &'static str {
        match self {
            Self::V31 => "mqttv31",
            Self::V311 => "mqttv311",
        }
    }
}

/// `mosquitto_sub -h 127.0.0.1 -p PORT ARGS`, run in `dir` (for certificate paths). Bounded by
/// `-W 30` unless `args` set another `-W`, in case the test process itself dies.
fn mosquitto_sub(dir: &Path, port: u16, args: &[&str]) -> Proc {
    let mut command = Command::new(Tool::MosquittoSub.must());
    command
        .current_dir(dir)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    if !args.contains(&"-W") {
        command.args(["-W", "30"]);
    }
    Proc::spawn("mosquitto_sub", &mut command)
}

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS` in `dir`, run to its end.
fn mosquitto_pub(dir: &Path, port: u16, args: &[&str]) -> Finished {
    run(
        "mosquitto_pub",
        Command::new(Tool::MosquittoPub.must())
            .current_dir(dir)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
    )
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("cannot create a temp dir")
}

/// Publishes `end` from a raw client and waits until `sub` printed `line`: whatever was sent to
/// `sub` before it is in.
fn end_marker(broker: &Broker, sub: &Proc, topic: &str, line: &str) {
    raw::publish(broker.port(), topic, b"end");
    broker.expect_line(sub, line);
}

// ---------------------------------------------------------------------------------------------
// Scenarios: mosquitto_pub / mosquitto_sub.

/// A message from `mosquitto_pub` reaches `mosquitto_sub` once, both speaking `version` at
/// `qos`, and arrives at that QoS with RETAIN 0.
pub fn mosquitto_round_trip(runtime: Runtime, qos: u8, version: MqttVersion) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let broker = Broker::plain(runtime);
    let port = broker.port();
    let (v, q) = (version.mosquitto(), qos.to_string());
    let sub = mosquitto_sub(
        dir.path(),
        port,
        &["-V", v, "-q", &q, "-t", "rt/#", "-F", "%q %r %t %p"],
    );
    broker.await_subscribed(&sub, "rt/probe", "probe");

    let payload = format!("hello at QoS {qos} over {v}");
    let published = mosquitto_pub(
        dir.path(),
        port,
        &["-V", v, "-q", &q, "-t", "rt/msg", "-m", &payload],
    );
    broker.expect_success(&published, "mosquitto_pub");
    let expected = format!("{qos} 0 rt/msg {payload}");
    broker.expect_line(&sub, &expected);
    end_marker(&broker, &sub, "rt/end", "0 0 rt/end end");
    if sub.count(&expected) != 1 {
        broker.fail(&format!("not exactly once:\n{}", sub.describe()));
    }
}

/// `-r` stores a retained message: a subscriber then present gets it with RETAIN 0
/// [MQTT-3.3.1-9], a later one with RETAIN 1 [MQTT-3.3.1-8]; `-r -n` clears it
/// [MQTT-3.3.1-10]: the subscriber present gets the empty message, a new one gets nothing.
pub fn mosquitto_retained_set_and_clear(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let broker = Broker::plain(runtime);
    let port = broker.port();
    let sub_args = ["-q", "1", "-t", "ret/#", "-F", "%r %t %p"];
    let present = mosquitto_sub(dir.path(), port, &sub_args);
    broker.await_subscribed(&present, "ret/probe", "probe");

    let set = mosquitto_pub(
        dir.path(),
        port,
        &["-r", "-q", "1", "-t", "ret/a", "-m", "kept"],
    );
    broker.expect_success(&set, "mosquitto_pub -r");
    broker.expect_line(&present, "0 ret/a kept");

    let late = mosquitto_sub(dir.path(), port, &[&sub_args[..], &["-C", "1"]].concat());
    let late = late.finish();
    if late.stdout != "1 ret/a kept" || !late.status.success() {
        broker.fail(&format!("a late subscriber got {late:?}"));
    }

    let clear = mosquitto_pub(dir.path(), port, &["-r", "-n", "-q", "1", "-t", "ret/a"]);
    broker.expect_success(&clear, "mosquitto_pub -r -n");
    broker.expect_line(&present, "0 ret/a ");

    // Retained messages come right after the SUBACK, so before the first probe.
    let after = mosquitto_sub(dir.path(), port, &sub_args);
    broker.await_subscribed(&after, "ret/probe", "probe");
    if after.lines().iter().any(|line| line.starts_with("1 ")) {
        broker.fail(&format!(
            "still retained after -r -n:\n{}",
            after.describe()
        ));
    }
}

/// `+` matches exactly one level, `#` any number of levels including none (the parent
/// itself), and no filter matches a topic with more or fewer levels than it allows.
pub fn mosquitto_wildcards(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let broker = Broker::plain(runtime);
    let port = broker.port();
    let subscribe =
        |filter: &str| mosquitto_sub(dir.path(), port, &["-q", "1", "-t", filter, "-F", "%t %p"]);
    let subs = [
        ("sport/+/score", subscribe("sport/+/score")),
        ("sport/#", subscribe("sport/#")),
        ("+/+/score", subscribe("+/+/score")),
    ];
    for (_, sub) in &subs {
        broker.await_subscribed(sub, "sport/probe/score", "probe");
    }
    let topics = [
        "sport/tennis/score",
        "sport/golf/player/1",
        "sport",
        "sport/tennis",
        "news/x/score",
        "sports/tennis/score",
        "sport/tennis/score/final",
    ];
    for topic in topics {
        let published = mosquitto_pub(dir.path(), port, &["-q", "1", "-t", topic, "-m", "m"]);
        broker.expect_success(&published, "mosquitto_pub");
    }
    let expected: [&[&str]; 3] = [
        &["sport/tennis/score"],
        &[
            "sport/tennis/score",
            "sport/golf/player/1",
            "sport",
            "sport/tennis",
            "sport/tennis/score/final",
        ],
        &["sport/tennis/score", "news/x/score", "sports/tennis/score"],
    ];
    raw::publish(port, "sport/end/score", b"end");
    for ((filter, sub), expected) in subs.iter().zip(expected) {
        broker.expect_line(sub, "sport/end/score end");
        let got: Vec<String> = sub
            .lines()
            .into_iter()
            .filter(|line| !line.ends_with(" probe") && !line.ends_with(" end"))
            .collect();
        let expected: Vec<String> = expected.iter().map(|topic| format!("{topic} m")).collect();
        if got != expected {
            broker.fail(&format!("{filter}: got {got:?}, expected {expected:?}"));
        }
    }
}

/// Starts a `mosquitto_sub` on `will/#`, ready.
fn will_watcher(broker: &Broker, dir: &Path) -> Proc {
    let watcher = mosquitto_sub(
        dir,
        broker.port(),
        &["-q", "1", "-t", "will/#", "-F", "%t %p"],
    );
    broker.await_subscribed(&watcher, "will/probe", "probe");
    watcher
}

/// The arguments of a `mosquitto_sub` holding a will on `will/holder`.
const WILL_HOLDER: [&str; 14] = [
    // mosquitto_sub's smallest keep alive; the kill closes the socket anyway.
    "-k",
    "5",
    "-q",
    "1",
    "-t",
    "hold/t",
    "-F",
    "%t %p",
    "--will-topic",
    "will/holder",
    "--will-payload",
    "holder vanished",
    "--will-qos",
    "1",
];

/// A `mosquitto_sub -k 5` holding a will is SIGKILLed: the will is published.
pub fn mosquitto_will_on_kill(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let broker = Broker::plain(runtime);
    let watcher = will_watcher(&broker, dir.path());
    let holder = mosquitto_sub(dir.path(), broker.port(), &WILL_HOLDER);
    broker.await_subscribed(&holder, "hold/t", "probe");
    holder.kill();
    broker.expect_line(&watcher, "will/holder holder vanished");
}

/// A `mosquitto_sub` holding a will exits normally (DISCONNECT): no will [MQTT-3.1.2-10].
pub fn mosquitto_no_will_on_clean_disconnect(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let broker = Broker::plain(runtime);
    let watcher = will_watcher(&broker, dir.path());
    // `-C 1`: exits (with DISCONNECT) after its first message.
    let holder = mosquitto_sub(
        dir.path(),
        broker.port(),
        &[&WILL_HOLDER[..], &["-C", "1"]].concat(),
    );
    broker.probe_until(
        &holder,
        || raw::publish(broker.port(), "hold/t", b"probe"),
        || holder.exited(),
    );
    if !holder.exit_status().is_some_and(|status| status.success()) {
        broker.fail(&format!("the will holder failed\n{}", holder.describe()));
    }
    // A will sent by mistake would go out on the close, before this marker.
    thread::sleep(Duration::from_millis(200));
    end_marker(&broker, &watcher, "will/marker", "will/marker end");
    if watcher
        .lines()
        .iter()
        .any(|line| line.starts_with("will/holder"))
    {
        broker.fail(&format!(
            "will published after a DISCONNECT\n{}",
            watcher.describe()
        ));
    }
}

const PERSISTENT_SUB: [&str; 8] = ["-c", "-q", "1", "-t", "persist/t", "-F", "%q %t %p", "-i"];

/// `mosquitto_sub -c -i ID -q 1` subscribes and leaves (`-E`); a QoS 1 message published
/// while it is away is delivered when it comes back with the same id.
pub fn mosquitto_persistent_session(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let broker = Broker::plain(runtime);
    let port = broker.port();
    let id = "e2e-persistent";
    let first = mosquitto_sub(
        dir.path(),
        port,
        &[&PERSISTENT_SUB[..], &[id, "-E"]].concat(),
    );
    let first = first.finish();
    broker.expect_success(&first, "mosquitto_sub -c -E");

    let published = mosquitto_pub(
        dir.path(),
        port,
        &["-q", "1", "-t", "persist/t", "-m", "sent while away"],
    );
    broker.expect_success(&published, "mosquitto_pub");

    let back = mosquitto_sub(
        dir.path(),
        port,
        &[&PERSISTENT_SUB[..], &[id, "-C", "1", "-W", "5"]].concat(),
    );
    let back = back.finish();
    if back.stdout != "1 persist/t sent while away" {
        broker.fail(&format!("the returning session got {back:?}"));
    }
}

/// Like [`mosquitto_persistent_session`], but the subscriber is SIGKILLed and the message
/// is published at once, maybe before the broker noticed: it must come on return all the same.
pub fn mosquitto_persistent_session_after_kill(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let broker = Broker::plain(runtime);
    let port = broker.port();
    let id = "e2e-persistent-killed";
    let first = mosquitto_sub(dir.path(), port, &[&PERSISTENT_SUB[..], &[id]].concat());
    broker.await_subscribed(&first, "persist/t", "probe");
    first.kill();

    let published = mosquitto_pub(
        dir.path(),
        port,
        &["-q", "1", "-t", "persist/t", "-m", "sent after a crash"],
    );
    broker.expect_success(&published, "mosquitto_pub");
    let back = mosquitto_sub(dir.path(), port, &[&PERSISTENT_SUB[..], &[id]].concat());
    broker.expect_line(&back, "1 persist/t sent after a crash");
}

// ---------------------------------------------------------------------------------------------
// Scenarios: persistence across broker restarts (durable mode, the default, unless stated).

/// Publishes `payload` to `topic` at QoS 1 with `mosquitto_pub EXTRA`; in durable mode the
/// PUBACK it waits for means the message is on disk.
fn publish_qos1(broker: &Broker, dir: &Path, topic: &str, payload: &str, extra: &[&str]) {
    let published = mosquitto_pub(
        dir,
        broker.port(),
        &[extra, &["-q", "1", "-t", topic, "-m", payload]].concat(),
    );
    broker.expect_success(&published, &format!("mosquitto_pub {extra:?} -t {topic}"));
}

/// A new `mosquitto_sub` on `PREFIX/#` that gets its retained messages and then a probe: the
/// retained messages it got, as `%r %t %p` lines, sorted.
/// Retained messages come right after the SUBACK, so before the probe.
fn retained_now(broker: &Broker, dir: &Path, prefix: &str) -> Vec<String> {
    let sub = mosquitto_sub(
        dir,
        broker.port(),
        &["-q", "1", "-t", &format!("{prefix}/#"), "-F", "%r %t %p"],
    );
    broker.await_subscribed(&sub, &format!("{prefix}/probe"), "probe");
    let mut retained: Vec<String> = sub
        .lines()
        .into_iter()
        .filter(|line| line.starts_with("1 "))
        .collect();
    retained.sort();
    retained
}

/// `mosquitto_sub -c -i ID -q 1 -t FILTER -E`: makes a persistent session subscribed to `filter`
/// at QoS 1 and leaves. Returns the arguments that come back to it (`-c -i ID -q 1 -t FILTER`,
/// printing `%q %t %p`).
fn persistent_session<'a>(
    broker: &Broker,
    dir: &Path,
    id: &'a str,
    filter: &'a str,
) -> [&'a str; 9] {
    let sub_args = ["-c", "-i", id, "-q", "1", "-t", filter, "-F", "%q %t %p"];
    let first = mosquitto_sub(dir, broker.port(), &[&sub_args[..], &["-E"]].concat());
    let first = first.finish();
    broker.expect_success(&first, "mosquitto_sub -c -E");
    sub_args
}

/// 3.1.1 [MQTT-3.1.2-4] [MQTT-3.1.2-5] across broker restarts: `mosquitto_sub -c -i ID -q 1`
/// subscribes and leaves; QoS 1 messages published while it is away — before a graceful
/// restart (SIGTERM), between it and a kill -9 and restart, and after that — are all kept in
/// its session and delivered, in order, when it comes back with the same id.
pub fn mosquitto_session_survives_restart(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let mut broker = Broker::plain(runtime);
    let sub_args = persistent_session(&broker, dir.path(), "e2e-away-restart", "away/#");

    publish_qos1(&broker, dir.path(), "away/1", "before the restarts", &[]);
    broker.stop();
    broker.restart();
    publish_qos1(
        &broker,
        dir.path(),
        "away/2",
        "after a graceful restart",
        &[],
    );
    broker.kill9_and_restart();
    publish_qos1(&broker, dir.path(), "away/3", "after kill -9", &[]);

    let back = mosquitto_sub(
        dir.path(),
        broker.port(),
        &[&sub_args[..], &["-C", "3", "-W", "10"]].concat(),
    );
    let back = back.finish();
    let expected = "1 away/1 before the restarts\n\
        1 away/2 after a graceful restart\n\
        1 away/3 after kill -9";
    if back.stdout != expected {
        broker.fail(&format!(
            "the returning session got\n{}\nexpected\n{expected}\n({back:?})",
            back.stdout
        ));
    }
}

/// 3.1.1 [MQTT-3.3.1-5]: retained messages are kept for future subscribers, also across
/// kill -9 and restart; [MQTT-3.3.1-10] [MQTT-3.3.1-11]: one cleared (empty retained
/// PUBLISH) stays cleared after the next kill -9 and restart.
pub fn retained_survives_restart(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let mut broker = Broker::plain(runtime);
    publish_qos1(&broker, dir.path(), "keep/a", "kept", &["-r"]);
    publish_qos1(&broker, dir.path(), "keep/b", "cleared later", &["-r"]);

    broker.kill9_and_restart();
    let after_kill = retained_now(&broker, dir.path(), "keep");
    if after_kill != ["1 keep/a kept", "1 keep/b cleared later"] {
        broker.fail(&format!("retained after kill -9: {after_kill:?}"));
    }

    let clear = mosquitto_pub(
        dir.path(),
        broker.port(),
        &["-r", "-n", "-q", "1", "-t", "keep/b"],
    );
    broker.expect_success(&clear, "mosquitto_pub -r -n");
    broker.kill9_and_restart();
    let after_clear = retained_now(&broker, dir.path(), "keep");
    if after_clear != ["1 keep/a kept"] {
        broker.fail(&format!(
            "retained after clearing keep/b, kill -9: {after_clear:?}"
        ));
    }
}

/// A damaged store file (garbage over its first bytes; then, after a repair, a file cut in
/// half) is refused: `surgemq` exits with status 1 at once (no panic, no crash loop), naming
/// the file and `surgemq store repair`; `surgemq store check` exits 1; `surgemq store
/// repair` exits 0 and moves the file aside as `surgemq.redb.damaged-*`; then `surgemq`
/// starts and serves.
pub fn damaged_store_is_refused_with_advice(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let mut broker = Broker::plain(runtime);
    let file = broker.data_dir().join("surgemq.redb");
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 2] = [
        ("garbage over its first 4 KiB", |bytes| {
            let garbage = b"this is not a redb file. ";
            let end = bytes.len().min(4096);
            for (i, byte) in bytes[..end].iter_mut().enumerate() {
                *byte = garbage[i % garbage.len()];
            }
        }),
        ("cut in half", |bytes| bytes.truncate(bytes.len() / 2)),
    ];
    for (round, (damage, apply)) in damages.into_iter().enumerate() {
        // Something to keep, then a graceful stop: a healthy file, damaged below.
        publish_qos1(&broker, dir.path(), "kept/r", "retained", &["-r"]);
        broker.stop();
        let mut bytes = std::fs::read(&file)
            .unwrap_or_else(|e| broker.fail(&format!("{}: {e}", file.display())));
        apply(&mut bytes);
        std::fs::write(&file, &bytes).expect("cannot damage the store file");

        let refused = broker.start_refused();
        let stderr = &refused.stderr;
        let named = stderr.contains(&file.display().to_string());
        if refused.status.code() != Some(1)
            || !named
            || !stderr.contains("surgemq store repair")
            || stderr.contains("panicked")
        {
            broker.fail(&format!(
                "a store file {damage}: expected exit status 1 naming {} and \
                 `surgemq store repair`, got {refused:?}",
                file.display()
            ));
        }
        let check = broker.store_command("check");
        if check.status.code() != Some(1) {
            broker.fail(&format!("store check of a file {damage}: {check:?}"));
        }
        let repair = broker.store_command("repair");
        broker.expect_success(&repair, "surgemq store repair");
        let aside = std::fs::read_dir(broker.data_dir())
            .expect("read the data dir")
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("surgemq.redb.damaged-")
            })
            .count();
        if aside != round + 1 {
            broker.fail(&format!(
                "after repairing a file {damage}: {aside} surgemq.redb.damaged-* files, \
                 expected {}: {repair:?}",
                round + 1
            ));
        }
        let healthy = broker.store_command("check");
        broker.expect_success(&healthy, "surgemq store check after the repair");

        broker.restart();
        broker.assert_alive();
    }
    // And it serves: a QoS 1 round trip.
    let sub = mosquitto_sub(
        dir.path(),
        broker.port(),
        &["-q", "1", "-t", "kept/#", "-F", "%t %p"],
    );
    broker.await_subscribed(&sub, "kept/probe", "probe");
    publish_qos1(&broker, dir.path(), "kept/after", "repaired", &[]);
    broker.expect_line(&sub, "kept/after repaired");
}

/// With `--persistence memory` nothing is kept: a retained message and a persistent
/// session (with the QoS 1 message queued for it) are gone after a restart, even a graceful
/// one, and the data directory stays empty.
pub fn memory_mode_keeps_nothing(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let dir = temp_dir();
    let mut broker = Broker::plain_with(runtime, &["--persistence", "memory"]);
    let sub_args = persistent_session(&broker, dir.path(), "e2e-memory-only", "mem/away");
    publish_qos1(&broker, dir.path(), "mem/away", "queued in memory", &[]);
    publish_qos1(&broker, dir.path(), "mem/r", "retained in memory", &["-r"]);
    // It is kept while the broker runs.
    if retained_now(&broker, dir.path(), "mem") != ["1 mem/r retained in memory"] {
        broker.fail("the retained message is not there before the restart");
    }

    broker.stop();
    broker.restart();
    let retained = retained_now(&broker, dir.path(), "mem");
    if !retained.is_empty() {
        broker.fail(&format!(
            "retained after a restart in memory mode: {retained:?}"
        ));
    }
    // The session is gone: coming back gets nothing queued (it would come before the probe).
    let back = mosquitto_sub(dir.path(), broker.port(), &sub_args);
    broker.await_subscribed(&back, "mem/away", "probe");
    if back
        .lines()
        .iter()
        .any(|line| line.contains("queued in memory"))
    {
        broker.fail(&format!(
            "a session survived a restart in memory mode\n{}",
            back.describe()
        ));
    }
    let files: Vec<_> = std::fs::read_dir(broker.data_dir())
        .expect("read the data dir")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect();
    if !files.is_empty() {
        broker.fail(&format!("files in the data dir in memory mode: {files:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: Paho C and Paho Python.

/// A message from `paho_c_pub` reaches `paho_c_sub` once, both at `qos` (MQTT 3.1.1).
pub fn paho_c_round_trip(runtime: Runtime, qos: u8) {
    if !tools_present(&[Tool::PahoCSub, Tool::PahoCPub]) {
        return;
    }
    let broker = Broker::plain(runtime);
    let port = broker.port().to_string();
    let q = qos.to_string();
    let common = ["-h", "127.0.0.1", "-p", &port, "-q", &q];
    let sub = Proc::spawn(
        "paho_c_sub",
        Command::new(Tool::PahoCSub.must()).args(common).args([
            "-t",
            "paho/#",
            "-i",
            &format!("e2e-paho-sub-{qos}"),
        ]),
    );
    broker.await_subscribed(&sub, "paho/probe", "probe");

    let payload = format!("hello from paho c at QoS {qos}");
    // With -m it publishes once and exits (reading stdin instead, 1.3.11 never stops at EOF).
    let published = run(
        "paho_c_pub",
        Command::new(Tool::PahoCPub.must()).args(common).args([
            "-t",
            "paho/msg",
            "-m",
            &payload,
            "-i",
            &format!("e2e-paho-pub-{qos}"),
        ]),
    );
    broker.expect_success(&published, "paho_c_pub");
    // paho_c_sub prints "<payload length> <topic>\t<payload>".
    let expected = format!("{} paho/msg\t{payload}", payload.len());
    broker.expect_line(&sub, &expected);
    end_marker(&broker, &sub, "paho/end", "3 paho/end\tend");
    if sub.count(&expected) != 1 {
        broker.fail(&format!("not exactly once:\n{}", sub.describe()));
    }
}

/// Two paho-mqtt clients (subscriber and publisher) at one QoS; prints what the subscriber
/// got, one `topic payload qos retain` line per message. Argument: port, QoS.
const PAHO_PYTHON_ROUND_TRIP: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt

port, qos = int(sys.argv[1]), int(sys.argv[2])
events = {name: threading.Event() for name in ("sub", "suback", "pub", "end")}
problems, received = [], []

def wait(name):
    if not events[name].wait(10):
        sys.exit("timed out waiting for " + name + "; " + repr(problems))
    if problems:
        sys.exit(repr(problems))

def client(name, ready):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            problems.append(name + " refused: " + str(reason_code))
        events[ready].set()
    c.on_connect = on_connect
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    wait(ready)
    return c

def on_subscribe(client, userdata, mid, reason_codes, properties):
    if reason_codes[0].value != qos:
        problems.append("granted " + str(reason_codes[0]))
    events["suback"].set()

def on_message(client, userdata, message):
    received.append(message)
    if message.topic == "py/end":
        events["end"].set()

sub = client("e2e-py-sub-%d" % qos, "sub")
sub.on_subscribe = on_subscribe
sub.on_message = on_message
sub.subscribe("py/#", qos)
wait("suback")
pub = client("e2e-py-pub-%d" % qos, "pub")
for topic, payload in (("py/msg", b"hello from paho python"), ("py/end", b"end")):
    info = pub.publish(topic, payload, qos=qos)
    info.wait_for_publish(10)
    if not info.is_published():
        sys.exit("not published: " + topic)
wait("end")
for m in received:
    print(m.topic, m.payload.decode(), m.qos, int(m.retain))
pub.disconnect()
sub.disconnect()
pub.loop_stop()
sub.loop_stop()
"#;

/// A paho-mqtt (Python) publisher reaches a paho-mqtt subscriber once at `qos` (MQTT 3.1.1).
pub fn paho_python_round_trip(runtime: Runtime, qos: u8) {
    if !tools_present(&[Tool::PahoPython]) {
        return;
    }
    let broker = Broker::plain(runtime);
    let finished = run(
        "python3 (paho-mqtt)",
        Command::new(Tool::PahoPython.must())
            .args(["-c", PAHO_PYTHON_ROUND_TRIP])
            .args([broker.port().to_string(), qos.to_string()]),
    );
    let expected = format!("py/msg hello from paho python {qos} 0\npy/end end {qos} 0");
    if !finished.status.success() || finished.stdout != expected {
        broker.fail(&format!("expected\n{expected}\ngot {finished:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: TLS.

/// Listener 0: TLS; listener 1: TLS with client certificates required.
const TLS_CONFIG: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\n\
    tls = { cert = \"server.pem\", key = \"server.key\" }\n\n\
    [[listener]]\nbind = \"127.0.0.1:0\"\n\
    tls = { cert = \"server.pem\", key = \"server.key\", ca = \"ca.pem\", \
    require_client_cert = true }\n";

/// `mosquitto_sub` and `mosquitto_pub` with `tls_args` round trip a QoS 1 message on `port`.
fn tls_round_trip(broker: &Broker, dir: &Path, port: u16, tls_args: &[&str]) {
    let sub = mosquitto_sub(
        dir,
        port,
        &[tls_args, &["-q", "1", "-t", "tls/#", "-F", "%q %t %p"]].concat(),
    );
    let publish = |topic: &str, payload: &str, qos: &str| {
        mosquitto_pub(
            dir,
            port,
            &[tls_args, &["-q", qos, "-t", topic, "-m", payload]].concat(),
        )
    };
    broker.probe_until(
        &sub,
        || {
            let _ = publish("tls/probe", "probe", "0");
        },
        || sub.lines().iter().any(|line| line.ends_with(" probe")),
    );
    let published = publish("tls/msg", "secret", "1");
    broker.expect_success(&published, "mosquitto_pub over TLS");
    broker.expect_line(&sub, "1 tls/msg secret");
}

fn tls_setup(runtime: Runtime) -> (tempfile::TempDir, Broker) {
    let dir = temp_dir();
    write_certificates(dir.path());
    let broker = Broker::with_config(runtime, dir.path(), TLS_CONFIG);
    assert_eq!(broker.ports().len(), 2, "{}", broker.log());
    (dir, broker)
}

/// `mosquitto_pub`/`mosquitto_sub --cafile` over TLS.
pub fn tls_server_certificate(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let (dir, broker) = tls_setup(runtime);
    tls_round_trip(
        &broker,
        dir.path(),
        broker.ports()[0],
        &["--cafile", "ca.pem"],
    );
}

/// With `require_client_cert = true`: a client certificate from the CA gets in; none, or one
/// from another CA, is refused.
pub fn tls_client_certificate(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let (dir, broker) = tls_setup(runtime);
    let port = broker.ports()[1];
    let with = |cert: &'static str, key: &'static str| {
        ["--cafile", "ca.pem", "--cert", cert, "--key", key]
    };
    tls_round_trip(&broker, dir.path(), port, &with("client.pem", "client.key"));
    let message = ["-q", "1", "-t", "tls/x", "-m", "x"];
    for (what, tls_args) in [
        ("without a certificate", &["--cafile", "ca.pem"][..]),
        (
            "with a certificate from another CA",
            &with("other-client.pem", "other-client.key")[..],
        ),
    ] {
        let refused = mosquitto_pub(dir.path(), port, &[tls_args, &message].concat());
        if refused.status.success() {
            broker.fail(&format!("a client {what} got in: {refused:?}"));
        }
    }
    broker.assert_alive();
}

/// A client that trusts another CA refuses the broker's certificate; the broker serves on.
pub fn tls_wrong_ca_is_refused(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let (dir, broker) = tls_setup(runtime);
    let port = broker.ports()[0];
    let refused = mosquitto_pub(
        dir.path(),
        port,
        &[
            "--cafile",
            "other-ca.pem",
            "-q",
            "1",
            "-t",
            "tls/x",
            "-m",
            "x",
        ],
    );
    // mosquitto_pub's words for a certificate it does not trust, after "Error: " or in
    // "Unable to connect (...)" depending on when the handshake fails.
    if refused.status.success() || !refused.stderr.contains("A TLS error occurred.") {
        broker.fail(&format!("a client trusting another CA: {refused:?}"));
    }
    broker.assert_alive();
    tls_round_trip(&broker, dir.path(), port, &["--cafile", "ca.pem"]);
}

// ---------------------------------------------------------------------------------------------
// Scenarios: password file.

/// A broker whose password file (by `surgemq passwd -c -b`) has alice / s3cret.
fn password_setup(runtime: Runtime) -> (tempfile::TempDir, Broker) {
    let dir = temp_dir();
    let passwd = dir.path().join("passwd");
    let made = run(
        "surgemq passwd",
        Command::new(runtime.broker_binary())
            .args(["passwd", "-c", "-b"])
            .arg(&passwd)
            .args(["alice", "s3cret"]),
    );
    assert!(made.status.success(), "surgemq passwd: {made:?}");
    let config = "password_file = \"passwd\"\n\n[[listener]]\nbind = \"127.0.0.1:0\"\n";
    let broker = Broker::with_config(runtime, dir.path(), config);
    (dir, broker)
}

/// With a password file, the right user name and password connect, publish and subscribe.
pub fn password_file_right_password(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let (dir, broker) = password_setup(runtime);
    let port = broker.port();
    let credentials = ["-u", "alice", "-P", "s3cret"];
    let sub = mosquitto_sub(
        dir.path(),
        port,
        &[
            &credentials[..],
            &["-q", "1", "-t", "auth/#", "-F", "%t %p"],
        ]
        .concat(),
    );
    let publish = |topic: &str| {
        mosquitto_pub(
            dir.path(),
            port,
            &[&credentials[..], &["-q", "1", "-t", topic, "-m", "in"]].concat(),
        )
    };
    broker.probe_until(
        &sub,
        || {
            let _ = publish("auth/probe");
        },
        || sub.lines().iter().any(|line| line == "auth/probe in"),
    );
    let published = publish("auth/msg");
    broker.expect_success(&published, "mosquitto_pub with the right password");
    broker.expect_line(&sub, "auth/msg in");
}

/// With a password file, a wrong password or an unknown user gets CONNACK "bad user name or
/// password" (MQTT 3.1 and 3.1.1), and no user name at all "not authorised".
pub fn password_file_wrong_password(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoPub]) {
        return;
    }
    let (dir, broker) = password_setup(runtime);
    let bad_credentials = "Connection error: Connection Refused: bad user name or password.";
    let not_authorised = "Connection error: Connection Refused: not authorised.";
    for version in [MqttVersion::V31, MqttVersion::V311] {
        for (credentials, expected) in [
            (&["-u", "alice", "-P", "wrong"][..], bad_credentials),
            (&["-u", "mallory", "-P", "s3cret"][..], bad_credentials),
            (&[][..], not_authorised),
        ] {
            let refused = mosquitto_pub(
                dir.path(),
                broker.port(),
                &[
                    credentials,
                    &["-V", version.mosquitto(), "-q", "1", "-t", "t", "-m", "x"],
                ]
                .concat(),
            );
            if refused.status.success() || !refused.stderr.contains(expected) {
                broker.fail(&format!(
                    "{version:?} {credentials:?}: expected {expected:?}, got {refused:?}"
                ));
            }
        }
    }
    broker.assert_alive();
}

// ---------------------------------------------------------------------------------------------
// Scenarios: bad input from raw sockets, next to a well-behaved subscriber.

/// A broker and a `mosquitto_sub` on `good/#` that must keep getting its messages whatever
/// the other connections do.
struct Watched {
    dir: tempfile::TempDir,
    broker: Broker,
    good: Proc,
    sent: usize,
}

impl Watched {
    /// `connect_timeout` is long where a close must come from rejected input, not the timeout.
    fn start(runtime: Runtime, connect_timeout: &str) -> Self {
        let dir = temp_dir();
        let config = format!(
            "connect_timeout = \"{connect_timeout}\"\n\n[[listener]]\nbind = \"127.0.0.1:0\"\n"
        );
        let broker = Broker::with_config(runtime, dir.path(), &config);
        let good = mosquitto_sub(
            dir.path(),
            broker.port(),
            &["-q", "1", "-t", "good/#", "-F", "%t %p"],
        );
        broker.await_subscribed(&good, "good/probe", "probe");
        Self {
            dir,
            broker,
            good,
            sent: 0,
        }
    }

    /// A message from `mosquitto_pub` still reaches the good subscriber.
    fn still_served(&mut self) {
        self.sent += 1;
        let payload = format!("message {}", self.sent);
        let published = mosquitto_pub(
            self.dir.path(),
            self.broker.port(),
            &["-q", "1", "-t", "good/news", "-m", &payload],
        );
        self.broker.expect_success(&published, "mosquitto_pub");
        self.broker
            .expect_line(&self.good, &format!("good/news {payload}"));
    }

    /// Fails unless `stream` is closed (or reset) by the broker within `within`.
    fn expect_closed(&self, what: &str, stream: &mut TcpStream, within: Duration) {
        let ending = raw::wait_closed(stream, within);
        if ending == raw::Ending::StillOpen {
            self.broker
                .fail(&format!("{what}: still open after {within:?}"));
        }
    }

    /// The broker is alive and serving; it never held anything like a huge packet in memory.
    fn finish(mut self) {
        self.still_served();
        self.broker.assert_alive();
        if let Some(peak) = self.broker.peak_memory_kib()
            && peak > 200 * 1024
        {
            self.broker
                .fail(&format!("peak resident memory {peak} KiB"));
        }
    }
}

/// Writes `bytes`, ignoring errors: the broker may close before it has read them all.
fn write_ignoring_errors(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}

/// Garbage, a wrong protocol name, a reserved packet type after CONNECT and a second CONNECT:
/// each connection is closed at once (well before the 30 s connect timeout), the broker
/// serves on.
pub fn bad_input_garbage(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let mut watched = Watched::start(runtime, "30s");
    let port = watched.broker.port();
    // A fixed pseudo-random stream (xorshift), the same every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    let mut wrong_name = raw::connect_packet("e2e-wrong-name", 0);
    wrong_name[4..8].copy_from_slice(b"MQTX");
    let cases: [(&str, Vec<u8>, bool); 6] = [
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            false,
        ),
        ("0xFF bytes", vec![0xFF; 64], false),
        ("pseudo-random bytes", noise, false),
        ("a wrong protocol name", wrong_name, false),
        (
            "reserved packet type 0 after CONNECT",
            vec![0x00, 0x00],
            true,
        ),
        (
            "a second CONNECT",
            raw::connect_packet("e2e-second-connect", 0),
            true,
        ),
    ];
    let mut streams = Vec::new();
    for (what, bytes, after_connect) in cases {
        let mut stream = if after_connect {
            raw::connected(port, "e2e-garbage")
        } else {
            raw::open(port)
        };
        write_ignoring_errors(&mut stream, &bytes);
        streams.push((what, stream));
    }
    watched.still_served();
    for (what, mut stream) in streams {
        watched.expect_closed(what, &mut stream, WAIT);
    }
    watched.finish();
}

/// A remaining length beyond the maximum packet size (0x30 0xFF 0xFF 0xFF 0x7F: 268435455,
/// so 268435460 bytes with the header, over the default 268435456), before and after CONNECT,
/// and a five-byte remaining length: closed at once, without waiting for the body.
pub fn bad_input_oversize_remaining_length(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let mut watched = Watched::start(runtime, "30s");
    let port = watched.broker.port();
    let cases: [(&str, &[u8], bool); 4] = [
        (
            "an oversize CONNECT",
            &[0x10, 0xFF, 0xFF, 0xFF, 0x7F],
            false,
        ),
        (
            "an oversize first PUBLISH",
            &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
            false,
        ),
        (
            "an oversize PUBLISH after CONNECT",
            &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
            true,
        ),
        (
            "a five-byte remaining length after CONNECT",
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            true,
        ),
    ];
    let mut streams = Vec::new();
    for (what, bytes, after_connect) in cases {
        let mut stream = if after_connect {
            // Keep alive off: only the length check can close it.
            raw::connected(port, "e2e-oversize")
        } else {
            raw::open(port)
        };
        write_ignoring_errors(&mut stream, bytes);
        // A few body bytes, as a real sender would start with.
        write_ignoring_errors(&mut stream, &[0x00, 0x01, b'a']);
        streams.push((what, stream));
    }
    watched.still_served();
    for (what, mut stream) in streams {
        // The connect timeout is 30 s: a close now is the length check's.
        watched.expect_closed(what, &mut stream, WAIT);
    }
    watched.finish();
}

/// A CONNECT, then a SUBSCRIBE and a PINGREQ, written one byte at a time with pauses: all
/// answered as if written at once, and the subscription gets its message.
pub fn bad_input_connect_byte_by_byte(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let mut watched = Watched::start(runtime, "30s");
    let port = watched.broker.port();
    let mut stream = raw::open(port);
    let trickle = |stream: &mut TcpStream, bytes: &[u8]| {
        for byte in bytes {
            stream.write_all(&[*byte]).expect("write one byte");
            thread::sleep(Duration::from_millis(10));
        }
    };
    let connect = raw::connect_packet("e2e-byte-by-byte", 0);
    let (head, tail) = connect.split_at(connect.len() / 2);
    trickle(&mut stream, head);
    watched.still_served();
    trickle(&mut stream, tail);
    let expect = |stream: &mut TcpStream, what: &str, wanted: &[u8]| match raw::read_exactly(
        stream,
        wanted.len(),
    ) {
        Ok(bytes) if bytes == wanted => {}
        other => watched
            .broker
            .fail(&format!("{what}: expected {wanted:02x?}, got {other:?}")),
    };
    expect(&mut stream, "CONNACK", &raw::CONNACK_ACCEPTED);
    trickle(&mut stream, &raw::subscribe_packet(7, "split/t"));
    expect(&mut stream, "SUBACK", &[0x90, 0x03, 0x00, 0x07, 0x00]);
    trickle(&mut stream, &raw::PINGREQ);
    expect(&mut stream, "PINGRESP", &raw::PINGRESP);
    let published = mosquitto_pub(
        watched.dir.path(),
        port,
        &["-q", "1", "-t", "split/t", "-m", "whole"],
    );
    watched.broker.expect_success(&published, "mosquitto_pub");
    expect(
        &mut stream,
        "PUBLISH",
        &raw::publish_packet("split/t", b"whole"),
    );
    trickle(&mut stream, &raw::DISCONNECT);
    let _ = stream.shutdown(Shutdown::Write);
    watched.expect_closed("after DISCONNECT", &mut stream, WAIT);
    watched.finish();
}

/// A connection that never sends CONNECT, and one that stops halfway through it, are closed
/// after the connect timeout (1 s here), not before.
pub fn bad_input_connect_timeout(runtime: Runtime) {
    if !tools_present(&[Tool::MosquittoSub, Tool::MosquittoPub]) {
        return;
    }
    let mut watched = Watched::start(runtime, "1s");
    let port = watched.broker.port();
    let opened = Instant::now();
    let mut silent = raw::open(port);
    let mut halfway = raw::open(port);
    halfway
        .write_all(&raw::connect_packet("e2e-halfway", 0)[..5])
        .expect("write part of CONNECT");
    watched.still_served();
    for (what, stream) in [("silent", &mut silent), ("halfway", &mut halfway)] {
        watched.expect_closed(what, stream, WAIT);
        let after = opened.elapsed();
        if after < Duration::from_millis(900) {
            watched.broker.fail(&format!(
                "{what}: closed after {after:?}, before the timeout"
            ));
        }
    }
    watched.finish();
}
