//! The complexity tiers a client asks for.
//!
//! Tiers are ordered `simple < moderate < complex`; the order is what the
//! session rule uses to tell an upgrade from a downgrade. They parse from,
//! print as and serialize to their lowercase names, and the default is
//! [`Tier::Simple`].
//!
//! # Example
//!
//! ```
//! use sentinel_core::Tier;
//!
//! let tier: Tier = "moderate".parse()?;
//! assert!(tier > Tier::Simple && tier < Tier::Complex);
//! assert_eq!(tier.to_string(), "moderate");
//! assert_eq!(Tier::default(), Tier::Simple);
//!
//! let err = "huge".parse::<Tier>().unwrap_err();
//! assert_eq!(err.to_string(), "unknown tier `huge`: expected one of simple, moderate, complex");
//! # Ok::<(), sentinel_core::UnknownTier>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A complexity tier. Ordered: `Simple < Moderate < Complex`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Cheap, fast models for simple requests. The default.
    #[default]
    Simple,
    /// Mid-range models.
    Moderate,
    /// The strongest models.
    Complex,
}

impl Tier {
    /// Every tier, in ascending order.
    pub const ALL: [Tier; 3] = [Tier::Simple, Tier::Moderate, Tier::Complex];

    /// The lowercase name of the tier, as clients write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Simple => "simple",
            Tier::Moderate => "moderate",
            Tier::Complex => "complex",
        }
    }

    /// The tier's position in [`Tier::ALL`] (0, 1 or 2).
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier { name: s.into() })
    }
}

/// A name that is not a tier. Its message lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTier {
    name: String,
}

impl UnknownTier {
    /// The name that was given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for UnknownTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Client input: cap what we echo so an error never grows with the input.
        let name: String = self.name.chars().take(64).collect();
        write!(f, "unknown tier `{name}`: expected one of ")?;
        for (i, t) in Tier::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(t.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownTier {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_simple_moderate_complex() {
        assert!(Tier::Simple < Tier::Moderate);
        assert!(Tier::Moderate < Tier::Complex);
        let mut v = vec![Tier::Complex, Tier::Simple, Tier::Moderate];
        v.sort();
        assert_eq!(v, Tier::ALL);
    }

    #[test]
    fn names_round_trip_through_fromstr_display_and_serde() {
        for t in Tier::ALL {
            assert_eq!(t.to_string().parse::<Tier>(), Ok(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), t);
        }
    }

    #[test]
    fn unknown_names_are_typed_errors_listing_valid_names() {
        for bad in ["", "Simple", "SIMPLE", "medium", " simple"] {
            let err = bad.parse::<Tier>().unwrap_err();
            assert_eq!(err.name(), bad);
            let msg = err.to_string();
            assert!(msg.contains("simple, moderate, complex"), "{msg}");
        }
        assert!(serde_json::from_str::<Tier>("\"huge\"").is_err());
    }

    #[test]
    fn long_unknown_names_are_truncated_in_the_message() {
        let err = "x".repeat(10_000).parse::<Tier>().unwrap_err();
        assert!(err.to_string().len() < 200);
    }

    #[test]
    fn default_is_simple() {
        assert_eq!(Tier::default(), Tier::Simple);
    }
}
