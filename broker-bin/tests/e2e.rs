//! The built `surgemq` binary end to end with real Mosquitto clients on 127.0.0.1: QoS 2
//! delivery, a password file, graceful shutdown on SIGTERM, and a clear error for a port in
//! use. Missing tools skip these tests, or fail them with `SURGEMQ_REQUIRE_INTEROP=1`.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    ChildGuard, SURGEMQ, free_port, require_tools, run_bounded, wait_for_port, write_file,
};

const BOUND: Duration = Duration::from_secs(20);

/// Starts `surgemq` with `args` and waits until it listens on `port`.
fn start_broker(port: u16, args: &[&str]) -> ChildGuard {
    let mut broker = ChildGuard::spawn(
        Command::new(SURGEMQ)
            .args(args)
            .args(["--persistence", "memory"]),
    );
    wait_for_port(port, &mut broker);
    broker
}

#[test]
fn qos2_message_goes_from_mosquitto_pub_to_mosquitto_sub() {
    let test = "qos2_message_goes_from_mosquitto_pub_to_mosquitto_sub";
    let Some([mosquitto_sub, mosquitto_pub]) =
        require_tools(test, ["mosquitto_sub", "mosquitto_pub"])
    else {
        return;
    };
    let port = free_port();
    let port_arg = port.to_string();
    let mut broker = start_broker(port, &["-p", &port_arg]);

    let mut sub = ChildGuard::spawn(Command::new(&mosquitto_sub).args([
        "-h",
        "127.0.0.1",
        "-p",
        &port_arg,
        "-t",
        "a/#",
        "-q",
        "2",
        "-C",
        "1",
        "-v",
        "-W",
        "15",
    ]));
    // mosquitto_sub's output is block-buffered on a pipe, so nothing tells when its
    // subscription is in place: publish until it has its one message (-C 1) and exits.
    let deadline = Instant::now() + BOUND;
    let status = loop {
        let output = run_bounded(
            Command::new(&mosquitto_pub).args([
                "-h",
                "127.0.0.1",
                "-p",
                &port_arg,
                "-t",
                "a/b",
                "-m",
                "hi",
                "-q",
                "2",
            ]),
            BOUND,
        );
        assert!(output.status.success(), "mosquitto_pub: {output:?}");
        if let Some(status) = sub.wait_timeout(Duration::from_millis(200)) {
            break status;
        }
        if Instant::now() > deadline {
            let _ = broker.0.kill();
            panic!(
                "mosquitto_sub got nothing; broker log:\n{}",
                broker.stderr_text()
            );
        }
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut sub.0.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{status}: {stdout}");
    assert_eq!(stdout, "a/b hi\n");
}

#[test]
fn password_file_from_mosquitto_passwd_guards_the_broker() {
    let test = "password_file_from_mosquitto_passwd_guards_the_broker";
    let Some([mosquitto_passwd, mosquitto_pub]) =
        require_tools(test, ["mosquitto_passwd", "mosquitto_pub"])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let output = run_bounded(
        Command::new(&mosquitto_passwd)
            .args(["-c", "-b"])
            .arg(&passwd)
            .args(["alice", "s3cret"]),
        BOUND,
    );
    assert!(output.status.success(), "{output:?}");
    let port = free_port();
    // A relative path: it starts at the config file's folder.
    let config = write_file(
        dir.path(),
        "surgemq.toml",
        &format!("password_file = \"passwd\"\n\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n"),
    );
    let _broker = start_broker(port, &["-c", config.to_str().unwrap()]);

    let publish = |credentials: &[&str]| {
        let output = run_bounded(
            Command::new(&mosquitto_pub)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    "t",
                    "-m",
                    "x",
                ])
                .args(["-q", "1"])
                .args(credentials),
            BOUND,
        );
        output.status.success()
    };
    assert!(publish(&["-u", "alice", "-P", "s3cret"]));
    assert!(!publish(&["-u", "alice", "-P", "wrong"]));
    assert!(!publish(&["-u", "mallory", "-P", "s3cret"]));
    assert!(
        !publish(&[]),
        "anonymous clients get in without allow_anonymous"
    );
    assert!(
        publish(&["-u", "alice", "-P", "s3cret"]),
        "the broker is still up"
    );
}

#[cfg(unix)]
#[test]
fn sigterm_shuts_down_gracefully() {
    let port = free_port();
    let port_arg = port.to_string();
    let mut broker = start_broker(port, &["-p", &port_arg]);
    let output = run_bounded(
        Command::new("kill").args(["-TERM", &broker.0.id().to_string()]),
        BOUND,
    );
    assert!(output.status.success());
    let status = broker.wait_timeout(BOUND).expect("exits after SIGTERM");
    let stderr = broker.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    for expected in [
        format!("listening on 127.0.0.1:{port}").as_str(),
        "auth: anonymous clients from loopback only",
        "SIGTERM: shutting down",
        "shut down",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from:\n{stderr}"
        );
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = run_bounded(
        Command::new(SURGEMQ).args(["-p", &port.to_string(), "--persistence", "memory"]),
        BOUND,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}
