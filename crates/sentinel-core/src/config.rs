//! The tier-config document served by Zion, and its validation.
//!
//! [`RawTierConfig`] is the wire shape of `GET /api/v1/tiers/config` (unknown
//! fields are ignored). [`TierConfig::validate`] turns it into an immutable,
//! ready-to-route snapshot, with each tier's selection weights computed once,
//! or says which field of which model is wrong.
//!
//! Rules: `provider` and `model` are non-empty, at most 256 characters and
//! free of control characters (the model name goes into a response header);
//! `relative_cost` is an integer in `1..=10`; prices are finite and not
//! negative; a `(provider, model)` pair appears at most once in a tier, and a
//! tier holds at most [`MAX_MODELS_PER_TIER`] models. A tier that is missing
//! or has no models is not an error: that tier is unroutable and the others
//! work.
//!
//! # Example
//!
//! ```
//! use sentinel_core::{RawTierConfig, Tier, TierConfig};
//!
//! let raw: RawTierConfig = serde_json::from_str(r#"{
//!   "version": "2026-02-01.1",
//!   "tiers": {
//!     "simple": { "models": [
//!       { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1,
//!         "pricing": { "input_per_mtok_usd": 0.15, "output_per_mtok_usd": 0.60 } }
//!     ] },
//!     "complex": { "models": [
//!       { "provider": "openai", "model": "o3", "relative_cost": 11 }
//!     ] }
//!   }
//! }"#)?;
//!
//! let err = TierConfig::validate(raw).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "tiers.complex.models[0] (openai/o3): relative_cost must be an integer in 1..=10, got 11"
//! );
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::choice::TierModels;
pub use crate::model::{ModelEntry, Pricing};
use crate::tier::Tier;

/// The most models one tier may hold.
pub const MAX_MODELS_PER_TIER: usize = 256;

const MAX_NAME_LEN: usize = 256;

/// The tier-config document as Zion serves it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawTierConfig {
    /// An opaque version label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The tiers. Required; any tier inside may be missing.
    pub tiers: RawTiers,
}

/// The three tiers of a [`RawTierConfig`]; unknown tier names are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawTiers {
    /// Models of the `simple` tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<RawTier>,
    /// Models of the `moderate` tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderate: Option<RawTier>,
    /// Models of the `complex` tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complex: Option<RawTier>,
}

impl RawTiers {
    /// The entry for `tier`, if the document has one.
    pub fn get(&self, tier: Tier) -> Option<&RawTier> {
        match tier {
            Tier::Simple => self.simple.as_ref(),
            Tier::Moderate => self.moderate.as_ref(),
            Tier::Complex => self.complex.as_ref(),
        }
    }

    fn slot(&mut self, tier: Tier) -> &mut Option<RawTier> {
        match tier {
            Tier::Simple => &mut self.simple,
            Tier::Moderate => &mut self.moderate,
            Tier::Complex => &mut self.complex,
        }
    }
}

/// One tier of a [`RawTierConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawTier {
    /// The models that may serve the tier.
    #[serde(default)]
    pub models: Vec<RawModel>,
}

/// One model of a [`RawTier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawModel {
    /// The provider that serves the model (`openai`, ...).
    pub provider: String,
    /// The upstream model name.
    pub model: String,
    /// Relative cost, an integer in `1..=10`; the selection weight is its
    /// inverse. A JSON number with no fraction (`3.0`) is read as that
    /// integer; `1.5` is an error.
    #[serde(deserialize_with = "integral")]
    pub relative_cost: i64,
    /// Token prices for cost reporting. Optional: without them no cost is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<RawPricing>,
    /// The model's context window in tokens. Optional: a context-length
    /// failure is retried on the model of the tier with the largest one.
    /// Anything but a whole number of at least 1 is read as absent (a hint,
    /// not a rule: it never fails the config).
    #[serde(
        default,
        deserialize_with = "lenient_window",
        skip_serializing_if = "Option::is_none"
    )]
    pub context_window: Option<u64>,
}

/// A context window: a whole number of at least 1 (`128000.0` too), else
/// `None`, whatever the JSON value.
fn lenient_window<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct Window;

    impl<'de> Visitor<'de> for Window {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a context window in tokens")
        }

        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok((v >= 1).then_some(v))
        }

        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(u64::try_from(v).ok().filter(|v| *v >= 1))
        }

        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            let whole = v.is_finite() && v.fract() == 0.0 && (1.0..=9.0e15).contains(&v);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(whole.then_some(v as u64))
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Window)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }

    deserializer.deserialize_any(Window)
}

/// Reads an integer, accepting a float with no fraction (some encoders
/// write `3.0` for 3).
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Integral;

    impl serde::de::Visitor<'_> for Integral {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            // Out of range values fail validation with the value shown.
            Ok(i64::try_from(v).unwrap_or(i64::MAX))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                Ok(v as i64)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }

    deserializer.deserialize_any(Integral)
}

/// Token prices of a [`RawModel`], in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RawPricing {
    /// Price of a million input (prompt) tokens.
    pub input_per_mtok_usd: f64,
    /// Price of a million output (completion) tokens.
    pub output_per_mtok_usd: f64,
}

/// An immutable, validated tier config: for each tier, its models and
/// precomputed selection weights. The default has no models at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierConfig {
    version: Option<Arc<str>>,
    tiers: [TierModels; 3],
}

impl TierConfig {
    /// Validates a raw document. The error names the tier, the model's
    /// position and name, and the field that breaks a rule.
    pub fn validate(raw: RawTierConfig) -> Result<TierConfig, ConfigError> {
        let mut tiers: [TierModels; 3] = Default::default();
        for tier in Tier::ALL {
            let Some(raw_tier) = raw.tiers.get(tier) else {
                continue;
            };
            if raw_tier.models.len() > MAX_MODELS_PER_TIER {
                return Err(ConfigError {
                    tier,
                    index: None,
                    name: None,
                    field: "models",
                    problem: format!(
                        "at most {MAX_MODELS_PER_TIER} models are allowed, got {}",
                        raw_tier.models.len()
                    ),
                });
            }
            let mut seen = HashSet::with_capacity(raw_tier.models.len());
            let mut models = Vec::with_capacity(raw_tier.models.len());
            for (index, m) in raw_tier.models.iter().enumerate() {
                let entry = validate_model(tier, index, m)?;
                if !seen.insert((entry.provider_arc().clone(), entry.model_arc().clone())) {
                    return Err(ConfigError::at(
                        tier,
                        index,
                        m,
                        "model",
                        "appears more than once in this tier".into(),
                    ));
                }
                models.push(entry);
            }
            tiers[tier.index()] = TierModels::new(models);
        }
        Ok(TierConfig {
            version: raw.version.map(Into::into),
            tiers,
        })
    }

    /// The version label Zion gave, if any.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The models of `tier` (empty when the tier is unroutable).
    pub fn tier(&self, tier: Tier) -> &TierModels {
        &self.tiers[tier.index()]
    }

    /// Every model of every tier, with its tier.
    pub fn models(&self) -> impl Iterator<Item = (Tier, &ModelEntry)> {
        Tier::ALL
            .into_iter()
            .flat_map(move |t| self.tier(t).models().iter().map(move |m| (t, m)))
    }

    /// The config without the models whose provider `keep` rejects, and the
    /// models that were dropped (for logging). Weights are recomputed.
    pub fn retain_providers(
        &self,
        mut keep: impl FnMut(&str) -> bool,
    ) -> (TierConfig, Vec<(Tier, ModelEntry)>) {
        let mut dropped = Vec::new();
        let mut tiers: [TierModels; 3] = Default::default();
        for tier in Tier::ALL {
            let mut models = Vec::new();
            for m in self.tier(tier).models() {
                if keep(m.provider()) {
                    models.push(m.clone());
                } else {
                    dropped.push((tier, m.clone()));
                }
            }
            tiers[tier.index()] = TierModels::new(models);
        }
        let config = TierConfig {
            version: self.version.clone(),
            tiers,
        };
        (config, dropped)
    }

    /// The document form of this config; validating it gives this config back.
    pub fn to_raw(&self) -> RawTierConfig {
        let mut tiers = RawTiers::default();
        for tier in Tier::ALL {
            let models = self.tier(tier).models();
            if models.is_empty() {
                continue;
            }
            *tiers.slot(tier) = Some(RawTier {
                models: models
                    .iter()
                    .map(|m| RawModel {
                        provider: m.provider().to_owned(),
                        model: m.model().to_owned(),
                        relative_cost: i64::from(m.relative_cost()),
                        pricing: m.pricing().map(|p| RawPricing {
                            input_per_mtok_usd: p.input_per_mtok_usd(),
                            output_per_mtok_usd: p.output_per_mtok_usd(),
                        }),
                        context_window: m.context_window(),
                    })
                    .collect(),
            });
        }
        RawTierConfig {
            version: self.version.as_deref().map(Into::into),
            tiers,
        }
    }
}

impl Serialize for TierConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_raw().serialize(serializer)
    }
}

fn validate_model(tier: Tier, index: usize, m: &RawModel) -> Result<ModelEntry, ConfigError> {
    let err = |field, problem: String| ConfigError::at(tier, index, m, field, problem);
    for (field, value) in [("provider", &m.provider), ("model", &m.model)] {
        if value.trim().is_empty() {
            return Err(err(field, "must not be empty".into()));
        }
        if value.chars().count() > MAX_NAME_LEN {
            return Err(err(
                field,
                format!("must be at most {MAX_NAME_LEN} characters"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(err(field, "must not contain control characters".into()));
        }
    }
    let relative_cost = match u8::try_from(m.relative_cost) {
        Ok(c @ 1..=10) => c,
        _ => {
            return Err(err(
                "relative_cost",
                format!("must be an integer in 1..=10, got {}", m.relative_cost),
            ));
        }
    };
    let pricing = match m.pricing {
        None => None,
        Some(p) => {
            for (field, value) in [
                ("pricing.input_per_mtok_usd", p.input_per_mtok_usd),
                ("pricing.output_per_mtok_usd", p.output_per_mtok_usd),
            ] {
                if !value.is_finite() || value < 0.0 {
                    return Err(err(
                        field,
                        format!("must be a finite number >= 0, got {value}"),
                    ));
                }
            }
            Some(Pricing::new(p.input_per_mtok_usd, p.output_per_mtok_usd))
        }
    };
    Ok(ModelEntry::new(
        m.provider.as_str().into(),
        m.model.as_str().into(),
        relative_cost,
        pricing,
        m.context_window.filter(|w| *w >= 1),
    ))
}

/// Why a tier-config document was rejected: which field of which model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    tier: Tier,
    index: Option<usize>,
    name: Option<String>,
    field: &'static str,
    problem: String,
}

impl ConfigError {
    fn at(tier: Tier, index: usize, m: &RawModel, field: &'static str, problem: String) -> Self {
        // Names come from outside: keep what we echo short and printable.
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        };
        ConfigError {
            tier,
            index: Some(index),
            name: Some(format!("{}/{}", clean(&m.provider), clean(&m.model))),
            field,
            problem,
        }
    }

    /// The tier holding the offending model.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The model's position in the tier's `models` array, when the error is about one model.
    pub fn index(&self) -> Option<usize> {
        self.index
    }

    /// The field that breaks a rule (`relative_cost`, `pricing.input_per_mtok_usd`, ...).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tiers.{}.models", self.tier)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        if self.index.is_some() {
            write!(f, ": {} {}", self.field, self.problem)
        } else {
            write!(f, ": {}", self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(provider: &str, model: &str, cost: i64) -> RawModel {
        RawModel {
            provider: provider.into(),
            model: model.into(),
            relative_cost: cost,
            pricing: Some(RawPricing {
                input_per_mtok_usd: 0.15,
                output_per_mtok_usd: 0.6,
            }),
            context_window: None,
        }
    }

    #[test]
    fn a_context_window_is_a_whole_number_or_nothing() {
        let read = |window: &str| {
            let doc = format!(
                r#"{{"tiers":{{"simple":{{"models":[{{"provider":"p","model":"m","relative_cost":1,"context_window":{window}}}]}}}}}}"#
            );
            let raw: RawTierConfig = serde_json::from_str(&doc).expect("a document");
            let config = TierConfig::validate(raw).expect("valid");
            config.tier(Tier::Simple).models()[0].context_window()
        };
        assert_eq!(read("128000"), Some(128_000));
        assert_eq!(read("200000.0"), Some(200_000));
        for ignored in [
            "0",
            "-5",
            "1.5",
            "1e300",
            "\"128000\"",
            "null",
            "true",
            "[1e400]",
            "{\"n\":1}",
        ] {
            assert_eq!(read(ignored), None, "{ignored}");
        }
        // A string that is not Unicode, or a number no float holds, is not
        // JSON Sentinel reads: the document is refused.
        for unreadable in ["\"\\ud800\"", "1e400"] {
            let doc = format!(
                r#"{{"tiers":{{"simple":{{"models":[{{"provider":"p","model":"m","relative_cost":1,"context_window":{unreadable}}}]}}}}}}"#
            );
            assert!(
                serde_json::from_str::<RawTierConfig>(&doc).is_err(),
                "{unreadable}"
            );
        }
    }

    fn with_simple(models: Vec<RawModel>) -> RawTierConfig {
        RawTierConfig {
            version: None,
            tiers: RawTiers {
                simple: Some(RawTier { models }),
                ..Default::default()
            },
        }
    }

    fn error_of(models: Vec<RawModel>) -> ConfigError {
        TierConfig::validate(with_simple(models)).unwrap_err()
    }

    #[test]
    fn parses_the_zion_contract_and_ignores_unknown_fields() {
        let raw: RawTierConfig = serde_json::from_str(
            r#"{
              "version": "2026-02-01.1",
              "generated_by": "zion",
              "tiers": {
                "simple":   { "models": [ { "provider": "openai", "model": "gpt-4o-mini",
                    "relative_cost": 1, "region": "eu",
                    "pricing": { "input_per_mtok_usd": 0.15, "output_per_mtok_usd": 0.60, "currency": "usd" } } ] },
                "moderate": { "models": [ { "provider": "openai", "model": "gpt-4o", "relative_cost": 4 } ] },
                "complex":  { "models": [], "note": "none yet" },
                "ultra":    { "models": [ { "provider": "x", "model": "y", "relative_cost": 1 } ] }
              }
            }"#,
        )
        .unwrap();
        let config = TierConfig::validate(raw).unwrap();
        assert_eq!(config.version(), Some("2026-02-01.1"));
        let simple = config.tier(Tier::Simple).models();
        assert_eq!(simple.len(), 1);
        assert!(simple[0].is("openai", "gpt-4o-mini"));
        assert_eq!(simple[0].relative_cost(), 1);
        let p = simple[0].pricing().unwrap();
        assert_eq!(p.input_per_mtok_usd(), 0.15);
        assert_eq!(p.output_per_mtok_usd(), 0.60);
        assert_eq!(config.tier(Tier::Moderate).models()[0].pricing(), None);
        assert!(config.tier(Tier::Complex).is_empty());
        assert_eq!(config.models().count(), 2);
    }

    #[test]
    fn relative_cost_accepts_integral_floats_only() {
        let parse = |cost: &str| {
            serde_json::from_str::<RawModel>(&format!(
                r#"{{"provider":"p","model":"m","relative_cost":{cost}}}"#
            ))
        };
        assert_eq!(parse("3").unwrap().relative_cost, 3);
        assert_eq!(parse("3.0").unwrap().relative_cost, 3);
        assert!(parse("1.5").is_err());
        assert!(parse("\"3\"").is_err());
        assert_eq!(
            parse("18446744073709551615").unwrap().relative_cost,
            i64::MAX
        );
    }

    #[test]
    fn tiers_object_is_required() {
        assert!(serde_json::from_str::<RawTierConfig>(r#"{"version":"1"}"#).is_err());
        assert!(serde_json::from_str::<RawTierConfig>(r#"{"tiers":{}}"#).is_ok());
    }

    #[test]
    fn missing_or_empty_tiers_only_make_that_tier_unroutable() {
        let config = TierConfig::validate(with_simple(vec![])).unwrap();
        for t in Tier::ALL {
            assert!(config.tier(t).is_empty());
        }
        let config = TierConfig::validate(with_simple(vec![model("openai", "a", 1)])).unwrap();
        assert!(!config.tier(Tier::Simple).is_empty());
        assert!(config.tier(Tier::Moderate).is_empty());
    }

    #[test]
    fn relative_cost_must_be_in_1_to_10() {
        for bad in [0, -1, 11, 255, 256, i64::MAX, i64::MIN] {
            let err = error_of(vec![model("openai", "a", 1), model("openai", "b", bad)]);
            assert_eq!(err.tier(), Tier::Simple);
            assert_eq!(err.index(), Some(1));
            assert_eq!(err.field(), "relative_cost");
            assert!(err.to_string().contains("(openai/b)"), "{err}");
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
        for good in 1..=10 {
            assert!(TierConfig::validate(with_simple(vec![model("openai", "a", good)])).is_ok());
        }
    }

    #[test]
    fn prices_must_be_finite_and_not_negative() {
        for (bad, field) in [
            (-0.01, "pricing.input_per_mtok_usd"),
            (f64::NAN, "pricing.input_per_mtok_usd"),
            (f64::INFINITY, "pricing.input_per_mtok_usd"),
        ] {
            let mut m = model("openai", "a", 1);
            m.pricing = Some(RawPricing {
                input_per_mtok_usd: bad,
                output_per_mtok_usd: 1.0,
            });
            assert_eq!(error_of(vec![m]).field(), field);
        }
        let mut m = model("openai", "a", 1);
        m.pricing = Some(RawPricing {
            input_per_mtok_usd: 0.0,
            output_per_mtok_usd: -3.0,
        });
        let err = error_of(vec![m]);
        assert_eq!(err.field(), "pricing.output_per_mtok_usd");
        assert!(err.to_string().contains("-3"), "{err}");
    }

    #[test]
    fn names_must_be_non_empty_short_and_printable() {
        assert_eq!(error_of(vec![model("", "a", 1)]).field(), "provider");
        assert_eq!(error_of(vec![model("  ", "a", 1)]).field(), "provider");
        assert_eq!(error_of(vec![model("openai", "", 1)]).field(), "model");
        assert_eq!(error_of(vec![model("openai", "a\nb", 1)]).field(), "model");
        assert_eq!(
            error_of(vec![model("openai", &"m".repeat(257), 1)]).field(),
            "model"
        );
        let err = error_of(vec![model("openai", "", 1)]);
        assert_eq!(
            err.to_string(),
            "tiers.simple.models[0] (openai/): model must not be empty"
        );
    }

    #[test]
    fn duplicate_model_in_a_tier_is_rejected_but_not_across_tiers() {
        let err = error_of(vec![
            model("openai", "a", 1),
            model("azure", "a", 2),
            model("openai", "a", 3),
        ]);
        assert_eq!(err.index(), Some(2));
        assert_eq!(err.field(), "model");
        assert!(err.to_string().contains("more than once"), "{err}");

        let mut raw = with_simple(vec![model("openai", "a", 1)]);
        raw.tiers.moderate = Some(RawTier {
            models: vec![model("openai", "a", 1)],
        });
        assert!(TierConfig::validate(raw).is_ok());
    }

    #[test]
    fn too_many_models_in_a_tier_is_rejected() {
        let models = (0..=MAX_MODELS_PER_TIER)
            .map(|i| model("openai", &format!("m{i}"), 1))
            .collect();
        let err = error_of(models);
        assert_eq!(err.field(), "models");
        assert_eq!(err.index(), None);
    }

    #[test]
    fn validated_config_round_trips_through_its_document() {
        let mut raw = with_simple(vec![model("openai", "a", 1), model("openai", "b", 7)]);
        raw.version = Some("v9".into());
        raw.tiers.complex = Some(RawTier {
            models: vec![RawModel {
                pricing: None,
                ..model("other", "c", 10)
            }],
        });
        let config = TierConfig::validate(raw.clone()).unwrap();
        assert_eq!(config.to_raw(), raw);
        let json = serde_json::to_string(&config).unwrap();
        let back: RawTierConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(TierConfig::validate(back).unwrap(), config);
    }

    #[test]
    fn retain_providers_drops_unknown_providers_only() {
        let raw = with_simple(vec![model("openai", "a", 1), model("mystery", "b", 1)]);
        let config = TierConfig::validate(raw).unwrap();
        let (kept, dropped) = config.retain_providers(|p| p == "openai");
        assert_eq!(kept.tier(Tier::Simple).len(), 1);
        assert!(kept.tier(Tier::Simple).models()[0].is("openai", "a"));
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].0, Tier::Simple);
        assert!(dropped[0].1.is("mystery", "b"));
    }

    #[test]
    fn pricing_computes_cost() {
        let p = Pricing::new(0.15, 0.60);
        let cost = p.cost_usd(1_000_000, 500_000);
        assert!((cost - 0.45).abs() < 1e-12, "{cost}");
        assert_eq!(p.cost_usd(0, 0), 0.0);
    }
}
