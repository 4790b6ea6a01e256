//! Tracing's settings, from OpenTelemetry's standard environment variables.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::settings::{SettingsError, number, var};

/// How spans go to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over HTTP, protobuf bodies (`http/protobuf`, the default).
    HttpProtobuf,
    /// OTLP over gRPC (`grpc`).
    Grpc,
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This fraction of traces, by trace id.
    Ratio(f64),
    /// The client's decision when its `traceparent` carries one, else the
    /// root sampler's.
    ParentBased(Root),
}

/// The root sampler of [`Sampler::ParentBased`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    /// Every new trace.
    AlwaysOn,
    /// No new trace.
    AlwaysOff,
    /// This fraction of new traces.
    Ratio(f64),
}

impl Sampler {
    /// Whether a span of `trace_id` is recorded, under a parent that was
    /// (`Some(true)`), was not (`Some(false)`), or without a parent.
    pub(crate) fn sample(&self, parent_sampled: Option<bool>, trace_id: &[u8; 16]) -> bool {
        let ratio = |r: f64| {
            // The trace id's last 8 bytes, against the fraction of u64.
            let mut low = [0u8; 8];
            low.copy_from_slice(&trace_id[8..]);
            let bound = (r * u64::MAX as f64) as u64;
            r >= 1.0 || u64::from_be_bytes(low) < bound
        };
        match *self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(r) => ratio(r),
            Sampler::ParentBased(root) => match (parent_sampled, root) {
                (Some(sampled), _) => sampled,
                (None, Root::AlwaysOn) => true,
                (None, Root::AlwaysOff) => false,
                (None, Root::Ratio(r)) => ratio(r),
            },
        }
    }
}

/// Tracing's settings; tracing is on when an endpoint is set.
#[derive(Clone)]
pub struct TraceSettings {
    /// Where spans are sent: the full URL of the traces endpoint (HTTP), or
    /// the collector's URL (gRPC).
    pub endpoint: String,
    /// `http/protobuf` or `grpc`.
    pub protocol: Protocol,
    /// Headers sent with every export (may carry a collector's key: never
    /// shown).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// An export's bound.
    pub timeout: Duration,
    /// `service.name`.
    pub service_name: String,
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// Which traces are recorded.
    pub sampler: Sampler,
    /// Spans held for export at most; past it new spans are dropped and
    /// counted.
    pub max_queue: usize,
    /// Longest wait before a partial batch goes.
    pub schedule_delay: Duration,
    /// Spans per export at most.
    pub max_batch: usize,
}

impl std::fmt::Debug for TraceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The headers' values may be keys: only their names are shown.
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TraceSettings")
            .field(
                "endpoint",
                &sentinel_core::redact::redact_url(&self.endpoint),
            )
            .field("protocol", &self.protocol)
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field("service_name", &self.service_name)
            .field("sampler", &self.sampler)
            .field("max_queue", &self.max_queue)
            .field("schedule_delay", &self.schedule_delay)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// The signal-specific variable (`OTEL_EXPORTER_OTLP_TRACES_*`) when set,
/// else the general one (`OTEL_EXPORTER_OTLP_*`), with the name it came
/// from.
fn otlp_var(env: &dyn Fn(&str) -> Option<String>, suffix: &str) -> Option<(String, String)> {
    let traces = format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}");
    let general = format!("OTEL_EXPORTER_OTLP_{suffix}");
    var(env, &traces)
        .map(|v| (v, traces))
        .or_else(|| var(env, &general).map(|v| (v, general)))
}

fn endpoint_url(name: &str, value: &str) -> Result<String, SettingsError> {
    let value = value.trim();
    let ok = (value.starts_with("http://") || value.starts_with("https://"))
        && value.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
    if ok {
        Ok(value.to_owned())
    } else {
        Err(SettingsError::new(
            name,
            "must be an http:// or https:// URL",
        ))
    }
}

/// Decodes `%XX` escapes (W3C Baggage's encoding, used by the header and
/// resource lists); a malformed escape stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key=value,key=value`, percent-decoded; `what` names the variable.
fn pairs(name: &str, list: &str) -> Result<Vec<(String, String)>, SettingsError> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| SettingsError::new(name, "each item must be key=value"))?;
            let key = percent_decode(key.trim());
            if key.is_empty() {
                return Err(SettingsError::new(name, "a key is empty"));
            }
            Ok((key, percent_decode(value.trim())))
        })
        .collect()
}

fn ratio(env: &dyn Fn(&str) -> Option<String>) -> Result<f64, SettingsError> {
    const NAME: &str = "OTEL_TRACES_SAMPLER_ARG";
    match var(env, NAME) {
        None => Ok(1.0),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(SettingsError::new(NAME, "must be a number from 0 to 1")),
        },
    }
}

/// A whole-number variable with no file key: the settings' own reader.
fn whole_number(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SettingsError> {
    number(env, name, name, None, default, range)
}

impl TraceSettings {
    /// Reads the OpenTelemetry variables; `None` when no endpoint is set or
    /// `OTEL_SDK_DISABLED` is `true` (tracing off).
    pub fn load(
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<TraceSettings>, SettingsError> {
        if var(env, "OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let protocol = match otlp_var(env, "PROTOCOL") {
            None => Protocol::HttpProtobuf,
            Some((v, name)) => match v.trim() {
                "http/protobuf" => Protocol::HttpProtobuf,
                "grpc" => Protocol::Grpc,
                "http/json" => {
                    return Err(SettingsError::new(
                        &name,
                        "http/json is not supported: use http/protobuf or grpc",
                    ));
                }
                _ => return Err(SettingsError::new(&name, "must be http/protobuf or grpc")),
            },
        };
        // The signal's own endpoint is used as it is; the general one is a
        // base to which HTTP adds `/v1/traces`.
        let endpoint = match var(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(v) => endpoint_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &v)?,
            None => match var(env, "OTEL_EXPORTER_OTLP_ENDPOINT") {
                None => return Ok(None),
                Some(v) => {
                    let base = endpoint_url("OTEL_EXPORTER_OTLP_ENDPOINT", &v)?;
                    match protocol {
                        Protocol::HttpProtobuf => {
                            format!("{}/v1/traces", base.trim_end_matches('/'))
                        }
                        Protocol::Grpc => base,
                    }
                }
            },
        };
        let mut headers = Vec::new();
        if let Some((list, name)) = otlp_var(env, "HEADERS") {
            for (key, value) in pairs(&name, &list)? {
                let header = HeaderName::try_from(key.as_str()).map_err(|_| {
                    SettingsError::new(&name, format!("`{key}` is not a header name"))
                })?;
                // The value is never shown: it may be a key.
                let mut value = HeaderValue::try_from(value).map_err(|_| {
                    SettingsError::new(
                        &name,
                        format!("the value of `{key}` cannot go into a header"),
                    )
                })?;
                value.set_sensitive(true);
                headers.push((header, value));
            }
        }
        let timeout = match otlp_var(env, "TIMEOUT") {
            None => 10_000,
            Some((_, name)) => whole_number(env, &name, 10_000, 1..=600_000)?,
        };
        let sampler = match var(env, "OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            None | Some("parentbased_always_on") => Sampler::ParentBased(Root::AlwaysOn),
            Some("always_on") => Sampler::AlwaysOn,
            Some("always_off") => Sampler::AlwaysOff,
            Some("traceidratio") => Sampler::Ratio(ratio(env)?),
            Some("parentbased_always_off") => Sampler::ParentBased(Root::AlwaysOff),
            Some("parentbased_traceidratio") => Sampler::ParentBased(Root::Ratio(ratio(env)?)),
            Some(_) => {
                return Err(SettingsError::new(
                    "OTEL_TRACES_SAMPLER",
                    "must be always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ));
            }
        };
        let mut resource = match var(env, "OTEL_RESOURCE_ATTRIBUTES") {
            Some(list) => pairs("OTEL_RESOURCE_ATTRIBUTES", &list)?,
            None => Vec::new(),
        };
        // `OTEL_SERVICE_NAME` wins over a `service.name` in the list.
        let listed_name = resource
            .iter()
            .position(|(k, _)| k == "service.name")
            .map(|i| resource.remove(i).1);
        let service_name = var(env, "OTEL_SERVICE_NAME")
            .map(|v| v.trim().to_owned())
            .or(listed_name)
            .unwrap_or_else(|| "sentinel-proxy".to_owned());
        let max_queue = whole_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1..=1_000_000)?;
        let max_batch = whole_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1..=1_000_000)?;
        let schedule_delay = whole_number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000, 1..=600_000)?;
        let usize_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Some(TraceSettings {
            endpoint,
            protocol,
            headers,
            timeout: Duration::from_millis(timeout),
            service_name,
            resource,
            sampler,
            max_queue: usize_of(max_queue),
            // A batch is never larger than the queue.
            max_batch: usize_of(max_batch.min(max_queue)),
            schedule_delay: Duration::from_millis(schedule_delay),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceSettings::load(&|name| map.get(name).cloned())
    }

    #[test]
    fn no_endpoint_means_no_tracing() {
        assert!(load(&[]).unwrap().is_none());
        assert!(load(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        assert!(
            load(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ])
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn endpoints_follow_the_otlp_rules() {
        let s = load(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        let s = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://other:443/custom/path",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "https://other:443/custom/path", "used as it is");
        let s = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol),
            ("http://collector:4317", Protocol::Grpc)
        );
        // The signal's own protocol wins.
        let s = load(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4317",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_TRACES_SAMPLER", "sometimes"),
                ],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
                ],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
                ],
                "OTEL_BSP_MAX_QUEUE_SIZE",
            ),
        ];
        for (vars, name) in cases {
            let err = load(vars).unwrap_err().to_string();
            assert!(err.starts_with(name), "{err}");
        }
    }

    #[test]
    fn headers_are_decoded_and_never_shown() {
        let s = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret-collector-key,x-team=ops",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.headers[0].0, "authorization");
        assert_eq!(s.headers[0].1, "Bearer s3cret-collector-key");
        assert!(s.headers[0].1.is_sensitive());
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("x-team"), "{shown}");
    }

    #[test]
    fn service_name_and_resource_attributes() {
        let s = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-list,deployment.environment=prod%2Ceu",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.service_name, "from-list");
        assert_eq!(
            s.resource,
            vec![("deployment.environment".to_owned(), "prod,eu".to_owned())]
        );
        let s = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-list"),
            ("OTEL_SERVICE_NAME", "gateway"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.service_name, "gateway");
        let s = load(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")])
            .unwrap()
            .unwrap();
        assert_eq!(s.service_name, "sentinel-proxy");
        assert_eq!(s.sampler, Sampler::ParentBased(Root::AlwaysOn));
    }

    #[test]
    fn samplers_follow_the_parent_or_the_ratio() {
        let low = [0u8; 16];
        let mut high = [0u8; 16];
        high[8..].copy_from_slice(&u64::MAX.to_be_bytes());
        let parent_based = Sampler::ParentBased(Root::AlwaysOn);
        assert!(parent_based.sample(None, &low));
        assert!(!parent_based.sample(Some(false), &low));
        assert!(Sampler::ParentBased(Root::AlwaysOff).sample(Some(true), &low));
        assert!(!Sampler::ParentBased(Root::AlwaysOff).sample(None, &low));
        assert!(
            Sampler::AlwaysOn.sample(Some(false), &low),
            "ignores the parent"
        );
        assert!(!Sampler::AlwaysOff.sample(Some(true), &low));
        let half = Sampler::Ratio(0.5);
        assert!(half.sample(None, &low));
        assert!(!half.sample(None, &high));
        assert!(!Sampler::Ratio(0.0).sample(None, &low));
        assert!(Sampler::Ratio(1.0).sample(None, &high));
        // About half of random trace ids.
        let kept = (0..10_000)
            .filter(|_| half.sample(None, &super::super::context::new_trace_id()))
            .count();
        assert!((4_500..=5_500).contains(&kept), "{kept}");
    }
}
