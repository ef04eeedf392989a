//! Helpers for the integration tests: finding third-party tools (a missing tool fails the test
//! when `SURGEMQ_REQUIRE_INTEROP=1`, else skips it with a message), free loopback ports,
//! child processes killed on drop, and time-bounded waits.
#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The `surgemq` binary under test.
pub const SURGEMQ: &str = env!("CARGO_BIN_EXE_surgemq");

/// Where `name` is installed, searching `PATH` and the sbin folders (mosquitto lives in
/// /usr/sbin, often outside a user's `PATH`).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The tools a test needs, or `None` after printing why it is skipped. Panics instead when
/// `SURGEMQ_REQUIRE_INTEROP=1`: CI must not pass by skipping.
pub fn require_tools<const N: usize>(test: &str, names: [&str; N]) -> Option<[PathBuf; N]> {
    let found = names.map(find_tool);
    let missing: Vec<&str> = names
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Some(found.map(Option::unwrap));
    }
    let message = format!("{test}: {} not installed", missing.join(", "));
    if std::env::var("SURGEMQ_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{message} (SURGEMQ_REQUIRE_INTEROP=1)");
    }
    // Straight to the process's stderr, past the test harness's capture: a skip must show.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {message}; set SURGEMQ_REQUIRE_INTEROP=1 to make this a failure"
    );
    None
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` different ports free on 127.0.0.1 a moment ago.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners = [(); N].map(|()| TcpListener::bind("127.0.0.1:0").unwrap());
    listeners.map(|listener| listener.local_addr().unwrap().port())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, child: &mut ChildGuard) {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the server exited before listening on {port}: {status}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {address} after 10 s");
}

/// A child process, killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Starts `command` with stdout and stderr piped.
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self(child)
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it wrote to stderr (call after it exited or was killed).
    pub fn stderr_text(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        }
        text
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` to completion, killing it after `timeout`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let mut guard = ChildGuard::spawn(command);
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(guard.0.stdout.take().unwrap()));
    let stderr = read_all(Box::new(guard.0.stderr.take().unwrap()));
    let Some(status) = guard.wait_timeout(timeout) else {
        panic!("{command:?} still running after {timeout:?}");
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
