//! What the proxy is doing now, for an operator: `GET /admin/state` as JSON
//! and `GET /status` as a page (docs/configuration.md, "The state API" and
//! "The status page"). Both show one [`View`]: the tier config in use, each
//! tier's models with their share of new traffic and breaker, each
//! provider's health and breaker; the page adds each tier's last minute of
//! traffic.
//!
//! The page is plain server-rendered HTML: no script, no external asset
//! (its style is inline, and its `Content-Security-Policy` allows nothing
//! else), refreshed by a `<meta http-equiv="refresh">` every
//! [`REFRESH_SECONDS`]. Every name in it (models, providers) comes from the
//! tier config and is escaped.

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use sentinel_core::{ConfigOrigin, SourceStatus, Tier};
use sentinel_layer::state::{BreakerStatus, RoutingState};
use sentinel_layer::{ErrorCode, SentinelError};

use crate::recent::Minute;
use crate::server::AppState;

/// How often the status page reloads itself, in seconds.
pub(crate) const REFRESH_SECONDS: u32 = 5;

/// The routing state and where its config came from, taken once per read.
struct View {
    routing: RoutingState,
    source: Option<SourceStatus>,
}

impl View {
    /// The view now, or none before a tier config is loaded.
    fn now(state: &AppState) -> Option<View> {
        Some(View {
            routing: state.layer.routing_state()?,
            source: state.source.status(),
        })
    }

    fn origin(&self) -> Option<&'static str> {
        self.source.map(|s| match s.origin {
            ConfigOrigin::Zion => "zion",
            ConfigOrigin::Store => "redis",
            ConfigOrigin::File => "file",
            ConfigOrigin::Builtin => "builtin",
        })
    }

    fn age(&self) -> Option<Duration> {
        self.source.and_then(|s| s.age)
    }

    fn stale(&self) -> bool {
        self.source.is_some_and(|s| s.stale)
    }
}

/// `GET /admin/state`: the [`View`] as JSON.
pub(crate) async fn admin_state(State(state): State<AppState>) -> Response {
    let Some(view) = View::now(&state) else {
        return SentinelError::new(
            ErrorCode::TierConfigUnavailable,
            "no tier config is loaded yet: retry after the time in `Retry-After`",
        )
        .retry_after(Duration::from_secs(1))
        .into_response()
        .into_response();
    };
    let seconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let tier_config = serde_json::json!({
        "version": view.routing.config.version(),
        "age_seconds": seconds(view.age()),
        "source": view.origin(),
        "stale": view.stale(),
    });
    let tiers: serde_json::Map<String, serde_json::Value> = view
        .routing
        .tiers
        .iter()
        .map(|(tier, models)| {
            let models: Vec<_> = models
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "provider": &*m.provider,
                        "model": &*m.model,
                        "relative_cost": m.relative_cost,
                        "share": m.share,
                        "breaker": m.breaker.as_str(),
                        "retry_in_seconds": seconds(m.retry_in),
                    })
                })
                .collect();
            (
                tier.as_str().to_owned(),
                serde_json::json!({ "models": models }),
            )
        })
        .collect();
    let providers: serde_json::Map<String, serde_json::Value> = view
        .routing
        .providers
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                serde_json::json!({
                    "health": p.health.as_str(),
                    "breaker": p.breaker.as_str(),
                    "retry_in_seconds": seconds(p.retry_in),
                }),
            )
        })
        .collect();
    axum::Json(serde_json::json!({
        "tier_config": tier_config,
        "tiers": tiers,
        "providers": providers,
    }))
    .into_response()
}

/// `GET /status`: the [`View`] and each tier's last minute as a page;
/// `503` with a page that says why before a tier config is loaded.
pub(crate) async fn status_page(State(state): State<AppState>) -> Response {
    let (status, html) = match View::now(&state) {
        Some(view) => {
            let minutes = Tier::ALL.map(|t| state.timings.recent.last_minute(t));
            (StatusCode::OK, render(&view, &minutes))
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, render_waiting()),
    };
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1b1f24;background:#fff}\
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .3em}\
table{border-collapse:collapse;min-width:40em}th,td{text-align:left;padding:.3em .8em;border-bottom:1px solid #d8dee4}\
th{font-weight:600;background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.bar{display:inline-block;width:8em;height:.8em;background:#eaeef2;vertical-align:middle;margin-right:.5em}\
.bar span{display:block;height:100%;background:#2da44e}\
.closed,.up{color:#1a7f37}.open,.down{color:#cf222e;font-weight:600}.half_open,.unknown{color:#9a6700}\
.stale{color:#cf222e;font-weight:600}.traffic{color:#57606a;margin:.2em 0 .6em}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{color:#57606a}dd{margin:0}";

fn head(out: &mut String) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Sentinel status</title><style>{STYLE}</style></head><body>\
         <h1>Sentinel status</h1>"
    );
}

fn render_waiting() -> String {
    let mut out = String::new();
    head(&mut out);
    out.push_str(
        "<p id=\"waiting\">No tier config is loaded yet: this page reloads until one is.</p></body></html>\n",
    );
    out
}

/// The page of `view`, with `minutes` in [`Tier::ALL`] order.
fn render(view: &View, minutes: &[Minute; 3]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    head(&mut out);
    let _ = write!(
        out,
        "<p>Reloads every {REFRESH_SECONDS} s.</p><section id=\"config\"><h2>Tier config</h2><dl>\
         <dt>Version</dt><dd id=\"config-version\">{}</dd>\
         <dt>Source</dt><dd id=\"config-source\">{}</dd>\
         <dt>Age</dt><dd id=\"config-age\">{}</dd>\
         <dt>Stale</dt><dd id=\"config-stale\"{}>{}</dd></dl></section>",
        Escaped(view.routing.config.version().unwrap_or("none")),
        view.origin().unwrap_or("unknown"),
        view.age().map_or_else(|| "does not age".to_owned(), span),
        if view.stale() { " class=\"stale\"" } else { "" },
        if view.stale() {
            "yes: refreshing it fails"
        } else {
            "no"
        },
    );
    for (tier, models) in &view.routing.tiers {
        let minute = &minutes[tier.index()];
        let name = tier.as_str();
        let _ = write!(
            out,
            "<section class=\"tier\" id=\"tier-{name}\"><h2>{name}</h2>\
             <p class=\"traffic\">Last minute: <span class=\"rate\">{:.2} req/s</span> · \
             <span class=\"requests\">{}</span> requests · \
             <span class=\"errors\">{}</span> not 2xx · \
             p50 <span class=\"p50\">{}</span> · p99 <span class=\"p99\">{}</span></p>\
             <table><thead><tr><th>Provider</th><th>Model</th><th>Relative cost</th>\
             <th>Share</th><th>Breaker</th><th>Retry in</th></tr></thead><tbody>",
            minute.rate,
            minute.requests,
            minute.errors,
            minute.p50.map_or_else(|| "–".to_owned(), span),
            minute.p99.map_or_else(|| "–".to_owned(), span),
        );
        for m in models {
            let percent = m.share * 100.0;
            // A model whose provider backs off takes no traffic either.
            let provider_open = view
                .routing
                .providers
                .iter()
                .find(|p| p.name == m.provider)
                .is_some_and(|p| p.breaker != BreakerStatus::Closed);
            let _ = write!(
                out,
                "<tr class=\"model\" data-provider=\"{provider}\" data-model=\"{model}\" \
                 data-share=\"{share}\" data-breaker=\"{breaker}\">\
                 <td>{provider}</td><td>{model}</td><td class=\"num\">{cost}</td>\
                 <td class=\"share\"><span class=\"bar\"><span style=\"width:{percent:.1}%\"></span></span>{percent:.1} %</td>\
                 <td class=\"breaker {breaker}\">{breaker_text}{provider_note}</td><td class=\"retry\">{retry}</td></tr>",
                provider_note = if provider_open {
                    " · <span class=\"open\">provider backing off</span>"
                } else {
                    ""
                },
                provider = Escaped(&m.provider),
                model = Escaped(&m.model),
                share = m.share,
                cost = m.relative_cost,
                breaker = m.breaker.as_str(),
                breaker_text = breaker_text(m.breaker),
                retry = m.retry_in.map_or_else(String::new, span),
            );
        }
        out.push_str("</tbody></table></section>");
    }
    out.push_str(
        "<section id=\"providers\"><h2>Providers</h2><table><thead><tr><th>Provider</th>\
         <th>Health</th><th>Breaker</th><th>Retry in</th></tr></thead><tbody>",
    );
    for p in &view.routing.providers {
        let _ = write!(
            out,
            "<tr class=\"provider\" data-provider=\"{name}\" data-health=\"{health}\" \
             data-breaker=\"{breaker}\"><td>{name}</td><td class=\"{health}\">{health}</td>\
             <td class=\"breaker {breaker}\">{breaker_text}</td><td class=\"retry\">{retry}</td></tr>",
            name = Escaped(&p.name),
            health = p.health.as_str(),
            breaker = p.breaker.as_str(),
            breaker_text = breaker_text(p.breaker),
            retry = p.retry_in.map_or_else(String::new, span),
        );
    }
    out.push_str("</tbody></table></section></body></html>\n");
    out
}

fn breaker_text(status: BreakerStatus) -> &'static str {
    match status {
        BreakerStatus::Closed => "closed",
        BreakerStatus::Open => "open (backing off)",
        BreakerStatus::HalfOpen => "half-open (probing)",
    }
}

/// A duration for a person: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
fn span(d: Duration) -> String {
    let secs = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{} min {:02} s", secs / 60, secs % 60)
    } else {
        format!("{} h {:02} min", secs / 3600, secs % 3600 / 60)
    }
}

/// Text escaped for HTML, in element content and in quoted attributes.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sentinel_core::{RawTierConfig, TierConfig};
    use sentinel_layer::state::{Health, ModelState, ProviderState};

    use super::*;

    /// A view of one tier with a model of an open provider and a model
    /// whose name is markup.
    fn view() -> View {
        let raw: RawTierConfig = serde_json::from_str(
            r#"{ "version": "v<1>", "tiers": { "simple": { "models": [
                { "provider": "openai", "model": "<b>bold</b>", "relative_cost": 1 },
                { "provider": "backup", "model": "spare", "relative_cost": 1 } ] } } }"#,
        )
        .unwrap();
        let config = Arc::new(TierConfig::validate(raw).unwrap());
        let model = |provider: &str, model: &str, share: f64| ModelState {
            provider: provider.into(),
            model: model.into(),
            relative_cost: 1,
            share,
            breaker: BreakerStatus::Closed,
            retry_in: None,
        };
        let provider = |name: &str, breaker, retry_in| ProviderState {
            name: name.into(),
            health: Health::Down,
            breaker,
            retry_in,
        };
        View {
            routing: RoutingState {
                config,
                tiers: vec![(
                    Tier::Simple,
                    vec![
                        model("openai", "<b>bold</b>", 1.0),
                        model("backup", "spare", 0.0),
                    ],
                )],
                providers: vec![
                    provider("openai", BreakerStatus::Closed, None),
                    provider("backup", BreakerStatus::Open, Some(Duration::from_secs(75))),
                ],
            },
            source: Some(SourceStatus {
                origin: ConfigOrigin::Store,
                age: Some(Duration::from_secs(3_725)),
                stale: true,
            }),
        }
    }

    #[test]
    fn the_page_escapes_names_and_says_when_a_provider_backs_off() {
        let minute = Minute {
            requests: 0,
            errors: 0,
            rate: 0.0,
            p50: None,
            p99: None,
        };
        let html = render(&view(), &[minute; 3]);
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("<td>&lt;b&gt;bold&lt;/b&gt;</td>"), "{html}");
        assert!(
            html.contains(r#"<dd id="config-version">v&lt;1&gt;</dd>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<dd id="config-source">redis</dd>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<dd id="config-age">1 h 02 min</dd>"#),
            "{html}"
        );
        assert!(html.contains(r#"class="stale">yes"#), "{html}");
        let spare = &html[html.find(r#"data-model="spare""#).unwrap()..];
        let spare = &spare[..spare.find("</tr>").unwrap()];
        assert!(spare.contains("provider backing off"), "{spare}");
        let bold = &html[html.find(r#"data-model="&lt;b&gt;"#).unwrap()..];
        assert!(!bold[..bold.find("</tr>").unwrap()].contains("provider backing off"));
        let backup = &html[html.find(r#"data-provider="backup" data-health"#).unwrap()..];
        assert!(
            backup.contains(r#"<td class="retry">1 min 15 s</td>"#),
            "{backup}"
        );
    }

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(
            Escaped(r#"<script>alert("x")</script> & 'y'"#).to_string(),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(Escaped("plain-model_1.5").to_string(), "plain-model_1.5");
        assert_eq!(Escaped("").to_string(), "");
    }

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        assert_eq!(span(Duration::from_millis(850)), "850 ms");
        assert_eq!(span(Duration::from_millis(12_345)), "12.3 s");
        assert_eq!(span(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(span(Duration::from_secs(7_380)), "2 h 03 min");
    }
}
