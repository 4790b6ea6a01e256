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

/// Redis round trips seen while `load` runs: the commands clients sent,
/// through `MONITOR`, apart from the commands run inside Lua scripts
/// (`[db lua]` lines), which `INFO commandstats` counts too. Returns
/// `(client commands, script commands, load's result)`.
pub(crate) fn redis_round_trips<T>(
    addr: SocketAddr,
    load: impl FnOnce() -> Result<T, String>,
) -> Result<(u64, u64, T), String> {
    let fail = |e: std::io::Error| format!("redis {addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(fail)?;
    stream.write_all(b"MONITOR\r\n").map_err(fail)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(fail)?);
    let mut ok = String::new();
    reader.read_line(&mut ok).map_err(fail)?;
    if ok.trim() != "+OK" {
        return Err(format!("redis {addr}: MONITOR answered {ok:?}"));
    }
    let counter = std::thread::spawn(move || {
        let (mut client, mut script) = (0u64, 0u64);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            match classify_monitor_line(&line) {
                Some(true) => script += 1,
                Some(false) => client += 1,
                None => {}
            }
            line.clear();
        }
        (client, script)
    });
    let result = load();
    // Let the last lines arrive, then end the reader.
    std::thread::sleep(Duration::from_millis(200));
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let (client, script) = counter
        .join()
        .map_err(|_| format!("redis {addr}: the MONITOR reader panicked"))?;
    Ok((client, script, result?))
}

/// A `MONITOR` line: `Some(true)` for a command run by a script,
/// `Some(false)` for one a client sent, `None` for anything else.
fn classify_monitor_line(line: &str) -> Option<bool> {
    let source = line.split_once('[')?.1.split_once(']')?.0;
    Some(source.ends_with(" lua"))
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
    fn monitor_lines_are_told_apart() {
        let client = "+1700000000.123456 [0 127.0.0.1:51234] \"evalsha\" \"abc\" \"1\"\r\n";
        let script = "+1700000000.123500 [0 lua] \"GET\" \"sentinel:session:x\"\r\n";
        assert_eq!(classify_monitor_line(client), Some(false));
        assert_eq!(classify_monitor_line(script), Some(true));
        assert_eq!(classify_monitor_line("+OK\r\n"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        let me = std::process::id();
        assert!(cpu_seconds(me, clock_ticks()).unwrap() >= 0.0);
        assert!(rss_bytes(me).unwrap() > 0);
    }
}
