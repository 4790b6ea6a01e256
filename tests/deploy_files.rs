//! The dashboards and alert rules in `deploy/`: the rules pass the real
//! `promtool check rules`, every dashboard query is valid PromQL (checked
//! by promtool as a recording rule), and every metric either names is one
//! Sentinel exports (a metric-name constant of the layer, the cache or the
//! proxy) and is in docs/metrics.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `promtool check rules FILE`: its verdict and what it said.
fn promtool_check_rules(file: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(file)
        .output()
        .expect("promtool runs (install Debian's `prometheus` package; scripts/test does)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Every `sentinel_…` metric name in `text`, histogram series folded
/// into their histogram's name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sentinel_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|n| n.ends_with("_seconds")))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric names Sentinel defines: the string constants of the
/// metrics modules of the layer, the tier-config cache and the proxy.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in [
        "crates/sentinel-layer/src/metrics.rs",
        "crates/sentinel-zion/src/metrics.rs",
        "crates/sentinel-proxy/src/metrics.rs",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("pub const ")
                && let Some((_, value)) = line.split_once("= \"sentinel_")
                && let Some((name, _)) = value.split_once('"')
            {
                names.insert(format!("sentinel_{name}"));
            }
        }
    }
    names
}

/// The `expr` of every target of every panel of the dashboard.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/sentinel.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    panels
        .iter()
        .flat_map(|p| {
            assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
            p["targets"].as_array().expect("targets").clone()
        })
        .map(|t| t["expr"].as_str().expect("an expr").to_owned())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool() {
    let (ok, said) = promtool_check_rules(&root().join("deploy/prometheus/alerts.yml"));
    assert!(ok, "promtool check rules failed:\n{said}");
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // Each query as a recording rule, so promtool parses it.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_queries().iter().enumerate() {
        let quoted = serde_json::to_string(expr).unwrap();
        rules.push_str(&format!(
            "      - record: sentinel:dashboard_query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("sentinel-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("queries.yml");
    std::fs::write(&file, rules).unwrap();
    let (ok, said) = promtool_check_rules(&file);
    std::fs::remove_dir_all(&dir).ok();
    assert!(ok, "a dashboard query is not valid PromQL:\n{said}");
}

#[test]
fn every_metric_a_dashboard_or_rule_names_is_exported_and_documented() {
    let exported = exported();
    assert!(
        exported.len() > 20 && exported.contains("sentinel_request_duration_seconds"),
        "{exported:?}"
    );
    let docs = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    for name in &exported {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
    }

    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let mut named = metric_names(&rules);
    for expr in dashboard_queries() {
        named.extend(metric_names(&expr));
    }
    assert!(named.len() >= 10, "{named:?}");
    let unknown: Vec<_> = named.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "named by a dashboard or rule, but not exported: {unknown:?}"
    );
}

#[test]
fn the_name_reader_folds_histogram_series_and_only_those() {
    let names = metric_names(
        "rate(sentinel_request_duration_seconds_bucket[5m]) + sentinel_requests_total \
         / sentinel_x_count",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            "sentinel_request_duration_seconds",
            "sentinel_requests_total",
            "sentinel_x_count"
        ]
    );
}

/// The YAML documents of `file`, parsed by a real YAML parser (PyYAML;
/// `scripts/test` installs Debian's `python3-yaml`), as JSON.
fn yaml_documents(file: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .output()
        .expect("python3 runs (scripts/test installs python3-yaml)");
    assert!(
        out.status.success(),
        "{} is not valid YAML: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the environment variable `name` of `container`.
fn env_value<'a>(container: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn the_kubernetes_manifests_parse_and_hold_together() {
    let docs = yaml_documents(&root().join("deploy/kubernetes/sentinel.yaml"));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Service"
        ])
    );
    let deployment = kind("Deployment");
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(
        &deployment["spec"]["template"]["metadata"]["labels"],
        labels
    );
    assert_eq!(&kind("Service")["spec"]["selector"], labels);
    assert_eq!(
        &kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    );
    let target = &kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);

    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // The port the proxy listens on is the one the probes and the Service use.
    let listen = env_value(container, "SENTINEL_LISTEN").unwrap()["value"]
        .as_str()
        .unwrap();
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(container["ports"][0]["containerPort"], port);
    let port_name = &container["ports"][0]["name"];
    assert_eq!(
        &kind("Service")["spec"]["ports"][0]["targetPort"],
        port_name
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Listening beyond loopback needs inbound keys (or the proxy refuses).
    assert!(env_value(container, "SENTINEL_API_KEYS").is_some());
    // Secrets come from a Secret, never a literal.
    for name in [
        "SENTINEL_API_KEYS",
        "OPENAI_API_KEY",
        "ZION_API_KEY",
        "REDIS_URL",
    ] {
        let var = env_value(container, name).unwrap();
        assert!(
            var["valueFrom"]["secretKeyRef"].is_object(),
            "{name}: {var}"
        );
        assert!(var.get("value").is_none(), "{name} as a literal");
    }
    // The pod outlives the preStop sleep and the drain.
    let drain: u64 = env_value(container, "SENTINEL_DRAIN_TIMEOUT_SECS").unwrap()["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > pre_stop + drain, "{grace} <= {pre_stop} + {drain}");
    // Every variable it sets is one the proxy reads (documented).
    let reference = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        assert!(
            reference.contains(&format!("`{name}`")),
            "{name} is not a setting"
        );
    }
}

#[test]
fn the_systemd_unit_outlasts_the_drain() {
    let unit =
        std::fs::read_to_string(root().join("deploy/systemd/sentinel-proxy.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}="))
            .trim()
            .to_owned()
    };
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.contains(section), "{section}");
    }
    assert!(value("ExecStart").starts_with("/usr/local/bin/sentinel-proxy --config "));
    assert_eq!(value("KillSignal"), "SIGTERM");
    let drain: u64 = value("Environment")
        .strip_prefix("SENTINEL_DRAIN_TIMEOUT_SECS=")
        .unwrap()
        .parse()
        .unwrap();
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    assert!(stop > drain, "TimeoutStopSec {stop} <= drain {drain}");
    let files: u64 = value("LimitNOFILE").parse().unwrap();
    assert!(files > 20_000, "room for SENTINEL_MAX_CONNECTIONS");
}
