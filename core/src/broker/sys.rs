//! `$SYS` statistics: the counters the broker keeps and the Mosquitto-compatible topics they are
//! published on (`$SYS/broker/...`), including 1, 5 and 15 minute load averages.
//!
//! Never: publish anything but statistics, or read a clock (uptime comes from the caller).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::topic::TopicName;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connected: u64,
    pub(crate) messages_received: u64,
    pub(crate) messages_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) dropped: u64,
    load: [Load; 4],
    last_tick: Option<Duration>,
}

/// Exponentially weighted per-minute rates of one counter, as Mosquitto computes them.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    last_count: u64,
    one: f64,
    five: f64,
    fifteen: f64,
}

impl Load {
    fn update(&mut self, count: u64, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let per_minute = (count.saturating_sub(self.last_count)) as f64 * 60.0 / secs;
        self.last_count = count;
        for (avg, window) in [
            (&mut self.one, 60.0),
            (&mut self.five, 300.0),
            (&mut self.fifteen, 900.0),
        ] {
            let k = libm_exp(-secs / window);
            *avg = per_minute + k * (*avg - per_minute);
        }
    }
}

/// e^x without std: a short series after range reduction (x <= 0 here, |x| small or moderate).
fn libm_exp(x: f64) -> f64 {
    // e^x = (e^(x/2^k))^(2^k); reduce until |x| < 0.5, then a Taylor series.
    let mut k = 0;
    let mut r = x;
    while !(-0.5..=0.5).contains(&r) {
        r /= 2.0;
        k += 1;
        if k > 60 {
            return 0.0;
        }
    }
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..20 {
        term *= r / f64::from(n);
        sum += term;
    }
    for _ in 0..k {
        sum *= sum;
    }
    sum
}

impl Stats {
    /// Updates the load averages; `uptime` is the time since the broker started.
    pub(crate) fn tick(&mut self, uptime: Duration) {
        let elapsed = uptime.saturating_sub(self.last_tick.unwrap_or_default());
        self.last_tick = Some(uptime);
        let counts = [
            self.messages_received,
            self.messages_sent,
            self.bytes_received,
            self.bytes_sent,
        ];
        for (load, count) in self.load.iter_mut().zip(counts) {
            load.update(count, elapsed);
        }
    }

    /// The `$SYS` topics and their current values.
    pub(crate) fn topics(
        &self,
        version: &str,
        uptime: Duration,
        subscriptions: usize,
        retained: usize,
    ) -> Vec<(TopicName, String)> {
        let mut out = Vec::new();
        let mut put = |topic: &str, value: String| {
            if let Ok(name) = TopicName::parse(topic) {
                out.push((name, value));
            }
        };
        put("$SYS/broker/version", String::from(version));
        put(
            "$SYS/broker/uptime",
            format!("{} seconds", uptime.as_secs()),
        );
        put(
            "$SYS/broker/clients/connected",
            format!("{}", self.connected),
        );
        put(
            "$SYS/broker/messages/received",
            format!("{}", self.messages_received),
        );
        put(
            "$SYS/broker/messages/sent",
            format!("{}", self.messages_sent),
        );
        put("$SYS/broker/messages/dropped", format!("{}", self.dropped));
        put(
            "$SYS/broker/bytes/received",
            format!("{}", self.bytes_received),
        );
        put("$SYS/broker/bytes/sent", format!("{}", self.bytes_sent));
        put(
            "$SYS/broker/subscriptions/count",
            format!("{subscriptions}"),
        );
        put("$SYS/broker/retained messages/count", format!("{retained}"));
        let names = [
            "messages/received",
            "messages/sent",
            "bytes/received",
            "bytes/sent",
        ];
        for (name, load) in names.iter().zip(&self.load) {
            for (window, value) in [
                ("1min", load.one),
                ("5min", load.five),
                ("15min", load.fifteen),
            ] {
                put(
                    &format!("$SYS/broker/load/{name}/{window}"),
                    format!("{value:.2}"),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (-1.0, 0.367_879_441_171_442_3),
            (-5.0, 0.006_737_946_999_085_467),
        ] {
            assert!((libm_exp(x) - want).abs() < 1e-9, "{x}");
        }
    }

    #[test]
    fn load_average_approaches_a_steady_rate() {
        let mut load = Load::default();
        let mut count = 0;
        // 10,000 s: over ten time constants of even the 15-minute average.
        for _ in 0..1000 {
            count += 100; // 100 per 10 s = 600 per minute
            load.update(count, Duration::from_secs(10));
        }
        assert!((load.one - 600.0).abs() < 1.0);
        assert!((load.fifteen - 600.0).abs() < 10.0);
    }
}
