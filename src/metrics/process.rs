//! The `process_*` metrics that Prometheus client libraries export about their own process
//! (resident and virtual memory, CPU time, open and allowed file descriptors, start time), read
//! from `/proc` at each scrape. Linux only: elsewhere the files are missing, and the metrics are
//! left out with one warning.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

const STAT: &str = "/proc/self/stat";
const STATUS: &str = "/proc/self/status";
const LIMITS: &str = "/proc/self/limits";
const FDS: &str = "/proc/self/fd";
/// The system's boot time (`btime`), which the process's start time counts from.
const SYSTEM_STAT: &str = "/proc/stat";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("reading {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the clock tick (sysconf _SC_CLK_TCK)")]
    ClockTick(#[source] std::io::Error),
    #[error("{path} has no {what} where expected")]
    Parse { path: &'static str, what: &'static str },
}

/// This process's figures, as the `process_*` metrics show them.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// User and system CPU time.
    pub cpu_seconds: f64,
    pub open_fds: u64,
    /// The soft limit on open files; `u64::MAX` when unlimited (as Go's client reports it).
    pub max_fds: u64,
    /// Since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads this process's figures from `/proc`.
    pub fn read() -> Result<ProcessStats, ProcessError> {
        let read = |path: &'static str| {
            std::fs::read_to_string(path).map_err(|source| ProcessError::Read { path, source })
        };
        let stat = parse_stat(&read(STAT)?)?;
        let (resident_kib, virtual_kib) = parse_status(&read(STATUS)?)?;
        let max_fds = parse_max_open_files(&read(LIMITS)?)?;
        let boot_time = parse_boot_time(&read(SYSTEM_STAT)?)?;
        let open_fds = std::fs::read_dir(FDS)
            .map_err(|source| ProcessError::Read { path: FDS, source })?
            .count();
        let ticks = crate::sys::clock_ticks_per_second().map_err(ProcessError::ClockTick)? as f64;
        Ok(ProcessStats {
            resident_memory_bytes: resident_kib.saturating_mul(1024),
            virtual_memory_bytes: virtual_kib.saturating_mul(1024),
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            open_fds: open_fds as u64,
            max_fds,
            start_time_seconds: boot_time as f64 + stat.start_time as f64 / ticks,
        })
    }
}

/// The fields of `/proc/PID/stat` used here, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    /// Since boot.
    start_time: u64,
}

/// `/proc/PID/stat`: the fields after the command name in parentheses (which may itself hold
/// spaces and parentheses), counted from 1 for the pid as proc(5) does: utime 14, stime 15,
/// starttime 22.
fn parse_stat(text: &str) -> Result<Stat, ProcessError> {
    let missing = |what| ProcessError::Parse { path: STAT, what };
    let after_name = text.rfind(')').ok_or(missing("command name"))?;
    // Field 3 (the state) is the first after the name.
    let fields: Vec<&str> = text[after_name + 1..].split_whitespace().collect();
    let field = |n: usize, what| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or(missing(what))
    };
    Ok(Stat {
        utime: field(14, "utime")?,
        stime: field(15, "stime")?,
        start_time: field(22, "starttime")?,
    })
}

/// `/proc/PID/status`: `VmRSS` and `VmSize`, in KiB.
fn parse_status(text: &str) -> Result<(u64, u64), ProcessError> {
    let kib = |key: &'static str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or(ProcessError::Parse {
                path: STATUS,
                what: key,
            })
    };
    Ok((kib("VmRSS")?, kib("VmSize")?))
}

/// `/proc/PID/limits`: the soft limit of `Max open files`.
fn parse_max_open_files(text: &str) -> Result<u64, ProcessError> {
    let soft = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next());
    match soft {
        Some("unlimited") => Some(u64::MAX),
        Some(n) => n.parse().ok(),
        None => None,
    }
    .ok_or(ProcessError::Parse {
        path: LIMITS,
        what: "Max open files",
    })
}

/// `/proc/stat`: `btime`, the boot time in seconds since the Unix epoch.
fn parse_boot_time(text: &str) -> Result<u64, ProcessError> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or(ProcessError::Parse {
            path: SYSTEM_STAT,
            what: "btime",
        })
}

/// Encodes the `process_*` metrics at each scrape. When `/proc` cannot be read they are left
/// out, and the first such failure is logged.
#[derive(Debug, Default)]
pub struct ProcessCollector {
    warned: AtomicBool,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match ProcessStats::read() {
            Ok(stats) => stats,
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %crate::error_chain(&e), "the process_* metrics are left out");
                }
                return Ok(());
            }
        };
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stats.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                stats.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            encode(&mut encoder, name, help, &ConstGauge::new(value))?;
        }
        encode(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            &ConstCounter::new(stats.cpu_seconds),
        )?;
        encode(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            &ConstGauge::new(stats.start_time_seconds),
        )
    }
}

fn encode(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis of its own.
        let text = "4242 (kured (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 25 0 0 20 0 6 0 \
                    98765 123456789 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text).unwrap(),
            Stat {
                utime: 150,
                stime: 25,
                start_time: 98765
            }
        );
        let short = "4242 (kured) S 1 4242";
        assert_eq!(
            parse_stat(short).unwrap_err().to_string(),
            "/proc/self/stat has no utime where expected"
        );
    }

    #[test]
    fn status_gives_resident_and_virtual_memory() {
        let text =
            "Name:\tkured\nVmPeak:\t  30000 kB\nVmSize:\t   28672 kB\nVmRSS:\t    9216 kB\nThreads:\t6\n";
        assert_eq!(parse_status(text).unwrap(), (9216, 28672));
        assert_eq!(
            parse_status("Name:\tkured\nVmSize:\t 1 kB\n")
                .unwrap_err()
                .to_string(),
            "/proc/self/status has no VmRSS where expected"
        );
    }

    #[test]
    fn the_soft_open_files_limit_is_the_maximum() {
        let limits = |soft: &str| {
            format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max processes             62811                62811                processes \n\
                 Max open files            {soft:<20} 524288               files     \n"
            )
        };
        assert_eq!(parse_max_open_files(&limits("1024")).unwrap(), 1024);
        assert_eq!(parse_max_open_files(&limits("unlimited")).unwrap(), u64::MAX);
        assert!(parse_max_open_files("Limit Soft Limit\n").is_err());
    }

    #[test]
    fn boot_time_is_btime() {
        let text = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1764000000\nprocesses 7\n";
        assert_eq!(parse_boot_time(text).unwrap(), 1_764_000_000);
        assert!(parse_boot_time("cpu 1 2 3\n").is_err());
    }

    #[test]
    fn this_process_reads_as_running_now_with_memory_and_open_files() {
        let stats = ProcessStats::read().expect("/proc/self on Linux");
        let now = jiff::Timestamp::now().as_second() as f64;
        assert!(stats.resident_memory_bytes > 0, "{stats:?}");
        assert!(
            stats.virtual_memory_bytes >= stats.resident_memory_bytes,
            "{stats:?}"
        );
        // The descriptor of /proc/self/fd itself, while it is read, at least.
        assert!(stats.open_fds >= 1, "{stats:?}");
        assert!(stats.max_fds >= stats.open_fds, "{stats:?}");
        assert!(stats.cpu_seconds >= 0.0, "{stats:?}");
        // Started before now, and after the machine booted (a day is a generous bound for a test run).
        assert!(stats.start_time_seconds <= now + 1.0, "{stats:?} at {now}");
        assert!(stats.start_time_seconds > now - 86_400.0, "{stats:?} at {now}");
    }
}
