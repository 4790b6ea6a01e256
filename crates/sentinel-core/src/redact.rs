//! URLs made safe to print: a URL may carry credentials
//! (`https://user:pass@host`) or a key in its query (`?api-key=...`), and
//! neither may reach a log line, an error or a `Debug` form.
//!
//! # Example
//!
//! ```
//! use sentinel_core::redact::redact_url;
//!
//! assert_eq!(redact_url("https://user:pass@zion.internal/x?key=k"), "https://<redacted>@zion.internal/x?<redacted>");
//! assert_eq!(redact_url("https://api.openai.com/v1"), "https://api.openai.com/v1");
//! ```

use std::borrow::Cow;

/// `url` with its user information and its query replaced by
/// `<redacted>`; unchanged (borrowed) when it has neither.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority.rfind('@');
    let query = tail.find('?');
    if userinfo.is_none() && query.is_none() {
        return Cow::Borrowed(url);
    }
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match userinfo {
        Some(at) => {
            out.push_str("<redacted>");
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    match query {
        Some(q) => {
            out.push_str(&tail[..=q]);
            out.push_str("<redacted>");
        }
        None => out.push_str(tail),
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_never_survive() {
        for (url, shown) in [
            (
                "https://u:p@h.example/v1",
                "https://<redacted>@h.example/v1",
            ),
            ("https://u@h.example", "https://<redacted>@h.example"),
            (
                "redis://:secret@127.0.0.1:6379/0",
                "redis://<redacted>@127.0.0.1:6379/0",
            ),
            (
                "https://h.example/v1?api-key=k&x=1",
                "https://h.example/v1?<redacted>",
            ),
            (
                "https://a:b@c@h.example/p?q",
                "https://<redacted>@h.example/p?<redacted>",
            ),
            ("https://h.example/p@q", "https://h.example/p@q"),
            ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
            ("u:p@host", "<redacted>@host"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
