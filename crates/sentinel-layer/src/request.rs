//! Reading a native-API request: the tier, the session and the body rewrite.
//!
//! The tier comes from the body field `tier`, the `X-Sentinel-Tier` header or
//! a `model` that is exactly a tier name (the model alias); the session from
//! `X-Sentinel-Session`. The body is read once into a [`ParsedBody`], a list
//! of its top-level members with their raw JSON text (no `serde_json::Value`
//! tree is built), and turned into a [`BodyTemplate`] that renders the body
//! sent upstream for any chosen model: `tier` and `model` removed, every other
//! member kept byte for byte, `"model":<chosen>` appended.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use sentinel_core::Tier;
use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{ErrorCode, SentinelError};

/// The session header (`X-Sentinel-Session`).
pub(crate) use crate::headers::SESSION as SESSION_HEADER;
/// The tier header (`X-Sentinel-Tier`).
pub(crate) use crate::headers::TIER as TIER_HEADER;

/// The longest session id accepted, in characters (all ASCII, so bytes).
const MAX_SESSION_LEN: usize = 128;

/// The session id from `X-Sentinel-Session`: `None` without the header.
///
/// A present header must be 1 to 128 characters of `A-Z a-z 0-9 . _ : -`
/// and appear once; anything else is `invalid_session`. The message never
/// echoes the bad value.
pub(crate) fn session_id(headers: &HeaderMap) -> Result<Option<String>, SentinelError> {
    let mut values = headers
        .get_all(const { HeaderName::from_static(SESSION_HEADER) })
        .iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid_session("was given more than once"));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_SESSION_LEN {
        return Err(invalid_session("must be 1 to 128 characters long"));
    }
    if !bytes.iter().copied().all(is_session_byte) {
        return Err(invalid_session(
            "may only contain the characters A-Z a-z 0-9 . _ : -",
        ));
    }
    // Only ASCII is left, so this cannot fail; map it anyway rather than panic.
    match std::str::from_utf8(bytes) {
        Ok(id) => Ok(Some(id.to_owned())),
        Err(_) => Err(invalid_session("must be ASCII")),
    }
}

fn is_session_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

fn invalid_session(problem: &str) -> SentinelError {
    SentinelError::new(
        ErrorCode::InvalidSession,
        format!(
            "header `{SESSION_HEADER}` {problem}: it must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        ),
    )
}

/// The tier from `X-Sentinel-Tier`: `None` without the header.
///
/// The value (ASCII whitespace around it trimmed) must be a tier name in
/// lowercase; otherwise, or when it is not UTF-8 or the header appears more
/// than once, `invalid_tier` with the valid names listed.
pub(crate) fn header_tier(headers: &HeaderMap) -> Result<Option<Tier>, SentinelError> {
    let mut values = headers
        .get_all(const { HeaderName::from_static(TIER_HEADER) })
        .iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SentinelError::new(
            ErrorCode::InvalidTier,
            format!(
                "header `{TIER_HEADER}` was given more than once: give one of {}",
                valid_tiers()
            ),
        ));
    }
    let Ok(text) = std::str::from_utf8(value.as_bytes()) else {
        return Err(SentinelError::new(
            ErrorCode::InvalidTier,
            format!(
                "header `{TIER_HEADER}` is not valid UTF-8: expected one of {}",
                valid_tiers()
            ),
        ));
    };
    text.trim_matches(|c: char| c.is_ascii_whitespace())
        .parse::<Tier>()
        .map(Some)
        .map_err(|e| {
            SentinelError::new(
                ErrorCode::InvalidTier,
                format!("header `{TIER_HEADER}`: {e}"),
            )
        })
}

/// A routed request's body must be JSON: no `Content-Type` (read as JSON,
/// as SDKs expect) or `application/json`, with or without parameters
/// (`; charset=utf-8`), given once, with no `Content-Encoding` but
/// `identity`. Anything else is `unsupported_media_type`:
/// `application/grpc+json` among them, whose framing is not a JSON body.
/// The message names no client value.
pub(crate) fn json_content_type(headers: &HeaderMap) -> Result<(), SentinelError> {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let json = values.next().is_none() && essence.is_some_and(|e| e == "application/json");
    if !json {
        return Err(SentinelError::new(
            ErrorCode::UnsupportedMediaType,
            "the request body must be JSON: send `Content-Type: application/json`",
        ));
    }
    // The body is read as it is: a coded one would be misread, and the
    // rewritten body is plain whatever the header said.
    let coded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if coded {
        return Err(SentinelError::new(
            ErrorCode::UnsupportedMediaType,
            "the request body must not be compressed: send it without `Content-Encoding`",
        ));
    }
    Ok(())
}

/// The valid tier names, comma-separated, in order.
fn valid_tiers() -> String {
    Tier::ALL.map(Tier::as_str).join(", ")
}

/// The buffered request body, read as a JSON object.
///
/// Holds the top-level members in their original order, each as its decoded
/// key (borrowed from the body unless it had escapes) and its raw JSON value
/// text, plus the fields Sentinel reads. With duplicate top-level keys, the
/// last occurrence of `tier`, `model` and `stream` is the one read (as most
/// JSON parsers do); the rewrite drops every occurrence of `tier` and `model`
/// and keeps every occurrence of the other keys.
#[derive(Debug)]
pub(crate) struct ParsedBody<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The body field `tier`.
    tier: Option<Tier>,
    /// The `model` alias: a `model` that is exactly a tier name.
    model_alias: Option<Tier>,
    stream: bool,
}

/// Parses the body: it must be one JSON object (`invalid_json` otherwise),
/// whose `tier` is absent, `null` or a tier name (`invalid_tier` otherwise)
/// and whose `model` is absent, `null` or a tier name (`model_not_allowed`
/// otherwise).
pub(crate) fn parse_body(bytes: &[u8]) -> Result<ParsedBody<'_>, SentinelError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        invalid_json(&format!(
            "the body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let members = (&mut de)
        .deserialize_map(MembersVisitor)
        .and_then(|members| de.end().map(|()| members))
        .map_err(|e| invalid_json(&json_detail(text, &e)))?;

    let last = |name: &str| {
        members
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    };
    let tier = match last("tier") {
        None => None,
        Some(raw) => body_tier(raw)?,
    };
    let model_alias = match last("model") {
        None => None,
        Some(raw) => model_alias(raw)?,
    };
    let stream = last("stream").is_some_and(|raw| raw.get().trim() == "true");
    Ok(ParsedBody {
        members,
        tier,
        model_alias,
        stream,
    })
}

impl ParsedBody<'_> {
    /// Whether the client asked for a stream (`"stream": true`; anything
    /// else, including `"true"` as a string, is not a stream).
    pub(crate) fn stream(&self) -> bool {
        self.stream
    }

    /// The body to send upstream, waiting for the model: every member but
    /// `tier` and `model`, in order, with its raw value text, then `"model":`.
    pub(crate) fn template(&self) -> BodyTemplate {
        self.template_with(false).0
    }

    /// [`template`](Self::template), and with `stream_usage` a stream also
    /// asks for its usage chunk: `stream_options.include_usage` is set to
    /// `true` (the member added, or `null` replaced, or the key set in the
    /// object; any other value is left as it is). Says whether it changed
    /// the body (the usage chunk is then not the client's).
    pub(crate) fn template_with(&self, stream_usage: bool) -> (BodyTemplate, bool) {
        // The last `stream_options` is the one that counts.
        let mut rewrite: Option<(usize, String)> = None;
        let mut append = false;
        if stream_usage && self.stream {
            match self
                .members
                .iter()
                .rposition(|(k, _)| k == "stream_options")
            {
                None => append = true,
                Some(at) => rewrite = with_include_usage(self.members[at].1.get()).map(|v| (at, v)),
            }
        }
        let kept = || {
            self.members
                .iter()
                .enumerate()
                .filter(|(_, (key, _))| key != "tier" && key != "model")
        };
        let size: usize = kept()
            .map(|(_, (key, value))| key.len() + value.get().len() + 4)
            .sum();
        let mut prefix = Vec::with_capacity(size + 64);
        prefix.push(b'{');
        for (at, (key, value)) in kept() {
            push_json_string(&mut prefix, key);
            prefix.push(b':');
            match &rewrite {
                Some((i, changed)) if *i == at => prefix.extend_from_slice(changed.as_bytes()),
                _ => prefix.extend_from_slice(value.get().as_bytes()),
            }
            prefix.push(b',');
        }
        if append {
            prefix.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
        }
        // Each kept member ended with a comma, which now separates it from
        // `model`; with no kept member there is none.
        prefix.extend_from_slice(b"\"model\":");
        let template = BodyTemplate {
            prefix: Bytes::from(prefix),
        };
        (template, append || rewrite.is_some())
    }
}

/// `stream_options` (its raw text) with `include_usage: true`, when it must
/// change: `null` becomes the object; an object without it, or with any
/// other value, gets it. Anything else stays as it is (`None`).
fn with_include_usage(raw: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(raw).ok()? {
        serde_json::Value::Null => Some(r#"{"include_usage":true}"#.to_owned()),
        serde_json::Value::Object(mut options) => {
            if options.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
                return None;
            }
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            serde_json::to_string(&options).ok()
        }
        _ => None,
    }
}

/// The tier from the body: which of `tier`, the header and the `model` alias
/// are present must agree (`conflicting_tier` otherwise); none present means
/// the default, [`Tier::Simple`].
pub(crate) fn resolve_tier(
    header: Option<Tier>,
    body: &ParsedBody<'_>,
) -> Result<Tier, SentinelError> {
    let sources = [
        ("body field `tier`", body.tier),
        ("header `x-sentinel-tier`", header),
        ("`model` alias", body.model_alias),
    ];
    let mut present = sources
        .iter()
        .filter_map(|(source, tier)| tier.map(|tier| (*source, tier)));
    let Some((_, first)) = present.next() else {
        return Ok(Tier::default());
    };
    if present.all(|(_, tier)| tier == first) {
        return Ok(first);
    }
    let described: Vec<String> = sources
        .iter()
        .filter_map(|(source, tier)| tier.map(|tier| format!("{source} is `{tier}`")))
        .collect();
    Err(SentinelError::new(
        ErrorCode::ConflictingTier,
        format!(
            "conflicting tiers: {}; give the tier once, or the same tier everywhere",
            described.join(", ")
        ),
    ))
}

/// The rewritten body, rendered for a model. Cheap to clone and to render
/// again for a retry on another model.
#[derive(Debug, Clone)]
pub(crate) struct BodyTemplate {
    /// `{` + the kept members, each followed by `,` + `"model":`.
    prefix: Bytes,
}

impl BodyTemplate {
    /// The body sent upstream: the template with `model` set to `model`.
    pub(crate) fn render(&self, model: &str) -> Bytes {
        let mut body = Vec::with_capacity(self.prefix.len() + model.len() + 3);
        body.extend_from_slice(&self.prefix);
        push_json_string(&mut body, model);
        body.push(b'}');
        Bytes::from(body)
    }
}

/// Appends `s` as a JSON string.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a `str` cannot fail, and neither can writing to a `Vec`:
    // the `Result` carries no information.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn invalid_json(detail: &str) -> SentinelError {
    SentinelError::new(
        ErrorCode::InvalidJson,
        format!("request body must be a JSON object: {detail}"),
    )
}

/// A short description of a parse failure that never echoes the body.
fn json_detail(text: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        // Syntax and end-of-input messages are fixed strings plus a position.
        Category::Syntax | Category::Eof => e.to_string(),
        // Data errors ("invalid type: string \"...\"") may quote the body, so
        // say only what kind of value was found.
        Category::Data | Category::Io => {
            let found = match text.trim_start().as_bytes().first() {
                Some(b'[') => "an array",
                Some(b'"') => "a string",
                Some(b't' | b'f') => "a boolean",
                Some(b'n') => "null",
                _ => "a number",
            };
            format!("found {found}")
        }
    }
}

/// The body field `tier`: a tier name, or `null`.
fn body_tier(raw: &RawValue) -> Result<Option<Tier>, SentinelError> {
    match string_or_null(raw) {
        Ok(None) => Ok(None),
        Ok(Some(name)) => name.parse::<Tier>().map(Some).map_err(|e| {
            SentinelError::new(ErrorCode::InvalidTier, format!("body field `tier`: {e}"))
        }),
        Err(NotAString) => Err(SentinelError::new(
            ErrorCode::InvalidTier,
            format!(
                "body field `tier` must be a string: expected one of {}",
                valid_tiers()
            ),
        )),
    }
}

/// The `model` alias: `model` naming a tier, or `null`. Any other model is
/// not the client's to choose.
fn model_alias(raw: &RawValue) -> Result<Option<Tier>, SentinelError> {
    match string_or_null(raw) {
        Ok(None) => Ok(None),
        Ok(Some(name)) => match name.parse::<Tier>() {
            Ok(tier) => Ok(Some(tier)),
            Err(_) => {
                // Client input: cap what we echo.
                let shown: String = name.chars().take(64).collect();
                Err(model_not_allowed(&format!("`{shown}`")))
            }
        },
        Err(NotAString) => Err(model_not_allowed("a non-string `model`")),
    }
}

fn model_not_allowed(what: &str) -> SentinelError {
    SentinelError::new(
        ErrorCode::ModelNotAllowed,
        format!(
            "model {what} is not allowed: models are chosen by Sentinel; set `model` to a tier \
             (one of {}) or leave it out",
            valid_tiers()
        ),
    )
}

/// A JSON value that is neither a string nor `null`.
struct NotAString;

/// Reads a raw value as a string (decoding escapes) or `null`.
fn string_or_null(raw: &RawValue) -> Result<Option<Cow<'_, str>>, NotAString> {
    let text = raw.get().trim();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with('"') {
        return Err(NotAString);
    }
    serde_json::from_str::<Key<'_>>(text)
        .map(|key| Some(key.0))
        .map_err(|_| NotAString)
}

/// Collects the members of a JSON object, keys decoded, values raw.
struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(key)) = map.next_key()? {
            let value: &'de RawValue = map.next_value()?;
            members.push((key, value));
        }
        Ok(members)
    }
}

/// A JSON string, borrowed from the input when it has no escapes.
///
/// (`Cow<str>`'s own `Deserialize` always allocates.)
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> de::Deserialize<'de> for Key<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    fn code<T: fmt::Debug>(result: Result<T, SentinelError>) -> ErrorCode {
        result.unwrap_err().code()
    }

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn tier_of(body: &str, header: Option<Tier>) -> Result<Tier, SentinelError> {
        let parsed = parse_body(body.as_bytes())?;
        resolve_tier(header, &parsed)
    }

    fn render(body: &str, model: &str) -> String {
        let parsed = parse_body(body.as_bytes()).unwrap();
        let rendered = parsed.template().render(model);
        String::from_utf8(rendered.to_vec()).unwrap()
    }

    // --- session header ---

    #[test]
    fn no_session_header_is_no_session() {
        assert_eq!(session_id(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn valid_session_ids_are_returned() {
        let all = "AZaz09._:-";
        let h = headers(&[(SESSION_HEADER, all.as_bytes())]);
        assert_eq!(session_id(&h).unwrap().as_deref(), Some(all));
        let one = headers(&[(SESSION_HEADER, b"x")]);
        assert_eq!(session_id(&one).unwrap().as_deref(), Some("x"));
        let max = "a".repeat(128);
        let h = headers(&[(SESSION_HEADER, max.as_bytes())]);
        assert_eq!(session_id(&h).unwrap(), Some(max));
    }

    #[test]
    fn bad_session_ids_are_invalid_session() {
        let too_long = "a".repeat(129);
        let bad: [&[u8]; 8] = [
            b"",
            too_long.as_bytes(),
            b"a b",
            b"a/b",
            b"a\tb",
            b"caf\xc3\xa9",
            b"\xff",
            b"a=b",
        ];
        for value in bad {
            let err = session_id(&headers(&[(SESSION_HEADER, value)])).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidSession, "{value:?}");
            assert_eq!(err.code().status(), 400);
        }
    }

    #[test]
    fn session_message_does_not_echo_the_value() {
        let value = format!("secret{}", "z".repeat(200));
        let err = session_id(&headers(&[(SESSION_HEADER, value.as_bytes())])).unwrap_err();
        assert!(!err.message().contains("secret"), "{}", err.message());
        assert!(err.message().len() < 200);
    }

    #[test]
    fn repeated_session_header_is_invalid_session() {
        let h = headers(&[(SESSION_HEADER, b"a"), (SESSION_HEADER, b"a")]);
        assert_eq!(code(session_id(&h)), ErrorCode::InvalidSession);
    }

    // --- tier header ---

    #[test]
    fn header_tier_reads_tier_names() {
        assert_eq!(header_tier(&HeaderMap::new()).unwrap(), None);
        for tier in Tier::ALL {
            let h = headers(&[(TIER_HEADER, tier.as_str().as_bytes())]);
            assert_eq!(header_tier(&h).unwrap(), Some(tier));
        }
        let padded = headers(&[(TIER_HEADER, b" complex\t")]);
        assert_eq!(header_tier(&padded).unwrap(), Some(Tier::Complex));
    }

    #[test]
    fn bad_header_tier_is_invalid_tier_listing_valid_names() {
        let bad: [&[u8]; 5] = [b"huge", b"Simple", b"", b"\xff", b"simple,complex"];
        for value in bad {
            let err = header_tier(&headers(&[(TIER_HEADER, value)])).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidTier, "{value:?}");
            assert!(
                err.message().contains("simple, moderate, complex"),
                "{}",
                err.message()
            );
        }
        let twice = headers(&[(TIER_HEADER, b"simple"), (TIER_HEADER, b"simple")]);
        assert_eq!(code(header_tier(&twice)), ErrorCode::InvalidTier);
    }

    // --- body parsing ---

    #[test]
    fn non_object_bodies_are_invalid_json() {
        let bad: [&[u8]; 16] = [
            b"",
            b"   ",
            b"[]",
            b"[{\"tier\":\"simple\"}]",
            b"\"a string\"",
            b"5",
            b"null",
            b"true",
            b"{\"a\":1} x",
            b"{\"a\":1}{}",
            b"{\"a\":}",
            b"{a:1}",
            b"{\"a\":1,}",
            b"{\"a\":\"\xff\"}",
            b"\xef\xbb\xbf{}",
            b"{\"a\":1",
        ];
        for body in bad {
            let err = parse_body(body).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidJson, "{body:?}");
            assert!(err.message().contains("JSON object"), "{}", err.message());
        }
    }

    #[test]
    fn invalid_json_message_does_not_echo_the_body() {
        let err = parse_body(b"\"secret-value-xyz\"").unwrap_err();
        assert!(!err.message().contains("secret"), "{}", err.message());
        assert!(err.message().contains("string"), "{}", err.message());
        let err = parse_body(b"{\"secret\":1} trailing").unwrap_err();
        assert!(!err.message().contains("secret"), "{}", err.message());
    }

    #[test]
    fn body_tier_only() {
        assert_eq!(
            tier_of(r#"{"tier":"complex"}"#, None).unwrap(),
            Tier::Complex
        );
        assert_eq!(tier_of(r#"{"tier":null}"#, None).unwrap(), Tier::Simple);
    }

    #[test]
    fn header_only() {
        assert_eq!(tier_of("{}", Some(Tier::Moderate)).unwrap(), Tier::Moderate);
    }

    #[test]
    fn model_alias_only() {
        assert_eq!(
            tier_of(r#"{"model":"moderate"}"#, None).unwrap(),
            Tier::Moderate
        );
        assert_eq!(tier_of(r#"{"model":null}"#, None).unwrap(), Tier::Simple);
    }

    #[test]
    fn no_source_is_simple() {
        assert_eq!(tier_of(r#"{"messages":[]}"#, None).unwrap(), Tier::Simple);
    }

    #[test]
    fn all_three_agreeing() {
        let body = r#"{"tier":"complex","model":"complex"}"#;
        assert_eq!(tier_of(body, Some(Tier::Complex)).unwrap(), Tier::Complex);
    }

    #[test]
    fn each_pair_disagreeing_is_conflicting_tier() {
        let cases = [
            (r#"{"tier":"simple","model":"complex"}"#, None),
            (r#"{"tier":"simple"}"#, Some(Tier::Complex)),
            (r#"{"model":"simple"}"#, Some(Tier::Complex)),
            (
                r#"{"tier":"simple","model":"simple"}"#,
                Some(Tier::Moderate),
            ),
        ];
        for (body, header) in cases {
            let err = tier_of(body, header).unwrap_err();
            assert_eq!(err.code(), ErrorCode::ConflictingTier, "{body} {header:?}");
            assert_eq!(err.code().status(), 400);
        }
        let err = tier_of(r#"{"tier":"simple"}"#, Some(Tier::Complex)).unwrap_err();
        let msg = err.message();
        assert!(
            msg.contains("body field `tier` is `simple`") && msg.contains("`complex`"),
            "{msg}"
        );
        assert!(
            msg.contains("header `x-sentinel-tier` is `complex`"),
            "{msg}"
        );
    }

    #[test]
    fn bad_body_tier_is_invalid_tier_listing_valid_names() {
        for body in [
            r#"{"tier":"huge"}"#,
            r#"{"tier":"Simple"}"#,
            r#"{"tier":""}"#,
            r#"{"tier":5}"#,
            r#"{"tier":["simple"]}"#,
            r#"{"tier":true}"#,
        ] {
            let err = parse_body(body.as_bytes()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidTier, "{body}");
            assert!(
                err.message().contains("simple, moderate, complex"),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn escaped_tier_names_are_decoded() {
        assert_eq!(
            tier_of(r#"{"tier":"\u0073imple"}"#, None).unwrap(),
            Tier::Simple
        );
    }

    #[test]
    fn other_models_are_not_allowed() {
        for body in [
            r#"{"model":"gpt-4o"}"#,
            r#"{"model":5}"#,
            r#"{"model":"Moderate"}"#,
            r#"{"model":""}"#,
            r#"{"model":{"name":"simple"}}"#,
        ] {
            let err = parse_body(body.as_bytes()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::ModelNotAllowed, "{body}");
            assert_eq!(err.code().status(), 400);
            let msg = err.message();
            assert!(msg.contains("chosen by Sentinel"), "{msg}");
            assert!(msg.contains("simple, moderate, complex"), "{msg}");
        }
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(10_000));
        assert!(parse_body(long.as_bytes()).unwrap_err().message().len() < 300);
    }

    #[test]
    fn stream_is_true_only_for_json_true() {
        let stream = |body: &str| parse_body(body.as_bytes()).unwrap().stream();
        assert!(stream(r#"{"stream":true}"#));
        assert!(stream(r#"{"stream" : true }"#));
        assert!(!stream(r#"{"stream":false}"#));
        assert!(!stream(r#"{"stream":"true"}"#));
        assert!(!stream(r#"{"stream":1}"#));
        assert!(!stream(r#"{"stream":null}"#));
        assert!(!stream("{}"));
        assert!(!stream(r#"{"options":{"stream":true}}"#));
    }

    #[test]
    fn duplicate_keys_last_occurrence_wins() {
        let body = r#"{"tier":"simple","stream":true,"tier":"complex","stream":false}"#;
        let parsed = parse_body(body.as_bytes()).unwrap();
        assert_eq!(resolve_tier(None, &parsed).unwrap(), Tier::Complex);
        assert!(!parsed.stream());
        // An invalid earlier occurrence is not read, and all are dropped.
        let body = r#"{"tier":"huge","model":"gpt","a":1,"tier":"simple","model":"simple"}"#;
        assert_eq!(tier_of(body, None).unwrap(), Tier::Simple);
        assert_eq!(render(body, "m"), r#"{"a":1,"model":"m"}"#);
        // Other duplicates are kept as they are.
        assert_eq!(
            render(r#"{"a":1,"a":2}"#, "m"),
            r#"{"a":1,"a":2,"model":"m"}"#
        );
    }

    #[test]
    fn plain_keys_are_borrowed_escaped_keys_decoded() {
        let parsed = parse_body(br#"{"plain":1,"a\"b":2}"#).unwrap();
        assert!(matches!(parsed.members[0].0, Cow::Borrowed("plain")));
        assert_eq!(parsed.members[1].0, "a\"b");
        assert_eq!(parsed.members[1].1.get(), "2");
    }

    // --- rewrite ---

    #[test]
    fn rewrite_removes_tier_and_model_and_appends_model() {
        assert_eq!(render("{}", "gpt-x"), r#"{"model":"gpt-x"}"#);
        assert_eq!(
            render(r#"{"tier":"simple"}"#, "gpt-x"),
            r#"{"model":"gpt-x"}"#
        );
        assert_eq!(
            render(
                r#"{"a":1,"tier":"simple","b":2,"model":"simple","c":3}"#,
                "gpt-x"
            ),
            r#"{"a":1,"b":2,"c":3,"model":"gpt-x"}"#
        );
        assert_eq!(
            render(r#"{"model":"complex","a":1}"#, "gpt-x"),
            r#"{"a":1,"model":"gpt-x"}"#
        );
    }

    #[test]
    fn raw_values_survive_byte_for_byte() {
        let body = concat!(
            r#"{"a":1.0000000000000000001,"b":"\u00e9","c":1e400,"tier":"simple","#,
            r#""d":{"x":[1, 2,{"y":"\"q\"\n\ud83d\ude00"}],"e":-0.0},"f":"é😀","g":[ ]}"#
        );
        assert_eq!(
            render(body, "gpt-x"),
            concat!(
                r#"{"a":1.0000000000000000001,"b":"\u00e9","c":1e400,"#,
                r#""d":{"x":[1, 2,{"y":"\"q\"\n\ud83d\ude00"}],"e":-0.0},"f":"é😀","g":[ ],"#,
                r#""model":"gpt-x"}"#
            )
        );
    }

    #[test]
    fn whitespace_between_members_is_dropped_inside_values_kept() {
        let body = "{ \"a\" : [1, 2] ,\n\"tier\" : \"simple\" ,\t\"b\":{ \"c\" : 1 } }";
        assert_eq!(
            render(body, "m"),
            r#"{"a":[1, 2],"b":{ "c" : 1 },"model":"m"}"#
        );
    }

    #[test]
    fn keys_needing_escapes_round_trip() {
        let body = r#"{"a\"b":1,"c\\d":2,"e\nf":3,"\u0041":4}"#;
        assert_eq!(
            render(body, "m"),
            r#"{"a\"b":1,"c\\d":2,"e\nf":3,"A":4,"model":"m"}"#
        );
        let rendered: Value = serde_json::from_str(&render(body, "m")).unwrap();
        assert_eq!(rendered["a\"b"], 1);
        assert_eq!(rendered["e\nf"], 3);
    }

    #[test]
    fn model_names_are_json_encoded() {
        assert_eq!(render("{}", "we\"ird\\"), r#"{"model":"we\"ird\\"}"#);
    }

    #[test]
    fn a_stream_asks_for_its_usage_chunk_when_told() {
        let render = |body: &str, on: bool| {
            let parsed = parse_body(body.as_bytes()).unwrap();
            let (template, added) = parsed.template_with(on);
            let rendered: serde_json::Value =
                serde_json::from_slice(&template.render("m")).unwrap();
            (rendered, added)
        };
        // Added when missing, in bodies of any shape.
        let (v, added) = render(r#"{"stream":true,"messages":[{"c":"}"}]}"#, true);
        assert!(added);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({ "include_usage": true })
        );
        assert_eq!(v["messages"], serde_json::json!([{ "c": "}" }]));
        assert_eq!(v["model"], "m");
        // `null` replaced; an object gets the key, keeping the rest.
        let (v, added) = render(r#"{"stream":true,"stream_options":null}"#, true);
        assert!(added);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({ "include_usage": true })
        );
        let (v, added) = render(
            r#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
            true,
        );
        assert!(added);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({ "include_usage": true, "x": 1 })
        );
        // Already asked for: the client's own; left as it is.
        let asked = r#"{"stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(!render(asked, true).1);
        // Not a stream, the option off, or an options value that is not an
        // object: nothing changes.
        for (body, on) in [
            (r#"{"stream":false}"#, true),
            (r#"{"messages":[]}"#, true),
            (r#"{"stream":true}"#, false),
            (r#"{"stream":true,"stream_options":"x"}"#, true),
        ] {
            let (v, added) = render(body, on);
            assert!(!added, "{body}");
            let mut expected: serde_json::Value = serde_json::from_str(body).unwrap();
            expected["model"] = serde_json::json!("m");
            assert_eq!(v, expected, "{body}");
        }
    }

    #[test]
    fn template_renders_again_for_a_retry() {
        let parsed = parse_body(br#"{"tier":"moderate","messages":[{"role":"user"}]}"#).unwrap();
        let template = parsed.template();
        let retry = template.clone();
        assert_eq!(
            template.render("first"),
            r#"{"messages":[{"role":"user"}],"model":"first"}"#
        );
        assert_eq!(
            retry.render("second"),
            r#"{"messages":[{"role":"user"}],"model":"second"}"#
        );
    }

    #[test]
    fn rendered_body_equals_original_minus_tier_and_model_plus_model() {
        let original = json!({
            "tier": "complex",
            "model": "complex",
            "messages": [{"role": "user", "content": "hi \"there\" é"}],
            "temperature": 0.2,
            "stream": true,
            "n": null,
        });
        let bytes = serde_json::to_vec(&original).unwrap();
        let rendered = parse_body(&bytes).unwrap().template().render("gpt-4o");
        let rendered: Value = serde_json::from_slice(&rendered).unwrap();
        let mut expected = original;
        let map = expected.as_object_mut().unwrap();
        map.remove("tier");
        map.insert("model".into(), json!("gpt-4o"));
        assert_eq!(rendered, expected);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn rendered_body_is_original_minus_tier_and_model_plus_model(
            members in prop::collection::btree_map(any::<String>(), json_value(), 0..6),
            tier in prop::option::of(prop::sample::select(Tier::ALL.to_vec())),
            alias in prop::option::of(prop::sample::select(Tier::ALL.to_vec())),
            model in any::<String>(),
            pretty in any::<bool>(),
        ) {
            let mut object: Map<String, Value> = members.into_iter().collect();
            if let Some(tier) = tier {
                object.insert("tier".into(), Value::from(tier.as_str()));
            } else {
                object.remove("tier");
            }
            if let Some(alias) = alias {
                object.insert("model".into(), Value::from(alias.as_str()));
            } else {
                object.remove("model");
            }
            let original = Value::Object(object);
            let bytes = if pretty {
                serde_json::to_vec_pretty(&original).unwrap()
            } else {
                serde_json::to_vec(&original).unwrap()
            };

            let parsed = parse_body(&bytes).unwrap();
            prop_assert_eq!(parsed.tier, tier);
            prop_assert_eq!(parsed.model_alias, alias);
            let rendered = parsed.template().render(&model);
            let rendered: Value = serde_json::from_slice(&rendered).unwrap();

            // Compare with the original text parsed the same way, so float
            // parsing is the same on both sides.
            let mut expected: Value = serde_json::from_slice(&bytes).unwrap();
            let map = expected.as_object_mut().unwrap();
            map.remove("tier");
            map.insert("model".into(), Value::String(model));
            prop_assert_eq!(rendered, expected);
        }

        #[test]
        fn parse_body_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_body(&bytes).map(|parsed| parsed.template().render("m"));
        }
    }

    // --- hostile input (issue 10) ---
    //
    // Each property below reads its input a second, independent way (serde's
    // own map access into owned keys and raw values, and the header rules
    // restated) and checks every decision of the module against it: the
    // session, the header tier, the body's tier, alias and `stream`, the
    // resolved tier, each error code. On success it checks the rendered body
    // (valid JSON, `model` set, no `tier`, every other member kept); on
    // failure, the code and that the message echoes no long client value.

    use sentinel_testkit::hostile::{config, mutated};

    /// The codes a request's tier, session and body may fail with.
    const REQUEST_CODES: [ErrorCode; 5] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidTier,
        ErrorCode::ConflictingTier,
        ErrorCode::ModelNotAllowed,
        ErrorCode::InvalidSession,
    ];

    /// Placed at character 64 of long generated strings: an error may echo
    /// at most the first 64 characters of a client value, so never this.
    const CANARY: &str = "zzCANARYzz";

    /// Every member of a JSON object in order, duplicates included: keys
    /// decoded into owned strings, values as raw text.
    struct AllMembers(Vec<(String, Box<RawValue>)>);

    impl<'de> de::Deserialize<'de> for AllMembers {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct All;
            impl<'de> Visitor<'de> for All {
                type Value = AllMembers;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AllMembers, A::Error> {
                    let mut members = Vec::new();
                    while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                        members.push(member);
                    }
                    Ok(AllMembers(members))
                }
            }
            deserializer.deserialize_map(All)
        }
    }

    /// The members of `bytes` if it is one JSON object, else `None`.
    fn members_of(bytes: &[u8]) -> Option<Vec<(String, Box<RawValue>)>> {
        let text = std::str::from_utf8(bytes).ok()?;
        serde_json::from_str::<AllMembers>(text).ok().map(|m| m.0)
    }

    /// What the module must read from a body: the body `tier`, the `model`
    /// alias and `stream`, from the last occurrence of each; or the code.
    fn expected_body(bytes: &[u8]) -> Result<(Option<Tier>, Option<Tier>, bool), ErrorCode> {
        let members = members_of(bytes).ok_or(ErrorCode::InvalidJson)?;
        let last = |name: &str| {
            members
                .iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, raw)| raw.get())
        };
        // Absent or `null`: no tier; a tier name: that tier; else `bad`.
        let tier_in = |name: &str, bad: ErrorCode| match last(name) {
            None => Ok(None),
            Some(raw) => match serde_json::from_str::<Option<String>>(raw) {
                Ok(None) => Ok(None),
                Ok(Some(s)) => s.parse::<Tier>().map(Some).map_err(|_| bad),
                Err(_) => Err(bad),
            },
        };
        let tier = tier_in("tier", ErrorCode::InvalidTier)?;
        let alias = tier_in("model", ErrorCode::ModelNotAllowed)?;
        Ok((tier, alias, last("stream") == Some("true")))
    }

    fn expected_tier(
        header: Option<Tier>,
        body: Option<Tier>,
        alias: Option<Tier>,
    ) -> Result<Tier, ErrorCode> {
        let present: Vec<Tier> = [body, header, alias].into_iter().flatten().collect();
        match present.first() {
            None => Ok(Tier::Simple),
            Some(&first) if present.iter().all(|&t| t == first) => Ok(first),
            Some(_) => Err(ErrorCode::ConflictingTier),
        }
    }

    /// `X-Sentinel-Tier` given these values (in order): once, a tier name
    /// with spaces and tabs around it allowed.
    fn expected_header_tier(values: &[Vec<u8>]) -> Result<Option<Tier>, ErrorCode> {
        match values {
            [] => Ok(None),
            [one] => std::str::from_utf8(one)
                .ok()
                .and_then(|s| s.trim_matches([' ', '\t']).parse().ok())
                .map(Some)
                .ok_or(ErrorCode::InvalidTier),
            _ => Err(ErrorCode::InvalidTier),
        }
    }

    /// `X-Sentinel-Session` given these values: once, 1 to 128 of
    /// `A-Z a-z 0-9 . _ : -`.
    fn expected_session(values: &[Vec<u8>]) -> Result<Option<String>, ErrorCode> {
        match values {
            [] => Ok(None),
            [one]
                if (1..=128).contains(&one.len())
                    && one
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b)) =>
            {
                Ok(Some(String::from_utf8(one.clone()).unwrap()))
            }
            _ => Err(ErrorCode::InvalidSession),
        }
    }

    fn check_error(err: &SentinelError, expected: ErrorCode) -> Result<(), TestCaseError> {
        prop_assert_eq!(err.code(), expected, "{}", err.message());
        prop_assert!(REQUEST_CODES.contains(&err.code()));
        prop_assert_eq!(err.code().status(), 400);
        let message = err.message();
        prop_assert!(!message.is_empty());
        prop_assert!(message.len() <= 512, "message of {} bytes", message.len());
        prop_assert!(!message.contains(CANARY), "echoed: {}", message);
        Ok(())
    }

    /// Compares a result with the expected one: equal values, or an error
    /// with the expected code and a well-behaved message.
    fn check_result<T: PartialEq + fmt::Debug>(
        what: &str,
        got: &Result<T, SentinelError>,
        expected: &Result<T, ErrorCode>,
    ) -> Result<(), TestCaseError> {
        match (got, expected) {
            (Ok(got), Ok(expected)) => prop_assert_eq!(got, expected, "{}", what),
            (Err(err), Err(code)) => check_error(err, *code)?,
            _ => prop_assert!(false, "{}: got {:?}, expected {:?}", what, got, expected),
        }
        Ok(())
    }

    /// The body sent upstream for `model`: one JSON object whose members are
    /// the original's, in order, without `tier` and `model` (however their
    /// keys were spelled; other duplicates all kept), then `"model":model`.
    fn check_rendered(original: &[u8], rendered: &[u8], model: &str) -> Result<(), TestCaseError> {
        let shown = || {
            String::from_utf8_lossy(rendered)
                .chars()
                .take(300)
                .collect::<String>()
        };
        prop_assert!(
            serde_json::from_slice::<de::IgnoredAny>(rendered).is_ok(),
            "not JSON: {}",
            shown()
        );
        let Some(mut out) = members_of(rendered) else {
            return Err(TestCaseError::fail(format!("not an object: {}", shown())));
        };
        let Some((key, value)) = out.pop() else {
            return Err(TestCaseError::fail("no member"));
        };
        prop_assert_eq!(key, "model");
        let value = serde_json::from_str::<String>(value.get()).ok();
        prop_assert_eq!(value.as_deref(), Some(model));
        let members = members_of(original).unwrap();
        let kept: Vec<(&str, &str)> = members
            .iter()
            .filter(|(key, _)| key != "tier" && key != "model")
            .map(|(key, raw)| (key.as_str(), raw.get()))
            .collect();
        let out: Vec<(&str, &str)> = out.iter().map(|(k, raw)| (k.as_str(), raw.get())).collect();
        prop_assert_eq!(out, kept);
        // Where serde_json can hold the original as a value (finite numbers,
        // no lone surrogates, nesting under its limit), compare values too;
        // its maps keep the last of duplicate keys, like the module.
        if let Ok(Value::Object(mut expected)) = serde_json::from_slice::<Value>(original) {
            expected.remove("tier");
            expected.insert("model".into(), Value::from(model));
            let got = serde_json::from_slice::<Value>(rendered).ok();
            prop_assert_eq!(got, Some(Value::Object(expected)));
        }
        Ok(())
    }

    fn header_map(tier: &[Vec<u8>], session: &[Vec<u8>]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.append("x-sentinel-tiers", HeaderValue::from_static("complex"));
        for value in tier {
            // Header names are case-insensitive: the way a client writes it.
            let name = HeaderName::from_bytes(b"X-Sentinel-Tier").unwrap();
            map.append(name, HeaderValue::from_bytes(value).unwrap());
        }
        for value in session {
            map.append(SESSION_HEADER, HeaderValue::from_bytes(value).unwrap());
        }
        map.append("x-sentinel-session-id", HeaderValue::from_static("a b"));
        map
    }

    /// Runs the layer's steps in its order (session, header tier, body,
    /// tier) on hostile input and checks each against the expected reading;
    /// when the body parses, checks its rendering for every model.
    fn check_request(
        tier_values: &[Vec<u8>],
        session_values: &[Vec<u8>],
        body: &[u8],
        models: &[String],
    ) -> Result<(), TestCaseError> {
        let headers = header_map(tier_values, session_values);
        check_result(
            "session",
            &session_id(&headers),
            &expected_session(session_values),
        )?;
        let header = header_tier(&headers);
        check_result("header tier", &header, &expected_header_tier(tier_values))?;
        let parsed = parse_body(body);
        let read = parsed
            .as_ref()
            .map(|p| (p.tier, p.model_alias, p.stream()))
            .map_err(|e| e.clone());
        check_result("body", &read, &expected_body(body))?;
        let Ok(parsed) = parsed else {
            return Ok(());
        };
        if let Ok(header) = header {
            check_result(
                "tier",
                &resolve_tier(header, &parsed),
                &expected_tier(header, parsed.tier, parsed.model_alias),
            )?;
        }
        let template = parsed.template();
        for model in models {
            check_rendered(body, &template.render(model), model)?;
        }
        Ok(())
    }

    /// A JSON string literal for `s`: each character `\u`-escaped where
    /// `escape` (repeated) says so, surrogate pairs beyond the BMP, in upper
    /// or lower case hex; the rest as serde_json writes it.
    fn spell(s: &str, escape: &[bool], upper: bool) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("\"");
        for (i, c) in s.chars().enumerate() {
            if escape[i % escape.len()] {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = if upper {
                        write!(out, "\\u{unit:04X}")
                    } else {
                        write!(out, "\\u{unit:04x}")
                    };
                }
            } else {
                let plain = serde_json::to_string(&c.to_string()).unwrap();
                out.push_str(&plain[1..plain.len() - 1]);
            }
        }
        out.push('"');
        out
    }

    /// `s` as a JSON string literal, plain, fully or partly `\u`-escaped.
    fn literal(s: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
        let escape = prop_oneof![
            3 => Just(vec![false]),
            1 => Just(vec![true]),
            2 => prop::collection::vec(any::<bool>(), 1..6),
        ];
        (s, escape, any::<bool>()).prop_map(|(s, escape, upper)| spell(&s, &escape, upper))
    }

    /// 64 characters from `pad`, then [`CANARY`], then a short tail.
    fn canaried(pad: impl Strategy<Value = char>) -> impl Strategy<Value = String> {
        (prop::collection::vec(pad, 64), "[a-z]{0,8}").prop_map(|(pad, tail)| {
            let mut s: String = pad.into_iter().collect();
            s.push_str(CANARY);
            s.push_str(&tail);
            s
        })
    }

    fn strs(values: &[&'static str]) -> impl Strategy<Value = String> + use<> {
        prop::sample::select(values.to_vec()).prop_map(String::from)
    }

    /// JSON whitespace between tokens, mostly none.
    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n", "\t", "\r\n", " \n\t  "])
    }

    /// Member names: the ones Sentinel reads, near misses, anything.
    fn key_name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => strs(&["tier", "model", "stream", "stream_options", "messages", "n", "user"]),
            1 => strs(&["Tier", "TIER", "tier ", " model", "MODEL", "", "ti\"er", "tier\u{0}"]),
            1 => any::<String>(),
            1 => canaried(any::<char>()),
        ]
    }

    /// The text of a `tier` or `model` string: tier names, near misses,
    /// model names, anything, long values.
    fn name_value() -> impl Strategy<Value = String> {
        prop_oneof![
            10 => strs(&["simple", "moderate", "complex"]),
            2 => strs(&["Simple", " simple", "simple ", "huge", "", "gpt-4o", "null", "complex\u{0}"]),
            1 => any::<String>(),
            1 => canaried(any::<char>()),
        ]
    }

    /// A nested structure `depth` levels deep: far past serde_json's
    /// recursion limit for values, which the module never builds.
    fn deep(depth: usize, array: bool) -> String {
        if array {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
        }
    }

    /// Any JSON value as text, including what a `Value` cannot hold: huge
    /// numbers, lone surrogates, thousands of levels of nesting.
    fn value_text() -> BoxedStrategy<String> {
        let leaf = prop_oneof![
            4 => strs(&[
                "null", "true", "false", "0", "-0", "-0.0e-0", "1E+2", "[]", "{}", r#""""#,
                "1e400", "-1e400", "1e-400", "1.0000000000000000001",
                "123456789012345678901234567890", "18446744073709551616",
                "-9223372036854775809", r#""\ud800""#, r#""\udc00\ud83d""#, r#""\u0000\/""#,
            ]),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            3 => literal(any::<String>()),
            1 => literal(canaried(any::<char>())),
        ];
        let nested = leaf.prop_recursive(3, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(a, v, b)| format!("{a}{v}{b}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec((ws(), literal(key_name()), ws(), ws(), inner, ws()), 0..5)
                    .prop_map(|members| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }),
            ]
        });
        prop_oneof![
            30 => nested,
            1 => (1usize..5000, any::<bool>()).prop_map(|(depth, array)| deep(depth, array)),
        ]
        .boxed()
    }

    /// One top-level member, as text, weighted towards those Sentinel reads.
    fn member() -> impl Strategy<Value = String> {
        let tierish = || {
            prop_oneof![
                8 => literal(name_value()),
                1 => Just("null".to_owned()),
                1 => value_text(),
            ]
        };
        let stream = prop_oneof![
            3 => strs(&["true", "false"]),
            2 => strs(&[r#""true""#, "1", "null", "[true]", r#""True""#]),
            1 => value_text(),
        ];
        let stream_options =
            prop_oneof![Just(r#"{"include_usage":true}"#.to_owned()), value_text(),];
        let pair = prop_oneof![
            3 => (literal(Just("tier".to_owned())), tierish()),
            3 => (literal(Just("model".to_owned())), tierish()),
            2 => (literal(Just("stream".to_owned())), stream),
            1 => (literal(Just("stream_options".to_owned())), stream_options),
            4 => (literal(key_name()), value_text()),
        ];
        (ws(), pair, ws(), ws(), ws())
            .prop_map(|(a, (k, v), b, c, d)| format!("{a}{k}{b}:{c}{v}{d}"))
    }

    /// A body that is a JSON object of random members.
    fn object() -> impl Strategy<Value = Vec<u8>> {
        (ws(), prop::collection::vec(member(), 0..7), ws())
            .prop_map(|(a, members, b)| format!("{a}{{{}}}{b}", members.join(",")).into_bytes())
    }

    /// Request bodies: mostly objects, some broken ones (trailing data,
    /// wrapped in an array, cut short, mutated).
    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            16 => object(),
            1 => object().prop_map(|mut b| {
                b.extend_from_slice(b" {}");
                b
            }),
            1 => object().prop_map(|b| [b"[".as_slice(), &b, b"]"].concat()),
            2 => (object(), any::<prop::sample::Index>())
                .prop_map(|(b, cut)| b[..cut.index(b.len() + 1)].to_vec()),
            3 => mutated(object()),
        ]
    }

    /// A byte a header value may hold (`HeaderValue::from_bytes`).
    fn header_byte() -> impl Strategy<Value = u8> {
        prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff]
    }

    fn tier_header_value() -> impl Strategy<Value = Vec<u8>> {
        let pad = || prop::sample::select(vec!["", "", " ", "\t", "  \t"]);
        prop_oneof![
            8 => (pad(), prop::sample::select(Tier::ALL.to_vec()), pad())
                .prop_map(|(a, t, b)| format!("{a}{t}{b}").into_bytes()),
            2 => strs(&[
                "Simple", "SIMPLE", "huge", "", "simple,complex", "simple complex",
                "\u{a0}simple", "simple\u{3000}", "mod erate", "complex\u{7f}",
            ])
            .prop_filter("a header value", |s| HeaderValue::from_str(s).is_ok())
            .prop_map(String::into_bytes),
            1 => prop::collection::vec(header_byte(), 0..80),
            1 => (pad(), canaried(proptest::char::range('!', '~')))
                .prop_map(|(a, s)| format!("{a}{s}").into_bytes()),
        ]
    }

    fn session_header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => "[A-Za-z0-9._:-]{1,128}".prop_map(String::into_bytes),
            1 => "[A-Za-z0-9._:-]{129,140}".prop_map(String::into_bytes),
            1 => "[A-Za-z0-9._:-]{0,8}[ /=\t\u{e9}][A-Za-z0-9._:-]{0,8}".prop_map(String::into_bytes),
            1 => prop::collection::vec(header_byte(), 0..140),
            1 => canaried(prop::sample::select(b"abcXYZ019._:-".map(char::from).to_vec()))
                .prop_map(|s| format!("{s}/").into_bytes()),
        ]
    }

    /// A header given never, once (mostly) or several times.
    fn repeated(
        value: impl Strategy<Value = Vec<u8>> + 'static,
    ) -> impl Strategy<Value = Vec<Vec<u8>>> {
        let value = value.boxed();
        prop_oneof![
            2 => Just(Vec::new()),
            5 => prop::collection::vec(value.clone(), 1..=1),
            1 => prop::collection::vec(value, 2..4),
        ]
    }

    /// Models to render: config names, and anything a string can hold.
    fn models() -> impl Strategy<Value = Vec<String>> {
        let model = prop_oneof![
            2 => strs(&[
                "gpt-4o-mini", "we\"ird\\", "\u{2028}line\u{2029}", "", "tier", "model",
                "nul\u{0}l", "caf\u{e9} \u{1f600}", "\u{ffff}", "</script>",
            ]),
            1 => any::<String>(),
        ];
        prop::collection::vec(model, 1..3)
    }

    /// A string of `[{}[]":,\ ...]` tokens: nearly JSON much more often than
    /// random text.
    fn token_soup() -> impl Strategy<Value = Vec<u8>> {
        let token = strs(&[
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "\\",
            " ",
            "\n",
            "\"tier\"",
            "\"model\"",
            "\"stream\"",
            "\"simple\"",
            "\"complex\"",
            "\"ti\\u0065r\"",
            "true",
            "null",
            "1e400",
            "-",
            "0",
            ".",
            "e",
            "\\ud800",
            "\\u",
            "\u{e9}",
            "\"x\"",
        ]);
        prop::collection::vec(token, 0..48).prop_map(|tokens| tokens.concat().into_bytes())
    }

    proptest! {
        #![proptest_config(config())]

        /// Structure-aware: objects with `tier`, `model`, `stream` and other
        /// members (escaped keys, duplicates, nested, deep, huge numbers,
        /// unicode, odd whitespace), broken objects, and repeated or odd
        /// `X-Sentinel-Tier` / `X-Sentinel-Session` headers.
        #[test]
        fn hostile_requests_are_read_as_the_contract_says(
            body in body(),
            tier_values in repeated(tier_header_value()),
            session_values in repeated(session_header_value()),
            models in models(),
        ) {
            check_request(&tier_values, &session_values, &body, &models)?;
        }

        #[test]
        fn arbitrary_bytes_are_read_as_the_contract_says(
            body in prop::collection::vec(any::<u8>(), 0..1024),
            models in models(),
        ) {
            check_request(&[], &[], &body, &models)?;
        }

        #[test]
        fn arbitrary_text_is_read_as_the_contract_says(body in any::<String>(), models in models()) {
            check_request(&[], &[], body.as_bytes(), &models)?;
        }

        #[test]
        fn json_token_soup_is_read_as_the_contract_says(
            body in prop_oneof![token_soup(), mutated(token_soup())],
            models in models(),
        ) {
            check_request(&[], &[], &body, &models)?;
        }

        /// The no-echo promise: a `tier` or `model` value (or tier header)
        /// is echoed up to its 64th character at most, and a session value
        /// or the body of an `invalid_json` never.
        #[test]
        fn long_client_values_are_not_echoed_past_64_characters(
            pad in prop::collection::vec(any::<char>(), 64),
            header_pad in "[!-~]{64}",
            marker in "[A-Za-z0-9]{40}",
            tail in ".{0,8}",
            field in prop::sample::select(vec!["tier", "model"]),
            escape in prop::collection::vec(any::<bool>(), 1..4),
        ) {
            let value = format!("{}{marker}{tail}", pad.iter().collect::<String>());
            let body = format!("{{{}:{}}}", spell(field, &escape, false), spell(&value, &escape, true));
            let err = parse_body(body.as_bytes()).unwrap_err();
            let code = if field == "tier" { ErrorCode::InvalidTier } else { ErrorCode::ModelNotAllowed };
            prop_assert_eq!(err.code(), code);
            prop_assert!(!err.message().contains(&marker), "{}", err.message());
            prop_assert!(err.message().len() <= 512);

            for body in [
                spell(&marker, &escape, false),
                format!("[{}]", spell(&marker, &escape, false)),
                format!("{{\"a\":{}}} x", spell(&marker, &escape, false)),
                format!("{{\"a\":{},}}", spell(&marker, &escape, false)),
                format!("{{{}:1", spell(&marker, &escape, false)),
            ] {
                let err = parse_body(body.as_bytes()).unwrap_err();
                prop_assert_eq!(err.code(), ErrorCode::InvalidJson);
                prop_assert!(!err.message().contains(&marker), "{}", err.message());
            }

            let header = format!("{header_pad}{marker}");
            let err = header_tier(&headers(&[(TIER_HEADER, header.as_bytes())])).unwrap_err();
            prop_assert_eq!(err.code(), ErrorCode::InvalidTier);
            prop_assert!(!err.message().contains(&marker), "{}", err.message());

            let session = format!("{marker}/{header_pad}");
            let err = session_id(&headers(&[(SESSION_HEADER, session.as_bytes())])).unwrap_err();
            prop_assert!(!err.message().contains(&marker), "{}", err.message());
        }
    }
}
