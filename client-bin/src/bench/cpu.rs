//! CPU time of a process from Linux's `/proc/PID/stat` (user + system, every thread, including
//! threads that have exited), to report a broker's CPU cost per delivered message.
//!
//! The kernel reports it in clock ticks of `USER_HZ`, which is 100 on every Linux architecture
//! (it is part of the ABI), so the resolution is 10 ms: runs should take seconds.

use std::time::Duration;

/// `USER_HZ`: clock ticks per second in `/proc/PID/stat`.
const TICKS_PER_SECOND: u64 = 100;

/// The resolution of [`cpu_time`].
pub const RESOLUTION: Duration = Duration::from_millis(1000 / TICKS_PER_SECOND);

/// User + system CPU time of process `pid` (`None`: this process) so far.
pub fn cpu_time(pid: Option<u32>) -> Result<Duration, String> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_stat(&stat).ok_or_else(|| format!("cannot parse {path}"))
}

/// utime + stime of a `/proc/PID/stat` line. The command name (field 2) is in parentheses and
/// may hold spaces or parentheses itself, so the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_micros(ticks * 1_000_000 / TICKS_PER_SECOND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    4 0 1000 10000 100 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(3000)));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(cpu_time(None).is_ok());
        }
    }
}
