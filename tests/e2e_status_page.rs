//! The status page (`GET /status`), rendered by a real headless Chromium
//! (Debian's `chromium` package; `scripts/test` installs it): the DOM the
//! browser built from the page shows the config in use, each tier's models
//! with their shares and breakers, the providers, and the last minute of
//! traffic. Also: the page is guarded by the inbound keys (by `Bearer`, or
//! by HTTP Basic for a browser), and says so before a config is loaded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use sentinel_testkit::{MockUpstream, MockZion, UpstreamFault};
use support::{Env, Proxy, unique, zion_config};

/// The DOM headless Chromium builds from `url` (`--dump-dom`), within a
/// minute.
async fn rendered_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(unique("sentinel-chromium-profile"));
    let child = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium runs (install Debian's `chromium` package; scripts/test does)");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chromium renders the page within a minute")
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed ({}):\n{}\n{dom}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The start tag of the first element whose start tag contains `marker`
/// (e.g. `data-model="x"`), and the markup up to its end tag `</tag>`.
fn element<'a>(dom: &'a str, marker: &str, tag: &str) -> &'a str {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no element with {marker} in:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = dom[start..]
        .find(&format!("</{tag}>"))
        .map(|e| start + e)
        .unwrap();
    &dom[start..end]
}

/// The text of the element with `id` (one without child elements).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let markup = element(dom, &format!("id=\"{id}\""), "dd");
    &markup[markup.find('>').unwrap() + 1..]
}

/// The text inside the first `<span class="{class}">` of `markup`.
fn span_text<'a>(markup: &'a str, class: &str) -> &'a str {
    let open = format!("<span class=\"{class}\">");
    let at = markup
        .find(&open)
        .unwrap_or_else(|| panic!("no {open} in {markup}"))
        + open.len();
    &markup[at..at + markup[at..].find("</span>").unwrap()]
}

#[tokio::test]
async fn chromium_renders_shares_breakers_health_and_the_last_minute() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let (bad, good) = (unique("page-bad"), unique("page-good"));
    // `bad` alone in `complex`: its one request fails and opens it (a
    // threshold of 1), so `simple` shows it open whatever the picks.
    let config = zion_config(&[
        ("simple", &[bad.as_str(), good.as_str()]),
        ("moderate", &[good.as_str()]),
        ("complex", &[bad.as_str()]),
    ]);
    let version = config["version"].as_str().unwrap().to_owned();
    zion.set_config(config);
    upstream.set_fault(
        &bad,
        UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
    );
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .zion(&zion)
            .set("SENTINEL_FAILURE_THRESHOLD", "1"),
    )
    .await;

    let reply = proxy.chat(&support::chat_body(Some("complex"))).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    for _ in 0..4 {
        let reply = proxy.chat(&support::chat_body(Some("simple"))).await;
        reply.assert_served("simple", &good);
    }
    proxy
        .chat(&support::chat_body(Some("moderate")))
        .await
        .assert_served("moderate", &good);
    // A body that is not JSON is answered before routing: no tier's.
    let reply = proxy
        .request(reqwest::Method::POST, "/v1/chat/completions")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);

    let dom = rendered_dom(&proxy.url("/status")).await;

    assert!(dom.contains("<title>Sentinel status</title>"), "{dom}");
    assert!(
        dom.contains(r#"<meta http-equiv="refresh" content="5">"#),
        "reloads itself: {dom}"
    );
    assert!(!dom.contains("<script"), "no script: {dom}");
    assert!(!dom.contains("src=\"http"), "no external asset: {dom}");
    assert_eq!(text_of(&dom, "config-version"), version);
    assert_eq!(text_of(&dom, "config-source"), "zion");
    assert_eq!(text_of(&dom, "config-stale"), "no");
    assert!(
        text_of(&dom, "config-age").ends_with(" ms") || text_of(&dom, "config-age").ends_with(" s")
    );

    // `simple`: `bad` open with its wait shown, out of the shares; `good`
    // takes all of it, its bar full.
    let simple = element(&dom, r#"id="tier-simple""#, "section");
    let bad_row = element(simple, &format!("data-model=\"{bad}\""), "tr");
    assert!(bad_row.contains(r#"data-breaker="open""#), "{bad_row}");
    assert!(bad_row.contains(r#"data-share="0""#), "{bad_row}");
    assert!(bad_row.contains("open (backing off)"), "{bad_row}");
    assert!(bad_row.contains("width:0.0%"), "{bad_row}");
    let retry = &bad_row[bad_row.find(r#"<td class="retry">"#).unwrap()..];
    assert!(
        retry.contains(" s<") || retry.contains(" ms<"),
        "a wait is shown: {retry}"
    );
    let good_row = element(simple, &format!("data-model=\"{good}\""), "tr");
    assert!(good_row.contains(r#"data-breaker="closed""#), "{good_row}");
    assert!(good_row.contains(r#"data-share="1""#), "{good_row}");
    assert!(good_row.contains("width:100.0%"), "{good_row}");
    assert!(good_row.contains("100.0 %"), "{good_row}");

    // The last minute: four `simple` requests, one `moderate`, one
    // `complex` (not 2xx); the bad request counted nowhere.
    let traffic = |tier: &str, class: &str| -> u64 {
        let section = element(&dom, &format!("id=\"tier-{tier}\""), "section");
        span_text(section, class).parse().unwrap()
    };
    assert_eq!(traffic("simple", "requests"), 4);
    assert_eq!(traffic("simple", "errors"), 0);
    assert_eq!(traffic("moderate", "requests"), 1);
    assert_eq!(traffic("complex", "requests"), 1);
    assert_eq!(traffic("complex", "errors"), 1);
    let simple_traffic = element(&dom, r#"id="tier-simple""#, "section");
    assert!(span_text(simple_traffic, "rate").ends_with(" req/s"));
    let p50 = span_text(simple_traffic, "p50");
    assert!(p50.ends_with(" ms") || p50.ends_with(" s"), "{p50}");
    // Every tier had traffic, so each shows its percentiles.
    for tier in ["simple", "moderate", "complex"] {
        let section = element(&dom, &format!("id=\"tier-{tier}\""), "section");
        assert_ne!(span_text(section, "p99"), "–", "{section}");
    }

    // The providers: `openai`, health unknown (checks are off), closed.
    let provider = element(&dom, r#"data-provider="openai" data-health"#, "tr");
    assert!(provider.contains(r#"data-health="unknown""#), "{provider}");
    assert!(provider.contains(r#"data-breaker="closed""#), "{provider}");
    proxy.stop().await;
}

#[tokio::test]
async fn the_page_is_guarded_by_the_inbound_keys_and_asks_a_browser_for_one() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream).set("SENTINEL_API_KEYS", "page-key")).await;
    let get = |auth: Option<String>| {
        let mut request = proxy.request(reqwest::Method::GET, "/status");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };

    let denied = get(None).await.unwrap();
    assert_eq!(denied.status(), 401);
    let challenges: Vec<_> = denied
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic realm=")),
        "a browser is asked for the key: {challenges:?}"
    );
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");

    // user:wrong, then any-user:page-key, base64.
    let basic = |pair: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    assert_eq!(get(Some(basic("ops:wrong"))).await.unwrap().status(), 401);
    assert_eq!(
        get(Some("Basic %%%".to_owned())).await.unwrap().status(),
        401
    );
    let page = get(Some(basic("ops:page-key"))).await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["content-type"].to_str().unwrap(),
        "text/html; charset=utf-8"
    );
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    // Without Zion or a file: the built-in tiers.
    assert!(
        html.contains(r#"<dd id="config-source">builtin</dd>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<dd id="config-age">does not age</dd>"#),
        "{html}"
    );
    // No traffic yet: no percentiles.
    assert!(html.contains(r#"<span class="p50">–</span>"#), "{html}");
    let bearer = get(Some("Bearer page-key".to_owned())).await.unwrap();
    assert_eq!(bearer.status(), 200);
    // The key works by Basic on the API too (one rule for every guarded path).
    let state = proxy
        .request(reqwest::Method::GET, "/admin/state")
        .header("authorization", basic(":page-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(state.status(), 200);
    proxy.stop().await;
}
