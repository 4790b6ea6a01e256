//! Hostile tier-config documents: decoding (`RawTierConfig` from JSON) and
//! validation (`TierConfig::validate`) never panic, accept exactly the
//! documents the contract allows, and every config they accept keeps the
//! invariants routing relies on.
//!
//! Cases per property: 2048, or `PROPTEST_CASES` for a longer run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::HashSet;
use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sentinel_core::config::MAX_MODELS_PER_TIER;
use sentinel_core::{
    ModelEntry, RawModel, RawPricing, RawTier, RawTierConfig, RawTiers, Tier, TierConfig,
};
use sentinel_testkit::hostile::mutated;

/// The shared hostile-input config; failure seeds go to this crate's own
/// directory (an integration test has no lib.rs beside it for proptest's
/// default).
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/hostile_input.txt",
        ))),
        ..sentinel_testkit::hostile::config()
    }
}

// --- what a document must decode to ---

/// A model as the decoder must read it.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    provider: String,
    model: String,
    cost: i64,
    pricing: Option<(f64, f64)>,
}

/// A document as the decoder must read it: the version and, per tier, its
/// models (`None`: the tier is absent or `null`).
#[derive(Debug, Clone, PartialEq, Default)]
struct Doc {
    version: Option<String>,
    tiers: [Option<Vec<Model>>; 3],
}

/// A piece of generated JSON: its text and what the decoder must make of
/// it, `None` when the piece breaks the contract's shape (the whole
/// document must then fail to decode).
#[derive(Debug, Clone)]
struct Gen<T> {
    text: String,
    value: Option<T>,
}

impl<T> Gen<T> {
    fn new(text: impl Into<String>, value: Option<T>) -> Self {
        Gen {
            text: text.into(),
            value,
        }
    }
}

/// What validation must make of a decoded document: the config's models
/// per tier, or `None` when a rule is broken. The rules, restated from
/// `config.rs`: names non-blank, at most 256 characters, no control
/// characters; relative cost in 1..=10; prices finite and not negative; a
/// (provider, model) pair once per tier; at most 256 models per tier.
fn expected_config(doc: &Doc) -> Option<[Vec<Model>; 3]> {
    let name_ok = |s: &str| {
        !s.trim().is_empty() && s.chars().count() <= 256 && !s.chars().any(char::is_control)
    };
    let mut out: [Vec<Model>; 3] = Default::default();
    for (i, tier) in doc.tiers.iter().enumerate() {
        let Some(models) = tier else { continue };
        if models.len() > MAX_MODELS_PER_TIER {
            return None;
        }
        let mut seen = HashSet::new();
        for m in models {
            let price_ok = |p: f64| p.is_finite() && p >= 0.0;
            if !name_ok(&m.provider)
                || !name_ok(&m.model)
                || !(1..=10).contains(&m.cost)
                || m.pricing.is_some_and(|(i, o)| !price_ok(i) || !price_ok(o))
                || !seen.insert((m.provider.clone(), m.model.clone()))
            {
                return None;
            }
        }
        out[i] = models.clone();
    }
    Some(out)
}

// --- the invariants of any accepted config ---

fn entry_as_model(m: &ModelEntry) -> Model {
    Model {
        provider: m.provider().to_owned(),
        model: m.model().to_owned(),
        cost: i64::from(m.relative_cost()),
        pricing: m
            .pricing()
            .map(|p| (p.input_per_mtok_usd(), p.output_per_mtok_usd())),
    }
}

/// What routing relies on, for any config validation accepted: each
/// model's fields within the rules; positive weights proportional to
/// 1 / relative_cost and summing to 1; a choice always a model of the tier
/// and never an excluded one; the config rebuilt from its document is
/// itself; dropping providers keeps the rest and their weights sound.
fn check_invariants(config: &TierConfig, randoms: &[u64]) -> Result<(), TestCaseError> {
    let mut total = 0;
    for tier in Tier::ALL {
        let models = config.tier(tier);
        total += models.len();
        prop_assert!(models.len() <= MAX_MODELS_PER_TIER);
        let mut seen = HashSet::new();
        for m in models.models() {
            for name in [m.provider(), m.model()] {
                prop_assert!(!name.trim().is_empty());
                prop_assert!(name.chars().count() <= 256);
                prop_assert!(!name.chars().any(char::is_control), "{:?}", name);
            }
            prop_assert!((1..=10).contains(&m.relative_cost()));
            if let Some(p) = m.pricing() {
                for price in [p.input_per_mtok_usd(), p.output_per_mtok_usd()] {
                    prop_assert!(price.is_finite() && price >= 0.0);
                }
                // Never negative or NaN (a price near f64::MAX may make it
                // infinite: prices have no upper bound).
                prop_assert!(p.cost_usd(u64::MAX, u64::MAX) >= 0.0);
                prop_assert_eq!(p.cost_usd(0, 0), 0.0);
            }
            prop_assert!(seen.insert((m.provider(), m.model())), "duplicate {:?}", m);
            let found = models.find(m.provider(), m.model()).unwrap();
            prop_assert!(std::ptr::eq(found, m));
        }
        check_weights(models)?;
        check_choices(models, randoms)?;
    }
    prop_assert_eq!(config.models().count(), total);
    for (tier, m) in config.models() {
        prop_assert!(
            config
                .tier(tier)
                .models()
                .iter()
                .any(|x| std::ptr::eq(x, m))
        );
    }

    // The document form validates back to the same config.
    let raw = config.to_raw();
    prop_assert_eq!(&TierConfig::validate(raw.clone()).unwrap(), config);
    let json = serde_json::to_string(config).unwrap();
    let back: RawTierConfig = serde_json::from_str(&json).unwrap();
    prop_assert_eq!(&TierConfig::validate(back).unwrap(), config);

    // Dropping providers: the rest in order, weights recomputed.
    let drop = |p: &str| p.len() % 2 == 1;
    let (kept, dropped) = config.retain_providers(|p| !drop(p));
    prop_assert_eq!(kept.models().count() + dropped.len(), total);
    prop_assert_eq!(kept.version(), config.version());
    for tier in Tier::ALL {
        let expected: Vec<&ModelEntry> = config
            .tier(tier)
            .models()
            .iter()
            .filter(|m| !drop(m.provider()))
            .collect();
        let got: Vec<&ModelEntry> = kept.tier(tier).models().iter().collect();
        prop_assert_eq!(got, expected);
        check_weights(kept.tier(tier))?;
        check_choices(kept.tier(tier), randoms)?;
    }
    for (tier, m) in &dropped {
        prop_assert!(drop(m.provider()));
        prop_assert!(config.tier(*tier).find(m.provider(), m.model()).is_some());
    }
    Ok(())
}

fn check_weights(models: &sentinel_core::TierModels) -> Result<(), TestCaseError> {
    let n = models.len();
    prop_assert_eq!(models.probability(n), None);
    if n == 0 {
        return Ok(());
    }
    let probabilities: Vec<f64> = (0..n).map(|i| models.probability(i).unwrap()).collect();
    let sum: f64 = probabilities.iter().sum();
    prop_assert!((sum - 1.0).abs() < 1e-9, "probabilities sum to {}", sum);
    // p_i = (1 / cost_i) / total, so p_i * cost_i is the same for all.
    let scale = probabilities[0] * f64::from(models.models()[0].relative_cost());
    for (p, m) in probabilities.iter().zip(models.models()) {
        prop_assert!(*p > 0.0 && *p <= 1.0);
        let this = p * f64::from(m.relative_cost());
        prop_assert!((this - scale).abs() < 1e-9 * scale.max(1.0));
    }
    Ok(())
}

/// Choices with no exclusion and with exclusions drawn from `randoms`.
fn check_choices(models: &sentinel_core::TierModels, randoms: &[u64]) -> Result<(), TestCaseError> {
    let in_tier = |m: &ModelEntry| models.models().iter().any(|x| std::ptr::eq(x, m));
    for &r in randoms.iter().chain(&[0, u64::MAX]) {
        match models.choose(|_| false, r) {
            Some(m) => prop_assert!(in_tier(m)),
            None => prop_assert!(models.is_empty()),
        }
        // Exclude the models whose bit (index mod 64) is set in `r`.
        let excluded = |m: &ModelEntry| {
            let offset = m as *const ModelEntry as usize - models.models().as_ptr() as usize;
            let i = offset / std::mem::size_of::<ModelEntry>();
            r.rotate_left(i as u32) & 1 == 1
        };
        let any_eligible = models.models().iter().any(|m| !excluded(m));
        match models.choose(excluded, r.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            Some(m) => {
                prop_assert!(in_tier(m));
                prop_assert!(!excluded(m), "chose excluded {:?}", m);
            }
            None => prop_assert!(!any_eligible),
        }
    }
    Ok(())
}

/// Decodes and validates `bytes` as the Zion client does, checking every
/// accepted config and that rejections come with bounded messages.
fn decode_and_validate(bytes: &[u8], randoms: &[u64]) -> Result<Option<TierConfig>, TestCaseError> {
    let Ok(raw) = serde_json::from_slice::<RawTierConfig>(bytes) else {
        return Ok(None);
    };
    match TierConfig::validate(raw) {
        Ok(config) => {
            check_invariants(&config, randoms)?;
            Ok(Some(config))
        }
        Err(e) => {
            // Names are echoed cut to 64 printable characters each.
            let message = e.to_string();
            prop_assert!(
                message.len() <= 1024,
                "{} bytes: {}",
                message.len(),
                message
            );
            prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
            Ok(None)
        }
    }
}

// --- generators ---

/// A JSON string literal for `s`, each character `\u`-escaped where
/// `escape` (repeated) says so; the rest as serde_json writes it.
fn spell(s: &str, escape: &[bool]) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if escape[i % escape.len()] {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            let plain = serde_json::to_string(&c.to_string()).unwrap();
            out.push_str(&plain[1..plain.len() - 1]);
        }
    }
    out.push('"');
    out
}

fn escapes() -> impl Strategy<Value = Vec<bool>> {
    prop_oneof![
        4 => Just(vec![false]),
        1 => Just(vec![true]),
        1 => prop::collection::vec(any::<bool>(), 1..5),
    ]
}

/// A member name, plain or `\u`-escaped (`"pro\u0076ider"` is `provider`).
fn key(name: &'static str) -> impl Strategy<Value = String> {
    escapes().prop_map(move |e| spell(name, &e))
}

fn strs(values: &[&'static str]) -> impl Strategy<Value = &'static str> + use<> {
    prop::sample::select(values.to_vec())
}

/// JSON whitespace, mostly none.
fn ws() -> impl Strategy<Value = &'static str> {
    strs(&["", "", "", " ", "\n  ", "\t", "\r\n"])
}

/// A small JSON value the decoder must ignore (an unknown field's value).
fn any_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        strs(&[
            "null",
            "true",
            "0",
            "-1",
            "1e400",
            "123456789012345678901234567890",
            "\"\"",
            "\"\\ud800\"",
            "[]",
            "{}",
            "\"simple\"",
            "{\"models\":null}",
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|v| {
                let members: Vec<String> =
                    v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// A provider or model name: a small pool (so pairs repeat), names the
/// rules reject, anything, names around the 256-character limit, and
/// values that are not strings.
fn name() -> BoxedStrategy<Gen<String>> {
    let string = |s: String, escape: Vec<bool>| Gen::new(spell(&s, &escape), Some(s));
    prop_oneof![
        72 => (strs(&["openai", "anthropic", "gpt-4o-mini", "o3", "a", "b"]), escapes())
            .prop_map(move |(s, e)| string(s.to_owned(), e)),
        18 => (strs(&[
            "", " ", "\t", "\u{3000}", "a\nb", "a\u{7f}", "\u{85}x", "caf\u{e9} \u{1f600}",
            "a b", "\u{200b}", "\u{feff}",
        ]), escapes())
            .prop_map(move |(s, e)| string(s.to_owned(), e)),
        9 => (any::<String>(), escapes()).prop_map(move |(s, e)| string(s, e)),
        9 => (254usize..259, prop::sample::select(vec!['m', '\u{e9}', '\u{1f600}']))
            .prop_map(move |(n, c)| string(c.to_string().repeat(n), vec![false])),
        1 => strs(&["null", "1", "[]", "{}", "true", "[\"openai\"]"])
            .prop_map(|t| Gen::new(t, None)),
    ]
    .boxed()
}

/// `relative_cost`: in range mostly; ints anywhere; integral floats (read
/// as integers), fractions, huge and out-of-range numbers, non-numbers.
fn cost() -> BoxedStrategy<Gen<i64>> {
    let fixed: Vec<(&str, Option<i64>)> = vec![
        ("0", Some(0)),
        ("-1", Some(-1)),
        ("11", Some(11)),
        ("3.0", Some(3)),
        ("1e1", Some(10)),
        ("10.0", Some(10)),
        ("-0.0", Some(0)),
        ("1E0", Some(1)),
        ("999999999999999.0", Some(999_999_999_999_999)),
        ("18446744073709551615", Some(i64::MAX)),
        ("9223372036854775808", Some(i64::MAX)),
        ("-9223372036854775808", Some(i64::MIN)),
        ("2.5", None),
        ("1e15", None),
        ("-9223372036854775809", None),
        ("1e400", None),
        ("\"3\"", None),
        ("null", None),
        ("true", None),
        ("[3]", None),
        ("{}", None),
    ];
    prop_oneof![
        40 => (1i64..=10).prop_map(|c| Gen::new(c.to_string(), Some(c))),
        6 => any::<i64>().prop_map(|c| Gen::new(c.to_string(), Some(c))),
        3 => prop::sample::select(fixed).prop_map(|(t, v)| Gen::new(t, v)),
    ]
    .boxed()
}

/// A price. What it decodes to is asked of serde_json's own number parser
/// (the rule under test is what happens next, not float rounding).
fn price() -> BoxedStrategy<Gen<f64>> {
    let text = prop_oneof![
        30 => (0.0f64..100.0).prop_map(|p| format!("{p}")),
        4 => any::<f64>()
            .prop_filter("finite", |p| p.is_finite())
            .prop_map(|p| format!("{p:e}")),
        2 => strs(&[
            "0", "-0.0", "-0.01", "1e308", "1e-320", "1e400", "-1e400", "3",
            "\"NaN\"", "\"Infinity\"", "\"0.15\"", "null", "true", "[]",
        ])
        .prop_map(String::from),
    ];
    text.prop_map(|t| {
        let value = serde_json::from_str::<f64>(&t).ok();
        Gen::new(t, value)
    })
    .boxed()
}

/// Members of an object, in an order set by `order`, as text.
fn object_text(members: Vec<(String, String)>, order: &[u32], ws: &[&str]) -> String {
    let mut members: Vec<(usize, (String, String))> = members.into_iter().enumerate().collect();
    members.sort_by_key(|(i, _)| (order[i % order.len()], *i));
    let members: Vec<String> = members
        .into_iter()
        .enumerate()
        .map(|(j, (_, (k, v)))| format!("{}{k}:{}{v}", ws[j % ws.len()], ws[(j + 1) % ws.len()]))
        .collect();
    format!("{{{}}}", members.join(","))
}

fn order() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(any::<u32>(), 1..8)
}

fn spaces() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(ws(), 1..4)
}

/// Input and output prices, when a model has them.
type Prices = Option<(f64, f64)>;

/// `pricing`: absent, `null`, an object of two prices (one missing, or
/// duplicated, sometimes; unknown fields), or not an object.
fn pricing() -> BoxedStrategy<Option<Gen<Prices>>> {
    let priced = (
        (key("input_per_mtok_usd"), price()),
        (key("output_per_mtok_usd"), price()),
        0u8..150,
        order(),
        spaces(),
    )
        .prop_map(|((ik, input), (ok, output), twist, order, ws)| {
            let mut members = vec![(ik.clone(), input.text.clone()), (ok, output.text.clone())];
            let mut value = match (input.value, output.value) {
                (Some(i), Some(o)) => Some(Some((i, o))),
                _ => None,
            };
            match twist {
                0 => {
                    members.remove(1);
                    value = None;
                }
                1 => {
                    members.push((ik, "1".into()));
                    value = None;
                }
                2 => members.push(("\"currency\"".into(), "\"usd\"".into())),
                _ => {}
            }
            Gen::new(object_text(members, &order, &ws), value)
        });
    prop_oneof![
        8 => Just(None),
        2 => Just(Some(Gen::new("null", Some(None)))),
        48 => priced.prop_map(Some),
        1 => strs(&["\"free\"", "0", "true"]).prop_map(|t| Some(Gen::new(t, None))),
    ]
    .boxed()
}

/// One model object: fields in any order and spelling, some missing or
/// duplicated, `context_window` and unknown fields of any value.
fn model() -> BoxedStrategy<Gen<Model>> {
    (
        (key("provider"), name()),
        (key("model"), name()),
        (key("relative_cost"), cost()),
        (key("pricing"), pricing()),
        prop::option::of(prop_oneof![
            (0u64..2_000_000).prop_map(|n| n.to_string()),
            // Any value is read as a window or as none, except a string
            // that is not Unicode (a lone surrogate) or a number no float
            // holds, which fail the document (see config.rs's
            // `context_window` tests).
            any_json().prop_filter("unreadable", |v| v != "\"\\ud800\"" && v != "1e400"),
        ]),
        prop::collection::vec(
            (
                strs(&[
                    "region",
                    "notes",
                    "Provider",
                    "model ",
                    "relative-cost",
                    "pricing_v2",
                    "",
                ]),
                any_json(),
            ),
            0..3,
        ),
        0u8..255,
        order(),
        spaces(),
    )
        .prop_map(
            |(
                (pk, provider),
                (mk, model),
                (ck, cost),
                (prk, pricing),
                window,
                extra,
                twist,
                order,
                ws,
            )| {
                let mut members = vec![
                    (pk.clone(), provider.text.clone()),
                    (mk.clone(), model.text.clone()),
                    (ck.clone(), cost.text.clone()),
                ];
                let mut value = match (provider.value, model.value, cost.value) {
                    (Some(provider), Some(model), Some(cost)) => Some(Model {
                        provider,
                        model,
                        cost,
                        pricing: None,
                    }),
                    _ => None,
                };
                if let Some(pricing) = pricing {
                    members.push((prk, pricing.text));
                    match (&mut value, pricing.value) {
                        (Some(m), Some(p)) => m.pricing = p,
                        _ => value = None,
                    }
                }
                if let Some(window) = window {
                    members.push(("\"context_window\"".into(), window));
                }
                for (k, v) in extra {
                    members.push((serde_json::to_string(k).unwrap(), v));
                }
                // A required field missing, or a known field twice: rejected.
                match twist {
                    0 => {
                        members.remove(0);
                        value = None;
                    }
                    1 => {
                        members.remove(1);
                        value = None;
                    }
                    2 => {
                        members.remove(2);
                        value = None;
                    }
                    3 => {
                        members.push((mk, "\"gpt-x\"".into()));
                        value = None;
                    }
                    4 => {
                        members.push((ck, "1".into()));
                        value = None;
                    }
                    _ => {}
                }
                Gen::new(object_text(members, &order, &ws), value)
            },
        )
        .boxed()
}

/// Many models (around the per-tier cap), cheap to build.
fn many_models() -> impl Strategy<Value = Gen<Vec<Model>>> {
    (MAX_MODELS_PER_TIER - 3..MAX_MODELS_PER_TIER + 4, 1i64..=10).prop_map(|(n, cost)| {
        let models: Vec<Model> = (0..n)
            .map(|i| Model {
                provider: "openai".into(),
                model: format!("m{i}"),
                cost,
                pricing: None,
            })
            .collect();
        let texts: Vec<String> = models
            .iter()
            .map(|m| {
                format!(
                    r#"{{"provider":"{}","model":"{}","relative_cost":{}}}"#,
                    m.provider, m.model, m.cost
                )
            })
            .collect();
        Gen::new(format!("[{}]", texts.join(",")), Some(models))
    })
}

/// One tier's value: `null`, an object with `models` (maybe missing,
/// `null` or not an array, maybe twice) and unknown fields, or not an
/// object.
fn tier_value() -> BoxedStrategy<Gen<Option<Vec<Model>>>> {
    let models = prop_oneof![
        60 => prop::collection::vec(model(), 0..4).prop_map(|models| {
            let text = format!(
                "[{}]",
                models.iter().map(|m| m.text.as_str()).collect::<Vec<_>>().join(",")
            );
            let value: Option<Vec<Model>> = models.into_iter().map(|m| m.value).collect();
            Gen::new(text, value)
        }),
        1 => many_models(),
        1 => strs(&["null", "{}", "\"all\"", "1"]).prop_map(|t| Gen::new(t, None)),
    ];
    let object = (
        key("models"),
        prop::option::weighted(0.9, models),
        prop::option::of((Just("\"note\"".to_owned()), any_json())),
        prop::bool::weighted(0.01),
        order(),
        spaces(),
    )
        .prop_map(|(mk, models, note, twice, order, ws)| {
            let mut members = Vec::new();
            let mut value = Some(Some(Vec::new()));
            if let Some(models) = models {
                members.push((mk.clone(), models.text));
                value = models.value.map(Some);
                if twice {
                    members.push((mk, "[]".into()));
                    value = None;
                }
            }
            if let Some((k, v)) = note {
                members.push((k, v));
            }
            Gen::new(object_text(members, &order, &ws), value)
        });
    prop_oneof![
        60 => object,
        2 => Just(Gen::new("null", Some(None))),
        1 => strs(&["true", "\"simple\"", "5"]).prop_map(|t| Gen::new(t, None)),
    ]
    .boxed()
}

/// A whole document: `tiers` with known tiers (sometimes twice) and unknown
/// ones, `version` of any type, unknown fields, `tiers` missing or not an
/// object; or, rarely, not an object at all.
fn document() -> BoxedStrategy<Gen<Doc>> {
    let known = (
        prop::sample::select(Tier::ALL.to_vec()),
        escapes(),
        tier_value(),
    );
    let unknown = (
        strs(&["ultra", "Simple", "", "simple ", "complex2", "tiers"]),
        prop_oneof![any_json(), tier_value().prop_map(|g| g.text)],
    );
    // Each tier present mostly, once; rarely one of them twice.
    let slot = |tier: Tier| prop::option::weighted(0.85, (Just(tier), escapes(), tier_value()));
    let known = (
        slot(Tier::Simple),
        slot(Tier::Moderate),
        slot(Tier::Complex),
        prop::option::weighted(0.01, known),
    )
        .prop_map(|(a, b, c, again)| [a, b, c, again].into_iter().flatten().collect::<Vec<_>>());
    let tiers = (
        known,
        prop::collection::vec(unknown, 0..2),
        order(),
        spaces(),
    )
        .prop_map(|(known, unknown, order, ws)| {
            let mut doc = Doc::default();
            let mut ok = true;
            let mut seen = HashSet::new();
            let mut members = Vec::new();
            for (tier, escape, value) in known {
                members.push((spell(tier.as_str(), &escape), value.text));
                ok &= seen.insert(tier); // a tier twice: "duplicate field"
                match value.value {
                    Some(models) => doc.tiers[tier.index()] = models,
                    None => ok = false,
                }
            }
            for (name, value) in unknown {
                members.push((serde_json::to_string(name).unwrap(), value));
            }
            Gen::new(object_text(members, &order, &ws), ok.then_some(doc))
        });
    let version = prop_oneof![
        8 => Just(None),
        8 => any::<String>().prop_map(|v| Some(Gen::new(serde_json::to_string(&v).unwrap(), Some(Some(v))))),
        2 => Just(Some(Gen::new("null", Some(None)))),
        1 => strs(&["1", "[]", "{}", "true"]).prop_map(|t| Some(Gen::new(t, None))),
    ];
    let object = (
        (key("tiers"), prop::option::weighted(0.95, tiers)),
        (key("version"), version),
        prop::collection::vec(
            (
                strs(&["generated_by", "etag", "tiers_v2", "Tiers"]),
                any_json(),
            ),
            0..2,
        ),
        0u8..150,
        order(),
        spaces(),
    )
        .prop_map(|((tk, tiers), (vk, version), extra, twist, order, ws)| {
            let mut members = Vec::new();
            let mut value = None;
            if let Some(tiers) = tiers {
                members.push((tk.clone(), tiers.text));
                value = tiers.value;
            }
            if let Some(version) = version {
                members.push((vk, version.text));
                match (&mut value, version.value) {
                    (Some(doc), Some(v)) => doc.version = v,
                    _ => value = None,
                }
            }
            for (k, v) in extra {
                members.push((serde_json::to_string(k).unwrap(), v));
            }
            // `tiers` twice: "duplicate field".
            if members.first().is_some_and(|(k, _)| *k == tk) && twist < 2 {
                members.push((tk, if twist == 0 { "{}" } else { "null" }.into()));
                value = None;
            }
            Gen::new(object_text(members, &order, &ws), value)
        });
    prop_oneof![
        40 => object,
        1 => strs(&["[]", "null", "\"tiers\"", "", "{", "[{\"tiers\":{}}]"]).prop_map(|t| Gen::new(t, None)),
    ]
    .boxed()
}

/// The contract's own tokens strung together: near-documents far more
/// often than random text.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = strs(&[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        " ",
        "{\"tiers\":",
        "\"simple\":",
        "\"moderate\":",
        "\"complex\":",
        "{\"models\":",
        "\"provider\":",
        "\"model\":",
        "\"relative_cost\":",
        "\"pricing\":",
        "\"input_per_mtok_usd\":",
        "\"output_per_mtok_usd\":",
        "\"openai\"",
        "\"m\"",
        "\"\"",
        "1",
        "10",
        "3.0",
        "1.5",
        "-1",
        "1e400",
        "null",
        "true",
        "{\"provider\":\"openai\",\"model\":\"m\",\"relative_cost\":1}",
    ]);
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat().into_bytes())
}

fn randoms() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(any::<u64>(), 1..4)
}

/// A `RawTierConfig` built in Rust, not decoded: what JSON cannot carry
/// (NaN and infinite prices, any `i64` cost) reaches `validate` too.
fn raw_config() -> impl Strategy<Value = RawTierConfig> {
    let name = prop_oneof![
        6 => strs(&["openai", "anthropic", "m", "o3"]).prop_map(String::from),
        1 => strs(&["", " ", "a\u{0}", "\u{9f}", "x\u{2028}"]).prop_map(String::from),
        1 => any::<String>(),
        1 => (250usize..260).prop_map(|n| "é".repeat(n)),
    ];
    let price = prop_oneof![
        3 => 0.0f64..100.0,
        1 => any::<f64>(),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, -1e-300, f64::MAX, f64::MIN_POSITIVE]),
    ];
    let model = (
        name.clone(),
        name,
        prop_oneof![3 => 1i64..=10, 1 => any::<i64>(), 1 => -2i64..13],
        prop::option::of((price.clone(), price)),
    )
        .prop_map(|(provider, model, relative_cost, pricing)| RawModel {
            provider,
            model,
            relative_cost,
            pricing: pricing.map(|(i, o)| RawPricing {
                input_per_mtok_usd: i,
                output_per_mtok_usd: o,
            }),
            context_window: None,
        });
    let tier =
        prop::option::of(prop::collection::vec(model, 0..8).prop_map(|models| RawTier { models }));
    (
        prop::option::of(any::<String>()),
        tier.clone(),
        tier.clone(),
        tier,
    )
        .prop_map(|(version, simple, moderate, complex)| RawTierConfig {
            version,
            tiers: RawTiers {
                simple,
                moderate,
                complex,
            },
        })
}

fn doc_of(raw: &RawTierConfig) -> Doc {
    let tier = |t: Option<&RawTier>| {
        t.map(|t| {
            t.models
                .iter()
                .map(|m| Model {
                    provider: m.provider.clone(),
                    model: m.model.clone(),
                    cost: m.relative_cost,
                    pricing: m
                        .pricing
                        .map(|p| (p.input_per_mtok_usd, p.output_per_mtok_usd)),
                })
                .collect()
        })
    };
    Doc {
        version: raw.version.clone(),
        tiers: Tier::ALL.map(|t| tier(raw.tiers.get(t))),
    }
}

/// Checks a validation outcome against the rules restated.
fn check_against_rules(doc: &Doc, result: Option<&TierConfig>) -> Result<(), TestCaseError> {
    match (expected_config(doc), result) {
        (Some(expected), Some(config)) => {
            prop_assert_eq!(config.version(), doc.version.as_deref());
            for tier in Tier::ALL {
                let got: Vec<Model> = config
                    .tier(tier)
                    .models()
                    .iter()
                    .map(entry_as_model)
                    .collect();
                prop_assert_eq!(&got, &expected[tier.index()], "tier {}", tier);
            }
        }
        (None, None) => {}
        (expected, got) => prop_assert!(
            false,
            "expected {}, got {:?}",
            if expected.is_some() {
                "a config"
            } else {
                "a rejection"
            },
            got
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Structure-aware documents (tiers known, unknown, repeated or `null`;
    /// models with names empty, blank, long, controlled or not strings;
    /// costs as ints, integral floats, fractions, negatives, huge numbers,
    /// strings; pricing absent, `null`, negative, out of range, strings;
    /// `context_window` and unknown fields; duplicate fields and models;
    /// any key spelled with `\u` escapes): the decoder and the validator
    /// accept exactly what the contract allows, and keep the invariants.
    #[test]
    fn documents_are_accepted_exactly_when_the_contract_allows(
        doc in document(),
        randoms in randoms(),
    ) {
        let decoded = serde_json::from_str::<RawTierConfig>(&doc.text);
        match (&doc.value, decoded) {
            (Some(expected), Ok(raw)) => {
                prop_assert_eq!(&doc_of(&raw), expected);
                let config = decode_and_validate(doc.text.as_bytes(), &randoms)?;
                check_against_rules(expected, config.as_ref())?;
            }
            (None, Err(_)) => {}
            (expected, got) => prop_assert!(
                false,
                "decoding {}: expected {:?}, got {:?}",
                doc.text.chars().take(2000).collect::<String>(),
                expected,
                got
            ),
        }
    }

    /// Any `RawTierConfig` (NaN and infinite prices, any cost, any name):
    /// `validate` follows the rules and what it accepts keeps the invariants.
    #[test]
    fn validate_follows_the_rules_for_any_raw_config(raw in raw_config(), randoms in randoms()) {
        let doc = doc_of(&raw);
        let result = TierConfig::validate(raw).ok();
        check_against_rules(&doc, result.as_ref())?;
        if let Some(config) = result {
            check_invariants(&config, &randoms)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024), randoms in randoms()) {
        decode_and_validate(&bytes, &randoms)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), randoms in randoms()) {
        decode_and_validate(text.as_bytes(), &randoms)?;
    }

    #[test]
    fn token_soup_never_panics(bytes in prop_oneof![token_soup(), mutated(token_soup())], randoms in randoms()) {
        decode_and_validate(&bytes, &randoms)?;
    }

    /// Valid-looking documents with a few bytes changed.
    #[test]
    fn mutated_documents_never_panic(
        bytes in mutated(document().prop_map(|d| d.text.into_bytes())),
        randoms in randoms(),
    ) {
        decode_and_validate(&bytes, &randoms)?;
    }
}

// --- crashes and failures found, kept as named tests ---

/// Found by `validate_follows_the_rules_for_any_raw_config`: a config
/// written as JSON (as the cache writes it to Redis) and read back had a
/// price one ulp off, 98.91816832999424 for 98.91816832999423: serde_json's
/// default float parsing is not correctly rounded, so a replica reading
/// Redis held a different config from the one that fetched it from Zion.
/// Fixed by serde_json's `float_roundtrip` feature (workspace Cargo.toml).
#[test]
fn regression_prices_survive_the_json_round_trip() {
    for price in [
        98.91816832999423,
        0.1 + 0.2,
        1.0 / 3.0,
        2.2250738585072014e-308,
        5e-324,
    ] {
        let raw = RawTierConfig {
            version: None,
            tiers: RawTiers {
                simple: Some(RawTier {
                    models: vec![RawModel {
                        provider: "openai".into(),
                        model: "m".into(),
                        relative_cost: 1,
                        pricing: Some(RawPricing {
                            input_per_mtok_usd: price,
                            output_per_mtok_usd: price,
                        }),
                        context_window: None,
                    }],
                }),
                ..Default::default()
            },
        };
        let config = TierConfig::validate(raw).unwrap();
        let json = serde_json::to_string(&config).unwrap();
        let back = TierConfig::validate(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back, config, "{price:e} came back different from {json}");
    }
}
