//! [`Summary`]: the results of a run, and their three renderings — a human report, JSON and
//! CSV (a header line and one row, so runs against several brokers append into one table).

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::Layout;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The results of one bench run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `--label`.
    pub label: String,
    /// Broker address.
    pub address: String,
    /// Protocol version spoken.
    pub protocol: String,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Topic layout.
    pub layout: Layout,
    /// Publishing connections.
    pub publishers: u32,
    /// Subscribing connections.
    pub subscribers: u32,
    /// Payload bytes.
    pub payload_bytes: u32,
    /// Messages per second per publisher (0: saturating).
    pub rate_per_publisher: u64,
    /// In-flight window per publisher (QoS 1/2).
    pub inflight: u16,
    /// Seconds from the go signal to the last publish.
    pub publish_seconds: f64,
    /// Seconds from the go signal to the last delivery.
    pub deliver_seconds: f64,
    /// Messages published.
    pub sent: u64,
    /// Messages published per second.
    pub sent_per_second: f64,
    /// Deliveries expected (each subscriber × each message it subscribed to).
    pub expected: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Distinct messages delivered per second.
    pub delivered_per_second: f64,
    /// Expected deliveries that never arrived (normal at QoS 0 under overload).
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicates: u64,
    /// Deliveries that arrived after a later message of the same publisher.
    pub out_of_order: u64,
    /// Messages received that were not this run's.
    pub foreign: u64,
    /// QoS 1/2 acknowledgements with an error reason code.
    pub publish_refused: u64,
    /// QoS 1/2 publishes never acknowledged within the drain time.
    pub unacked: u64,
    /// End-to-end latency, publisher write to subscriber read.
    pub latency_us: Latency,
    /// Broker process id, with `--broker-pid`.
    pub broker_pid: Option<u32>,
    /// Broker CPU seconds (user + system) during the run.
    pub broker_cpu_seconds: Option<f64>,
    /// Broker CPU microseconds per delivered message: the figure to compare brokers on.
    pub broker_cpu_us_per_message: Option<f64>,
    /// This tool's CPU microseconds per delivered message.
    pub bench_cpu_us_per_message: Option<f64>,
}

impl Summary {
    /// The JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// A CSV header line and one row, flat (latency columns are `latency_p50_us`, ...).
    pub fn csv(&self) -> String {
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.4}"));
        let columns: Vec<(&str, String)> = vec![
            ("label", csv_field(&self.label)),
            ("address", csv_field(&self.address)),
            ("protocol", self.protocol.clone()),
            ("qos", self.qos.to_string()),
            ("layout", layout_name(self.layout).into()),
            ("publishers", self.publishers.to_string()),
            ("subscribers", self.subscribers.to_string()),
            ("payload_bytes", self.payload_bytes.to_string()),
            ("rate_per_publisher", self.rate_per_publisher.to_string()),
            ("inflight", self.inflight.to_string()),
            ("publish_seconds", format!("{:.4}", self.publish_seconds)),
            ("deliver_seconds", format!("{:.4}", self.deliver_seconds)),
            ("sent", self.sent.to_string()),
            ("sent_per_second", format!("{:.1}", self.sent_per_second)),
            ("expected", self.expected.to_string()),
            ("delivered", self.delivered.to_string()),
            (
                "delivered_per_second",
                format!("{:.1}", self.delivered_per_second),
            ),
            ("lost", self.lost.to_string()),
            ("duplicates", self.duplicates.to_string()),
            ("out_of_order", self.out_of_order.to_string()),
            ("foreign", self.foreign.to_string()),
            ("unacked", self.unacked.to_string()),
            ("publish_refused", self.publish_refused.to_string()),
            ("latency_p50_us", format!("{:.1}", self.latency_us.p50)),
            ("latency_p90_us", format!("{:.1}", self.latency_us.p90)),
            ("latency_p99_us", format!("{:.1}", self.latency_us.p99)),
            ("latency_p999_us", format!("{:.1}", self.latency_us.p999)),
            ("latency_max_us", format!("{:.1}", self.latency_us.max)),
            ("broker_cpu_seconds", opt(self.broker_cpu_seconds)),
            (
                "broker_cpu_us_per_message",
                opt(self.broker_cpu_us_per_message),
            ),
            (
                "bench_cpu_us_per_message",
                opt(self.bench_cpu_us_per_message),
            ),
        ];
        let header: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let row: Vec<&str> = columns.iter().map(|(_, value)| value.as_str()).collect();
        format!("{}\n{}\n", header.join(","), row.join(","))
    }

    /// The human report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let label = if self.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.label)
        };
        let _ = writeln!(
            out,
            "bench{label}: {} publisher(s) -> {} subscriber(s) on {}, layout {}, QoS {}, {} B \
             payload, {}, rate {}",
            self.publishers,
            self.subscribers,
            self.address,
            layout_name(self.layout),
            self.qos,
            self.payload_bytes,
            self.protocol,
            if self.rate_per_publisher == 0 {
                "saturating".to_owned()
            } else {
                format!("{}/s per publisher", self.rate_per_publisher)
            },
        );
        let _ = writeln!(
            out,
            "  sent       {:>12} in {:>8.3} s = {:>12.0} msg/s",
            self.sent, self.publish_seconds, self.sent_per_second
        );
        let _ = writeln!(
            out,
            "  delivered  {:>12} in {:>8.3} s = {:>12.0} msg/s   (expected {})",
            self.delivered, self.deliver_seconds, self.delivered_per_second, self.expected
        );
        let qos0 = if self.qos == 0 && self.lost > 0 {
            "   (QoS 0: losses are allowed)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  lost {}   duplicates {}   out of order {}   foreign {}   unacked {}   refused {}{qos0}",
            self.lost,
            self.duplicates,
            self.out_of_order,
            self.foreign,
            self.unacked,
            self.publish_refused
        );
        let l = self.latency_us;
        let _ = writeln!(
            out,
            "  latency us p50 {:.1}   p90 {:.1}   p99 {:.1}   p99.9 {:.1}   max {:.1}   mean {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if let (Some(pid), Some(seconds)) = (self.broker_pid, self.broker_cpu_seconds) {
            let per_message = self
                .broker_cpu_us_per_message
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "  broker CPU {seconds:.2} s (pid {pid}) = {per_message} us per delivered message"
            );
        }
        if let Some(v) = self.bench_cpu_us_per_message {
            let _ = writeln!(out, "  bench CPU  {v:.3} us per delivered message");
        }
        out
    }
}

/// The `--layout` value name.
fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Single => "single",
        Layout::PerPublisher => "per-publisher",
        Layout::Wildcard => "wildcard",
    }
}

/// A CSV field, quoted when it needs to be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            label: "a,b".into(),
            address: "127.0.0.1:1883".into(),
            protocol: "mqttv311".into(),
            qos: 1,
            layout: Layout::PerPublisher,
            publishers: 1,
            subscribers: 2,
            payload_bytes: 64,
            rate_per_publisher: 0,
            inflight: 64,
            publish_seconds: 1.0,
            deliver_seconds: 1.0,
            sent: 10,
            sent_per_second: 10.0,
            expected: 20,
            delivered: 20,
            delivered_per_second: 20.0,
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
            publish_refused: 0,
            unacked: 0,
            latency_us: Latency::default(),
            broker_pid: None,
            broker_cpu_seconds: None,
            broker_cpu_us_per_message: None,
            bench_cpu_us_per_message: Some(1.5),
        }
    }

    #[test]
    fn csv_has_as_many_fields_in_the_row_as_in_the_header() {
        let csv = summary().csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("\"a,b\","));
        let row_fields = lines[1].replacen("\"a,b\"", "ab", 1).split(',').count();
        assert_eq!(lines[0].split(',').count(), row_fields);
    }

    #[test]
    fn json_names_the_layout_in_kebab_case() {
        let json: serde_json::Value = serde_json::from_str(&summary().json()).unwrap();
        assert_eq!(json["layout"], "per-publisher");
        assert_eq!(json["lost"], 0);
        assert!(json["broker_cpu_us_per_message"].is_null());
    }
}
