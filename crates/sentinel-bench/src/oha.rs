//! Runs `oha` and reads its JSON summary.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// A closed loop: this many connections, each sending its next request
    /// when the last one is answered.
    Closed(u32),
    /// An open loop: this many requests per second whatever the answers
    /// (over 32 connections), latency counted from each request's scheduled
    /// start (`--latency-correction`, no coordinated omission).
    Rate(u32),
}

impl Load {
    pub(crate) fn label(self) -> String {
        match self {
            Load::Closed(c) => format!("closed, {c} conn"),
            Load::Rate(r) => format!("open, {r} req/s"),
        }
    }
}

/// One `oha` run.
pub(crate) struct Request<'a> {
    pub(crate) url: &'a str,
    pub(crate) body: &'a str,
    pub(crate) headers: &'a [(&'a str, &'a str)],
    pub(crate) load: Load,
    pub(crate) duration: Duration,
}

/// What `oha` measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outcome {
    /// Responses received (any status).
    pub(crate) completed: u64,
    /// Responses with a status other than 200.
    pub(crate) not_ok: u64,
    pub(crate) requests_per_sec: f64,
    /// Latency percentiles, in seconds.
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
}

pub(crate) fn run(oha: &Path, request: &Request<'_>) -> Result<Outcome, String> {
    let mut command = Command::new(oha);
    command
        .args(["--no-tui", "--output-format", "json", "-m", "POST"])
        .args(["-T", "application/json", "-d", request.body])
        .args(["-z", &format!("{}ms", request.duration.as_millis())]);
    for (name, value) in request.headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    match request.load {
        Load::Closed(c) => {
            command.args(["-c", &c.to_string()]);
        }
        Load::Rate(r) => {
            command
                .args(["-c", "32", "-q", &r.to_string()])
                .arg("--latency-correction");
        }
    }
    command.arg(request.url);
    let output = command
        .output()
        .map_err(|e| format!("running {}: {e}", oha.display()))?;
    if !output.status.success() {
        return Err(format!(
            "oha failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    parse(&output.stdout)
}

fn parse(json: &[u8]) -> Result<Outcome, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("oha's JSON: {e}"))?;
    let number = |path: &[&str]| -> Result<f64, String> {
        let mut at = &v;
        for key in path {
            at = at
                .get(key)
                .ok_or_else(|| format!("oha's JSON has no {}", path.join(".")))?;
        }
        at.as_f64()
            .ok_or_else(|| format!("oha's {} is not a number", path.join(".")))
    };
    let mut completed = 0;
    let mut not_ok = 0;
    if let Some(codes) = v.get("statusCodeDistribution").and_then(|c| c.as_object()) {
        for (code, count) in codes {
            let count = count.as_u64().unwrap_or(0);
            completed += count;
            if code != "200" {
                not_ok += count;
            }
        }
    }
    Ok(Outcome {
        completed,
        not_ok,
        requests_per_sec: number(&["summary", "requestsPerSec"])?,
        p50: number(&["latencyPercentiles", "p50"])?,
        p90: number(&["latencyPercentiles", "p90"])?,
        p99: number(&["latencyPercentiles", "p99"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_read() {
        let json = br#"{"summary":{"successRate":1.0,"requestsPerSec":1234.5},
            "latencyPercentiles":{"p10":0.0001,"p50":0.0002,"p90":0.0004,"p99":0.001},
            "statusCodeDistribution":{"200":100,"502":2}}"#;
        let o = parse(json).unwrap();
        assert_eq!((o.completed, o.not_ok), (102, 2));
        assert_eq!(o.requests_per_sec, 1234.5);
        assert_eq!((o.p50, o.p90, o.p99), (0.0002, 0.0004, 0.001));
        assert!(parse(b"{}").is_err());
    }
}
