//! `surgemq-client pub` and `sub` end to end, on loopback, through a real Mosquitto and through
//! our `surgemq` broker: round trips at each QoS and protocol version, `-l` stdin lines,
//! interoperation with mosquitto_pub / mosquitto_sub, and the exit codes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Background, Broker, CLIENT, Finished, Watch, free_port, require_tool, run};

/// How long a subscriber may take to report its SUBACK.
const SUBSCRIBED: Duration = Duration::from_secs(10);

/// Starts `surgemq-client sub -d` with `args` and waits for its SUBACK.
fn subscriber(broker: &Broker, args: &[&str]) -> Background {
    let mut sub = Background::start(
        Command::new(CLIENT)
            .args([
                "sub",
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port_arg(),
                "-W",
                "20",
            ])
            .args(args),
        Watch::Stderr,
    );
    sub.wait_for("received SUBACK", SUBSCRIBED);
    sub
}

/// Runs `surgemq-client pub` with `args` (and `stdin`), expecting success.
fn publish(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) {
    let done = run(
        Command::new(CLIENT)
            .args(["pub", "-h", "127.0.0.1", "-p", &broker.port_arg()])
            .args(args),
        stdin,
    );
    assert_eq!(done.code(), 0, "pub {args:?} on {}: {done:?}", broker.name);
}

fn expect_output(done: &Finished, broker: &Broker, expected: &str) {
    assert_eq!(done.code(), 0, "sub on {}: {done:?}", broker.name);
    assert_eq!(done.stdout, expected, "sub on {}: {done:?}", broker.name);
}

#[test]
fn pub_sub_round_trip_at_each_qos() {
    for broker in Broker::all("pub_sub_round_trip_at_each_qos") {
        for qos in ["0", "1", "2"] {
            let topic = format!("rt/qos{qos}");
            let sub = subscriber(&broker, &["-t", "rt/#", "-q", qos, "-v", "-C", "2"]);
            publish(
                &broker,
                &["-t", &topic, "-q", qos, "-m", "hello world"],
                None,
            );
            publish(&broker, &["-t", &topic, "-q", qos, "-n"], None);
            let done = sub.finish();
            expect_output(
                &done,
                &broker,
                &format!("{topic} hello world\n{topic} (null)\n"),
            );
        }
    }
}

/// Whether `broker` accepts MQTT `version`; a refusal is noted as a skip.
fn serves_version(broker: &Broker, version: &str, test: &str) -> bool {
    let done = run(
        Command::new(CLIENT).args([
            "pub",
            "-p",
            &broker.port_arg(),
            "-V",
            version,
            "-t",
            "probe",
            "-n",
        ]),
        None,
    );
    if done.code() == 3 && done.stderr.contains("UnsupportedProtocolVersion") {
        common::note(&format!(
            "SKIPPED {test} with {version} on {}: the broker refuses that version",
            broker.name
        ));
        return false;
    }
    assert_eq!(
        done.code(),
        0,
        "probe {version} on {}: {done:?}",
        broker.name
    );
    true
}

#[test]
fn pub_sub_round_trip_with_mqtt5_and_mqtt31() {
    let test = "pub_sub_round_trip_with_mqtt5_and_mqtt31";
    for broker in Broker::all(test) {
        for version in ["mqttv5", "mqttv31"] {
            if !serves_version(&broker, version, test) {
                continue;
            }
            let sub = subscriber(&broker, &["-t", "v/+", "-q", "2", "-V", version, "-C", "1"]);
            publish(
                &broker,
                &["-t", "v/x", "-q", "1", "-V", version, "-m", version],
                None,
            );
            expect_output(&sub.finish(), &broker, &format!("{version}\n"));
        }
    }
}

#[test]
fn stdin_lines_are_published_one_message_each() {
    for broker in Broker::all("stdin_lines_are_published_one_message_each") {
        let sub = subscriber(&broker, &["-t", "lines", "-q", "1", "-C", "3"]);
        publish(
            &broker,
            &["-t", "lines", "-q", "1", "-l"],
            Some(b"first\nsecond line\r\nthird\n"),
        );
        expect_output(&sub.finish(), &broker, "first\nsecond line\nthird\n");
    }
}

#[test]
fn file_message_and_retain_reach_a_later_subscriber() {
    for broker in Broker::all("file_message_and_retain_reach_a_later_subscriber") {
        let dir = std::env::temp_dir().join(format!("surgemq-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.txt", broker.name));
        std::fs::write(&file, "from a file").unwrap();
        publish(
            &broker,
            &["-t", "kept", "-q", "1", "-r", "-f", file.to_str().unwrap()],
            None,
        );
        let done = run(
            Command::new(CLIENT).args([
                "sub",
                "-p",
                &broker.port_arg(),
                "-t",
                "kept",
                "-C",
                "1",
                "-W",
                "10",
            ]),
            None,
        );
        expect_output(&done, &broker, "from a file\n");
        // Clear the retained message.
        publish(&broker, &["-t", "kept", "-r", "-n"], None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn interoperates_with_mosquitto_pub_and_sub() {
    let test = "interoperates_with_mosquitto_pub_and_sub";
    let (Some(mosquitto_pub), Some(mosquitto_sub)) = (
        require_tool(test, "mosquitto_pub"),
        require_tool(test, "mosquitto_sub"),
    ) else {
        return;
    };
    for broker in Broker::all(test) {
        // mosquitto_pub -> our sub.
        let sub = subscriber(&broker, &["-t", "interop/a", "-q", "2", "-C", "1"]);
        let done = run(
            Command::new(&mosquitto_pub).args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port_arg(),
                "-t",
                "interop/a",
                "-q",
                "2",
                "-m",
                "from mosquitto_pub",
            ]),
            None,
        );
        assert_eq!(done.code(), 0, "{done:?}");
        expect_output(&sub.finish(), &broker, "from mosquitto_pub\n");

        // Our pub -> mosquitto_sub. Retained, so there is no race with its SUBSCRIBE
        // (mosquitto_sub -d logs to a block-buffered stdout: no SUBACK line to wait for).
        publish(
            &broker,
            &[
                "-t",
                "interop/b",
                "-q",
                "1",
                "-r",
                "-m",
                "from surgemq-client",
            ],
            None,
        );
        let done = run(
            Command::new(&mosquitto_sub).args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port_arg(),
                "-t",
                "interop/b",
                "-q",
                "1",
                "-C",
                "1",
                "-W",
                "20",
                "-v",
            ]),
            None,
        );
        assert_eq!(done.code(), 0, "{done:?}");
        assert_eq!(done.stdout, "interop/b from surgemq-client\n", "{done:?}");
        publish(&broker, &["-t", "interop/b", "-r", "-n"], None);
    }
}

#[test]
fn sub_times_out_with_exit_code_27() {
    for broker in Broker::all("sub_times_out_with_exit_code_27") {
        let done = run(
            Command::new(CLIENT).args(["sub", "-p", &broker.port_arg(), "-t", "quiet", "-W", "1"]),
            None,
        );
        assert_eq!(done.code(), 27, "{done:?}");
        assert!(done.stderr.contains("Timed out"), "{done:?}");
    }
}

#[test]
fn nothing_listening_fails_with_exit_code_1() {
    let port = free_port().to_string();
    for args in [
        ["pub", "-p", &port, "-t", "a", "-m", "x"],
        ["sub", "-p", &port, "-t", "a", "-W", "5"],
    ] {
        let done = run(Command::new(CLIENT).args(args), None);
        assert_eq!(done.code(), 1, "{args:?}: {done:?}");
        assert!(
            done.stderr.contains("Error: Connection refused"),
            "{done:?}"
        );
    }
}

#[test]
fn bad_command_lines_exit_with_code_2() {
    for args in [
        &["pub", "-t", "a"][..],
        &["pub", "-t", "a", "-m", "x", "-q", "3"],
        &["sub"],
        &["bench", "--payload", "8"],
    ] {
        let done = run(Command::new(CLIENT).args(args), None);
        assert_eq!(done.code(), 2, "{args:?}: {done:?}");
    }
}

/// The limits a real MQTT 5.0 server states in its CONNACK reach the client: Mosquitto set to
/// `max_qos 1`, `retain_available false` and `max_packet_size 200`. A publish above them is
/// refused with the reason and never sent (5.0 [MQTT-3.2.2-11], [MQTT-3.2.2-14],
/// [MQTT-3.2.2-15]); one within them goes through.
#[test]
fn mqtt5_server_limits_from_mosquitto_are_kept() {
    const TEST: &str = "mqtt5_server_limits_from_mosquitto_are_kept";
    let Some(mosquitto) = require_tool(TEST, "mosquitto") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_qos 1\n\
             retain_available false\nmax_packet_size 200\n"
        ),
    )
    .expect("write mosquitto.conf");
    let broker = Broker::custom(
        "mosquitto (limited)",
        Command::new(mosquitto).arg("-c").arg(&conf),
        port,
    );
    let v5 = ["-V", "mqttv5", "-t", "lim/t"];
    let sub = subscriber(&broker, &["-V", "mqttv5", "-t", "lim/#", "-v", "-C", "1"]);
    for (args, error) in [
        (
            &["-q", "2", "-m", "two"][..],
            "the server accepts QoS 1 at most",
        ),
        (
            &["-r", "-m", "kept"],
            "the server does not keep retained messages",
        ),
        (
            &["-m", &"x".repeat(300)],
            "exceeds the server's maximum of 200 bytes",
        ),
    ] {
        let done = run(
            Command::new(CLIENT)
                .args(["pub", "-h", "127.0.0.1", "-p", &broker.port_arg()])
                .args(v5)
                .args(args),
            None,
        );
        assert_ne!(done.code(), 0, "pub {args:?}: {done:?}");
        assert!(done.stderr.contains(error), "pub {args:?}: {done:?}");
    }
    publish(
        &broker,
        &["-V", "mqttv5", "-t", "lim/t", "-q", "1", "-m", "one"],
        None,
    );
    expect_output(&sub.finish(), &broker, "lim/t one\n");
}
