//! Differential privacy in an aggregation rule, and the privacy-budget ledger's messages
//! (docs/analysis.md, "Differential privacy"; docs/protocol.md, "Budget debits").
//!
//! - [`DpRule`]: the contract's DP settings for one analysis. ε values are exact decimals
//!   with at most 9 fractional digits, held as integer nano-ε ([`Epsilon`]), so the ledger
//!   adds and compares them exactly (no float drift can let a debit through). The canonical
//!   JSON (integers only) carries them as decimal strings.
//! - [`DpAccount`]: what the engine states about one DP answer (ε and δ it spent, its noise
//!   scales and the partition-selection threshold).
//! - [`DebitRequest`] / [`Debit`]: the TEE asks the key-release service to debit a query's ε
//!   from the analysis's budget before it seals the answer; the service answers with a
//!   [`Debit`] signed under [`crate::release::DEBIT_DOMAIN`], which the answer carries.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nano-ε per ε.
pub const NANOS: u64 = 1_000_000_000;
/// The largest ε a contract may state (per query or in total).
pub const MAX_EPSILON: u64 = 100 * NANOS;
/// The most rows one privacy unit may contribute to a DP query.
pub const MAX_ROWS_PER_UNIT: u32 = 10_000;
/// The largest δ a contract may state (δ is a failure probability; 1e-3 is already weak).
pub const MAX_DELTA: f64 = 1e-3;
/// The largest δ a whole budget may add up to (queries it allows × δ; basic composition).
pub const MAX_DELTA_TOTAL: f64 = 1e-3;

/// An ε, exactly: nano-ε (ε × 10⁹). Written as a decimal string in its shortest form
/// (`"0.5"`, `"4"`), which is also how it is serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epsilon(pub u64);

impl Epsilon {
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / NANOS as f64
    }

    /// Parse a decimal (`0.5`, `1`, `0.000000001`); at most 9 fractional digits.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected a decimal ε with at most 9 fractional digits");
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 9
            || (s.contains('.') && frac.is_empty())
        {
            return Err(bad());
        }
        let i: u64 = int.parse().map_err(|_| bad())?;
        let mut f: u64 = 0;
        for b in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
            f = f * 10 + u64::from(b - b'0');
        }
        i.checked_mul(NANOS)
            .and_then(|v| v.checked_add(f))
            .map(Epsilon)
            .ok_or_else(bad)
    }
}

impl fmt::Display for Epsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, frac) = (self.0 / NANOS, self.0 % NANOS);
        if frac == 0 {
            write!(f, "{i}")
        } else {
            let s = format!("{frac:09}");
            write!(f, "{i}.{}", s.trim_end_matches('0'))
        }
    }
}

impl Serialize for Epsilon {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Epsilon {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = canonical_text(d, "ε", "\"0.5\"")?;
        let e = Epsilon::parse(&s).map_err(serde::de::Error::custom)?;
        if e.to_string() != s {
            return Err(serde::de::Error::custom(format!(
                "ε {s:?}: write it as {:?} (the contract's canonical form)",
                e.to_string()
            )));
        }
        Ok(e)
    }
}

/// A string (the contract's canonical JSON has no floats, so ε and δ are decimal strings,
/// the same bytes in TOML, in JSON and in the digest).
fn canonical_text<'de, D: Deserializer<'de>>(
    d: D,
    what: &str,
    example: &str,
) -> Result<String, D::Error> {
    String::deserialize(d).map_err(|_: D::Error| {
        serde::de::Error::custom(format!(
            "write {what} as a decimal string, e.g. {example} (the contract's canonical JSON has no floats)"
        ))
    })
}

/// A δ (probability): written as a string in Rust's shortest exponent form (`"1e-6"`,
/// `"2.5e-7"`), which is also how it is serialized.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delta(pub f64);

impl PartialEq for Delta {
    fn eq(&self, o: &Self) -> bool {
        self.0.to_bits() == o.0.to_bits()
    }
}
impl Eq for Delta {}

impl Serialize for Delta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:e}", self.0))
    }
}

impl<'de> Deserialize<'de> for Delta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = canonical_text(d, "δ", "\"1e-6\"")?;
        let v = s
            .parse::<f64>()
            .map_err(|_| serde::de::Error::custom(format!("δ {s:?}: not a number")))?;
        if format!("{v:e}") != s {
            return Err(serde::de::Error::custom(format!(
                "δ {s:?}: write it as {:?} (the contract's canonical form)",
                format!("{v:e}")
            )));
        }
        Ok(Delta(v))
    }
}

/// Whose queries share a budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetScope {
    /// One budget for the analysis, whoever submits (AWS Clean Rooms' collaboration budget).
    #[default]
    Analysis,
    /// One budget per submitting party (Snowflake's per-consumer budgets).
    Party,
}

impl BudgetScope {
    fn is_default(&self) -> bool {
        *self == BudgetScope::Analysis
    }
}

/// Differential privacy for an aggregation rule. Each query spends at most
/// `epsilon_per_query` (split evenly between the released groups' selection and each noisy
/// aggregate) and `delta` (all on partition selection); the key-release service refuses the
/// debit that would take the analysis past `epsilon_total`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpRule {
    pub epsilon_per_query: Epsilon,
    pub epsilon_total: Epsilon,
    /// δ of one query (the partition selection's failure probability), 0 < δ ≤ 1e-3.
    pub delta: Delta,
    /// The rows one privacy unit contributes at most; extra rows are dropped at random
    /// (before grouping), so a unit touches at most this many groups.
    pub max_rows_per_unit: u32,
    /// `table.column` → `[lo, hi]`: every SUM and AVG argument's bounds; each row's value is
    /// clamped into them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clamp: BTreeMap<String, [i64; 2]>,
    /// Whose queries share the budget (default: the analysis's).
    #[serde(default, skip_serializing_if = "BudgetScope::is_default")]
    pub budget: BudgetScope,
}

impl DpRule {
    /// The rule's own consistency (columns are checked by `analysis::validate_analysis`):
    /// `(field, reason)` on failure.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let eps = |e: Epsilon| e.0 > 0 && e.0 <= MAX_EPSILON;
        if !eps(self.epsilon_per_query) {
            return Err((
                "epsilon_per_query",
                format!("{}: must be > 0 and at most 100", self.epsilon_per_query),
            ));
        }
        if !eps(self.epsilon_total) || self.epsilon_total < self.epsilon_per_query {
            return Err((
                "epsilon_total",
                format!(
                    "{}: must be at least epsilon_per_query ({}) and at most 100",
                    self.epsilon_total, self.epsilon_per_query
                ),
            ));
        }
        let d = self.delta.0;
        if !(d.is_finite() && d > 0.0 && d <= MAX_DELTA) {
            return Err(("delta", format!("{d}: must be > 0 and at most {MAX_DELTA}")));
        }
        // δ is not debited: bound what the whole budget can add up to instead.
        let queries = (self.epsilon_total.0 / self.epsilon_per_query.0) as f64;
        if queries * d > MAX_DELTA_TOTAL {
            return Err((
                "delta",
                format!(
                    "{d} × {queries} queries (epsilon_total / epsilon_per_query) = {:e}: at most {MAX_DELTA_TOTAL:e} over the budget",
                    queries * d
                ),
            ));
        }
        if !(1..=MAX_ROWS_PER_UNIT).contains(&self.max_rows_per_unit) {
            return Err((
                "max_rows_per_unit",
                format!(
                    "{}: must be 1 to {MAX_ROWS_PER_UNIT}",
                    self.max_rows_per_unit
                ),
            ));
        }
        for (c, [lo, hi]) in &self.clamp {
            if lo >= hi || lo.unsigned_abs().max(hi.unsigned_abs()) > (1 << 40) {
                return Err((
                    "clamp",
                    format!("{c}: [{lo}, {hi}] must have lo < hi, both within ±2^40"),
                ));
            }
        }
        Ok(())
    }
}

/// The engine's statement about one DP answer (printed before the CSV as a `#dcr-dp` line,
/// carried in the answer): what the query spent and how it was noised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpAccount {
    /// ε spent (≤ the rule's epsilon_per_query, by OpenDP's privacy maps).
    pub epsilon: f64,
    /// δ spent (0 when the query has no GROUP BY).
    pub delta: f64,
    /// Output column → the scale of the Laplace noise added to it (in the column's units).
    pub scales: BTreeMap<String, f64>,
    /// The noisy distinct-unit count a group needed to be released (none without GROUP BY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    /// The rows-per-unit bound used (the sensitivity's basis).
    pub max_rows_per_unit: u32,
}

/// The prefix of the engine's first output line for a DP answer.
pub const ACCOUNT_LINE: &str = "#dcr-dp ";

/// `POST /v1/contracts/{digest}/budget/debit` (upload token of the run's TEE): the body is a
/// `release::Signed` of this request under [`crate::release::DEBIT_REQUEST_DOMAIN`] with the
/// TEE's attested result key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitRequest {
    pub query_id: String,
    /// SHA-256 (hex) of the query document (`Query::digest`).
    pub query_sha256: String,
    pub analysis: String,
    pub party: String,
    /// Must equal the analysis's epsilon_per_query.
    pub epsilon: Epsilon,
}

/// The service's signed debit (payload of `release::Signed` under
/// [`crate::release::DEBIT_DOMAIN`]): the query's ε is journaled against the budget.
/// A repeated request for the same query id returns the same debit (no second spend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debit {
    pub contract_digest: String,
    pub analysis: String,
    /// The budget debited: `analysis` or `party:<id>`.
    pub budget: String,
    pub query_id: String,
    pub query_sha256: String,
    pub party: String,
    pub epsilon: Epsilon,
    /// The run that was debited: hex SHA-256 of its upload token. Another run asking to debit
    /// the same query is refused, so a query re-run (a dropped answer, a replayed list) never
    /// gets fresh noise for the same debit; the TEE checks that this is its own run.
    pub run: String,
    /// The budget's total spent after this debit (this debit included).
    pub spent: Epsilon,
    pub total: Epsilon,
    /// RFC 3339 UTC time of the debit.
    pub at: String,
}

/// The ledger key of a query's budget (`budget` field of [`Debit`]).
pub fn budget_name(scope: BudgetScope, party: &str) -> String {
    match scope {
        BudgetScope::Analysis => "analysis".into(),
        BudgetScope::Party => format!("party:{party}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_is_exact_decimal() {
        for (s, n) in [
            ("0.5", 500_000_000),
            ("1", NANOS),
            ("0.000000001", 1),
            ("2.25", 2_250_000_000),
        ] {
            let e = Epsilon::parse(s).unwrap();
            assert_eq!(e.0, n);
            assert_eq!(e.to_string(), s);
        }
        for bad in ["", ".5", "1.", "-1", "0.1234567891", "1e-3", "0x1", "1.5.5"] {
            assert!(Epsilon::parse(bad).is_err(), "{bad}");
        }
        // In a contract: the canonical decimal string only (no floats, no other spelling).
        let e: Epsilon = toml::from_str::<BTreeMap<String, Epsilon>>("e = \"0.1\"").unwrap()["e"];
        assert_eq!(e.0, 100_000_000);
        for bad in [
            "e = 0.1",
            "e = 1",
            "e = \"0.10\"",
            "e = \"01\"",
            "e = \"-0.5\"",
        ] {
            assert!(
                toml::from_str::<BTreeMap<String, Epsilon>>(bad).is_err(),
                "{bad}"
            );
        }
        // Ten ledger debits of 0.1 are exactly 1.
        assert_eq!((0..10).map(|_| e.0).sum::<u64>(), NANOS);
    }

    #[test]
    fn delta_round_trips_as_text() {
        let d: Delta = serde_json::from_str("\"1e-6\"").unwrap();
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(s, "\"1e-6\"");
        assert_eq!(serde_json::from_str::<Delta>(&s).unwrap(), d);
        for bad in ["1e-6", "\"0.000001\"", "\"1E-6\"", "\"x\""] {
            assert!(serde_json::from_str::<Delta>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rule_checks() {
        let ok = DpRule {
            epsilon_per_query: Epsilon(NANOS / 2),
            epsilon_total: Epsilon(2 * NANOS),
            delta: Delta(1e-6),
            max_rows_per_unit: 1,
            clamp: BTreeMap::new(),
            budget: BudgetScope::Analysis,
        };
        assert!(ok.validate().is_ok());
        let mut r = ok.clone();
        r.epsilon_total = Epsilon(NANOS / 4);
        assert_eq!(r.validate().unwrap_err().0, "epsilon_total");
        let mut r = ok.clone();
        r.delta = Delta(0.0);
        assert_eq!(r.validate().unwrap_err().0, "delta");
        let mut r = ok.clone();
        r.delta = Delta(f64::NAN);
        assert_eq!(r.validate().unwrap_err().0, "delta");
        let mut r = ok.clone();
        r.max_rows_per_unit = 0;
        assert_eq!(r.validate().unwrap_err().0, "max_rows_per_unit");
        let mut r = ok;
        r.clamp.insert("t.x".into(), [5, 5]);
        assert_eq!(r.validate().unwrap_err().0, "clamp");
    }
}
