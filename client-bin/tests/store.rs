//! `surgemq-client pub --data-dir` survives `kill -9`: our `surgemq` broker, a persistent QoS 2
//! subscriber (`surgemq-client sub -c`, its session in a store too) and a publisher
//! `surgemq-client pub -l -q 2 -c -i P --data-dir DIR` fed numbered lines on stdin, killed with
//! SIGKILL mid-stream several times and restarted on the same directory with the lines that
//! follow the last one it got through. Checked at the end: no payload delivered twice (QoS 2);
//! every payload that was in the store file right after a kill, and every line of the last
//! (uninterrupted) run, delivered; every line number delivered; the store empty once the last
//! run has completed everything. Only our own binaries: no third-party tool.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use common::{Broker, CLIENT, ChildGuard, RUN_TIMEOUT, interop_required, note};
use surgemq_core::store::redb::RedbStore;

/// Kill-and-restart cycles before the last, uninterrupted run.
const CYCLES: usize = 5;
/// Lines fed to each run that gets killed.
const BATCH: u32 = 30;
/// Line numbers in all (0..LINES).
const LINES: u32 = 200;
/// How long one wait (a SUBACK, a delivery) may take.
const WAIT: Duration = Duration::from_secs(20);
/// Poll interval of the bounded waits.
const POLL: Duration = Duration::from_millis(10);

/// Payload of line `n` fed in run `run`: unique per feed, so a line fed again after a kill is
/// a new message and any payload seen twice is a real duplicate.
fn payload(n: u32, run: usize) -> String {
    format!("{n:04}:r{run}")
}

fn line_number(payload: &str) -> u32 {
    payload[..4].parse().expect("a numbered payload")
}

/// Collects a child's output lines on a thread.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (bounded) for a line containing `text`; returns it.
fn wait_line(lines: &mpsc::Receiver<String>, text: &str, what: &str) -> String {
    let mut seen = Vec::new();
    for _ in 0..(WAIT.as_millis() / POLL.as_millis()) {
        match lines.recv_timeout(POLL) {
            Ok(line) if line.contains(text) => return line,
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!("{what}: no `{text}` within {WAIT:?}; seen {seen:?}");
}

/// Waits (bounded) until `done` holds for the payloads delivered so far.
fn wait_delivered(delivered: &Mutex<Vec<String>>, what: &str, done: impl Fn(&[String]) -> bool) {
    for _ in 0..(WAIT.as_millis() / POLL.as_millis()) {
        if done(&delivered.lock().unwrap()) {
            return;
        }
        thread::sleep(POLL);
    }
    let got = delivered.lock().unwrap().len();
    panic!("{what}: not delivered within {WAIT:?} ({got} payloads so far)");
}

/// The payloads of the messages in the store in `dir` (the process using it is gone).
fn stored_payloads(dir: &Path) -> Vec<String> {
    let snapshot = RedbStore::open(dir)
        .expect("the store opens after kill -9")
        .load()
        .expect("the store reads after kill -9");
    snapshot
        .messages
        .iter()
        .map(|(_, m)| String::from_utf8(m.payload.to_vec()).expect("text payload"))
        .collect()
}

/// A `surgemq-client pub` run: the process, its stdin, its stderr lines.
struct Publisher {
    guard: ChildGuard,
    stdin: Option<std::process::ChildStdin>,
    stderr: mpsc::Receiver<String>,
}

impl Publisher {
    fn start(port: u16, dir: &Path) -> Self {
        let child = Command::new(CLIENT)
            .args(["pub", "-d", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-l", "-q", "2", "-c", "-i", "store-P", "-t", "k/x"])
            .arg("--data-dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start surgemq-client pub");
        let mut guard = ChildGuard(child);
        let stdin = guard.0.stdin.take();
        let stderr = lines_of(guard.0.stderr.take().expect("stderr piped"));
        Self {
            guard,
            stdin,
            stderr,
        }
    }

    /// How many publishes the run restored from the store (its `-d` report).
    fn restored(&self) -> usize {
        let line = wait_line(&self.stderr, "restored from", "pub restore report");
        let (_, report) = line.split_once(": ").expect("report after the directory");
        report
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected report `{line}`"))
    }

    fn feed(&mut self, lines: impl Iterator<Item = String>) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        let text: String = lines.map(|line| line + "\n").collect();
        stdin.write_all(text.as_bytes()).expect("write to pub");
    }
}

#[test]
fn pub_with_a_data_dir_survives_kill_9_without_losing_or_duplicating_qos2() {
    let test = "pub_with_a_data_dir_survives_kill_9";
    let Some(broker) = Broker::surgemq(test) else {
        assert!(
            !interop_required(),
            "{test}: the surgemq broker could not be built"
        );
        return;
    };
    let dirs = tempfile::tempdir().unwrap();
    let pub_dir = dirs.path().join("pub");
    let sub_dir = dirs.path().join("sub");

    // The persistent subscriber, its session in a store of its own.
    let sub_child = Command::new(CLIENT)
        .args(["sub", "-d", "-h", "127.0.0.1", "-p", &broker.port_arg()])
        .args(["-c", "-i", "store-S", "-q", "2", "-t", "k/#", "-v"])
        .arg("--data-dir")
        .arg(&sub_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start surgemq-client sub");
    let mut subscriber = ChildGuard(sub_child);
    let sub_stderr = lines_of(subscriber.0.stderr.take().expect("stderr piped"));
    let sub_stdout = lines_of(subscriber.0.stdout.take().expect("stdout piped"));
    wait_line(&sub_stderr, "received SUBACK", "subscriber");
    let delivered: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&delivered);
    thread::spawn(move || {
        while let Ok(line) = sub_stdout.recv() {
            if let Some(payload) = line.strip_prefix("k/x ") {
                sink.lock().unwrap().push(payload.to_owned());
            }
        }
    });

    let mut must_arrive: BTreeSet<String> = BTreeSet::new();
    let (mut fed, mut restored, mut in_store) = (0usize, 0usize, 0usize);
    let mut next = 0u32;
    for run in 0..CYCLES {
        let mut publisher = Publisher::start(broker.port, &pub_dir);
        restored += publisher.restored();
        let batch = next..(next + BATCH).min(LINES);
        fed += batch.len();
        publisher.feed(batch.clone().map(|n| payload(n, run)));
        // Mid-stream: some of this run's lines are through, most are not.
        let through = payload(batch.start + 5, run);
        wait_delivered(&delivered, "pub progress", |got| got.contains(&through));
        publisher.guard.0.kill().expect("kill -9");
        publisher.guard.0.wait().expect("reap");

        let stored = stored_payloads(&pub_dir);
        in_store += stored.len();
        // Resume after the last line known to be through: delivered, or in the store (and so
        // delivered after the restart).
        let delivered_now = delivered.lock().unwrap().clone();
        let last = delivered_now
            .iter()
            .chain(&stored)
            .map(|p| line_number(p))
            .max()
            .expect("something got through");
        next = last + 1;
        must_arrive.extend(stored);
    }

    // The last run: the remaining lines, then end of input.
    let mut publisher = Publisher::start(broker.port, &pub_dir);
    restored += publisher.restored();
    let last_run: Vec<String> = (next..LINES).map(|n| payload(n, CYCLES)).collect();
    fed += last_run.len();
    publisher.feed(last_run.iter().cloned());
    drop(publisher.stdin.take());
    let Some(status) = publisher.guard.wait_timeout(RUN_TIMEOUT) else {
        panic!("the last pub run did not finish within {RUN_TIMEOUT:?}");
    };
    assert!(status.success(), "the last pub run failed: {status}");
    must_arrive.extend(last_run);
    wait_delivered(&delivered, "every payload", |got| {
        let got: BTreeSet<&String> = got.iter().collect();
        must_arrive.iter().all(|p| got.contains(p))
    });
    // Late duplicates would show up now.
    thread::sleep(Duration::from_millis(300));
    drop(subscriber);

    let delivered = delivered.lock().unwrap().clone();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &delivered {
        *counts.entry(p).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let numbers: BTreeSet<u32> = delivered.iter().map(|p| line_number(p)).collect();
    note(&format!(
        "kill -9 summary: cycles={CYCLES} lines={LINES} fed={fed} delivered={} distinct={} \
         duplicates={} restored={restored} in_store_after_kills={in_store}",
        delivered.len(),
        counts.len(),
        duplicates.len()
    ));
    assert!(
        duplicates.is_empty(),
        "QoS 2 delivered twice: {duplicates:?}"
    );
    let missing: Vec<_> = must_arrive
        .iter()
        .filter(|p| !counts.contains_key(p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "stored or sent, never delivered: {missing:?}"
    );
    let gaps: Vec<u32> = (0..LINES).filter(|n| !numbers.contains(n)).collect();
    assert!(gaps.is_empty(), "line numbers never delivered: {gaps:?}");
    let left = stored_payloads(&pub_dir);
    assert!(
        left.is_empty(),
        "left in the store after the last run: {left:?}"
    );
}
