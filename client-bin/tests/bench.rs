//! `surgemq-client bench` end to end: small runs through Mosquitto and through our `surgemq`
//! broker report no loss and valid JSON / CSV; the broker CPU figure is read from /proc.

mod common;

use std::process::Command;

use common::{Broker, CLIENT, run};

/// Runs `bench --json --quiet` with `args` against `broker` and returns the parsed report.
fn bench_json(broker: &Broker, args: &[&str]) -> serde_json::Value {
    let done = run(
        Command::new(CLIENT)
            .args([
                "bench",
                "--quiet",
                "--json",
                "-p",
                &broker.port_arg(),
                "--drain",
                "10",
            ])
            .args(args),
        None,
    );
    assert_eq!(
        done.code(),
        0,
        "bench {args:?} on {}: {done:?}",
        broker.name
    );
    serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("bench on {}: invalid JSON ({e}): {done:?}", broker.name))
}

#[test]
fn one_to_one_qos1_run_loses_nothing_and_reports_json() {
    for broker in Broker::all("one_to_one_qos1_run_loses_nothing_and_reports_json") {
        let pid = broker.pid().to_string();
        let report = bench_json(
            &broker,
            &["--qos", "1", "--count", "200", "--broker-pid", &pid],
        );
        let name = broker.name;
        assert_eq!(report["sent"], 200, "{name}: {report}");
        assert_eq!(report["expected"], 200, "{name}: {report}");
        assert_eq!(report["delivered"], 200, "{name}: {report}");
        assert_eq!(report["lost"], 0, "{name}: {report}");
        assert_eq!(report["duplicates"], 0, "{name}: {report}");
        assert_eq!(report["out_of_order"], 0, "{name}: {report}");
        assert_eq!(report["unacked"], 0, "{name}: {report}");
        assert!(
            report["latency_us"]["p50"].as_f64().unwrap() > 0.0,
            "{name}: {report}"
        );
        assert!(
            report["latency_us"]["max"].as_f64() >= report["latency_us"]["p99"].as_f64(),
            "{name}: {report}"
        );
        assert!(report["broker_cpu_seconds"].is_number(), "{name}: {report}");
    }
}

#[test]
fn qos2_fan_out_over_mqtt5_delivers_every_message_to_every_subscriber() {
    let test = "qos2_fan_out_over_mqtt5_delivers_every_message_to_every_subscriber";
    for broker in Broker::all(test) {
        let probe = run(
            Command::new(CLIENT).args([
                "pub",
                "-p",
                &broker.port_arg(),
                "-V",
                "5",
                "-t",
                "p",
                "-n",
            ]),
            None,
        );
        if probe.code() == 3 && probe.stderr.contains("UnsupportedProtocolVersion") {
            common::note(&format!(
                "SKIPPED {test} on {}: the broker refuses MQTT 5.0",
                broker.name
            ));
            continue;
        }
        let report = bench_json(
            &broker,
            &[
                "--qos",
                "2",
                "-V",
                "mqttv5",
                "--publishers",
                "2",
                "--subscribers",
                "3",
                "--layout",
                "wildcard",
                "--count",
                "100",
                "--inflight",
                "8",
            ],
        );
        let name = broker.name;
        assert_eq!(report["sent"], 200, "{name}: {report}");
        assert_eq!(report["delivered"], 600, "{name}: {report}");
        assert_eq!(report["lost"], 0, "{name}: {report}");
        assert_eq!(report["duplicates"], 0, "{name}: {report}");
    }
}

#[test]
fn csv_report_and_plot_are_written() {
    for broker in Broker::all("csv_report_and_plot_are_written") {
        let dir = std::env::temp_dir().join(format!("surgemq-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plot = dir.join(format!("{}.svg", broker.name));
        let done = run(
            Command::new(CLIENT).args([
                "bench",
                "--quiet",
                "--csv",
                "-p",
                &broker.port_arg(),
                "--qos",
                "0",
                "--subscribers",
                "2",
                "--layout",
                "per-publisher",
                "--count",
                "300",
                "--rate",
                "3000",
                "--label",
                broker.name,
                "--plot",
                plot.to_str().unwrap(),
            ]),
            None,
        );
        assert_eq!(done.code(), 0, "{done:?}");
        let lines: Vec<&str> = done.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{done:?}");
        assert!(
            lines[0].starts_with("label,address,protocol,qos"),
            "{done:?}"
        );
        assert!(lines[1].starts_with(broker.name), "{done:?}");
        assert_eq!(lines[0].split(',').count(), lines[1].split(',').count());
        let svg = std::fs::read_to_string(&plot).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("latency"), "{svg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
