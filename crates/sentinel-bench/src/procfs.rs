//! What the driver reads off other processes: CPU time and RSS from
//! `/proc`, and Redis's command counters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on
/// every Linux this runs on).
pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User plus system CPU seconds used so far by process `pid`, all its
/// threads, including those that have exited.
pub(crate) fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<f64, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {n}"))
    };
    Ok((field(14)? + field(15)?) / ticks)
}

/// The resident set size of process `pid`, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("/proc/{pid}/status: no VmRSS"))
}

/// The number of commands Redis at `addr` has run, from
/// `INFO commandstats`, leaving out `INFO` itself.
pub(crate) fn redis_commands(addr: SocketAddr) -> Result<u64, String> {
    let fail = |e: std::io::Error| format!("redis {addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(fail)?;
    stream.write_all(b"INFO commandstats\r\n").map_err(fail)?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).map_err(fail)?;
    let len: usize = header
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("redis {addr}: unexpected reply {header:?}"))?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).map_err(fail)?;
    Ok(count_calls(&String::from_utf8_lossy(&body)))
}

/// Sums `calls=` over the `cmdstat_*` lines, except `cmdstat_info`.
fn count_calls(info: &str) -> u64 {
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_summed_without_info() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=3,usec=1\r\ncmdstat_get:calls=2,usec=4\r\n";
        assert_eq!(count_calls(info), 12);
    }

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        let me = std::process::id();
        assert!(cpu_seconds(me, clock_ticks()).unwrap() >= 0.0);
        assert!(rss_bytes(me).unwrap() > 0);
    }
}
