//! Tables and analysis rules in the contract (docs/analysis.md): what the SQL engine may read
//! and which queries it may run. Data only; the engine (`dcr-sql`) enforces it on the
//! logical plan.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A dataset's table: its SQL name, file format and columns, and the column that identifies
/// a person (the privacy unit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// The SQL table name: 1-63 of `[a-z0-9_]`, starting with a letter.
    pub name: String,
    pub format: TableFormat,
    /// The column that identifies a person (e.g. the hashed user id). It may be joined on and
    /// counted distinct; it is never selected, grouped by, filtered on or fed to a function.
    /// A row whose privacy unit is empty (null) is refused when the table is loaded.
    pub privacy_unit: String,
    /// Every column, in file order (a CSV header must be exactly these names).
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// RFC 4180 CSV, UTF-8, a header line.
    Csv,
    /// Apache Parquet (uncompressed, Snappy, gzip or LZ4 pages).
    Parquet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text (Arrow Utf8).
    String,
    /// Signed 64-bit integer.
    Int64,
    /// IEEE 754 double.
    Float64,
    Boolean,
    /// A calendar date, `YYYY-MM-DD` (Arrow Date32).
    Date,
}

/// One agreed analysis: who may submit queries under it, who receives their results, and
/// the rule every query must satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// 1-64 of `[A-Za-z0-9._-]`, unique in the contract.
    pub name: String,
    /// Party ids allowed to submit queries under this analysis.
    pub submitters: Vec<String>,
    /// Party ids that receive each result. Empty: the submitter only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    pub rule: Rule,
}

/// The three rule kinds (after AWS Clean Rooms' aggregation and list rules and Snowflake's
/// templates; docs/analysis.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Aggregation(AggregationRule),
    List(ListRule),
    Template(TemplateRule),
}

impl Analysis {
    /// The DP section of an aggregation rule, if it has one.
    pub fn rule_dp(&self) -> Option<&crate::dp::DpRule> {
        match &self.rule {
            Rule::Aggregation(r) => r.dp.as_ref(),
            _ => None,
        }
    }
}

impl Rule {
    pub fn kind(&self) -> &'static str {
        match self {
            Rule::Aggregation(_) => "aggregation",
            Rule::List(_) => "list",
            Rule::Template(_) => "template",
        }
    }
}

/// Free SQL that aggregates: every output row aggregates at least `min_distinct_units`
/// distinct privacy units of every table the query reads (enforced by the engine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationRule {
    /// k: groups with fewer distinct privacy units (of any table read) are dropped.
    pub min_distinct_units: u64,
    /// `table.column`s usable in INNER JOIN … ON equalities (and as COUNT DISTINCT
    /// arguments when listed in `aggregates`); never output, grouped or filtered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join_columns: Vec<String>,
    /// `table.column`s that may be selected, grouped by and filtered on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<String>,
    /// Which aggregate may take which column (bare column arguments only).
    pub aggregates: Vec<AggregateAllowance>,
    /// Scalar functions allowed on dimensions and on aggregate results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scalar_functions: Vec<ScalarFunction>,
    /// Differential privacy (docs/analysis.md): noisy aggregates, groups released by noisy
    /// partition selection (whose threshold is at least `min_distinct_units`), and a budget
    /// the key-release service debits. Absent: exact aggregates under the k threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<crate::dp::DpRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateAllowance {
    pub function: AggregateFunction,
    /// `table.column`s it may take.
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFunction {
    Count,
    CountDistinct,
    Sum,
    SumDistinct,
    Avg,
}

impl AggregateFunction {
    pub fn name(self) -> &'static str {
        match self {
            AggregateFunction::Count => "count",
            AggregateFunction::CountDistinct => "count_distinct",
            AggregateFunction::Sum => "sum",
            AggregateFunction::SumDistinct => "sum_distinct",
            AggregateFunction::Avg => "avg",
        }
    }
}

/// The scalar functions a rule may allow (a subset of AWS Clean Rooms' list; each is
/// registered in the engine only when allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalarFunction {
    Abs,
    Ceil,
    Floor,
    Round,
    Lower,
    Upper,
    Trim,
}

impl ScalarFunction {
    pub fn name(self) -> &'static str {
        match self {
            ScalarFunction::Abs => "abs",
            ScalarFunction::Ceil => "ceil",
            ScalarFunction::Floor => "floor",
            ScalarFunction::Round => "round",
            ScalarFunction::Lower => "lower",
            ScalarFunction::Upper => "upper",
            ScalarFunction::Trim => "btrim",
        }
    }
}

/// Row-level overlap: `SELECT [DISTINCT] list columns FROM a JOIN b ON keys [WHERE …]
/// [LIMIT n]`, with at least one join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRule {
    /// `table.column`s usable in INNER JOIN … ON equalities; never output.
    pub join_columns: Vec<String>,
    /// `table.column`s that may be output and filtered on.
    pub list_columns: Vec<String>,
}

/// Named SQL agreed by every party, with typed parameters (`$name` in the SQL). The
/// threshold applies to its aggregate like under an aggregation rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRule {
    pub sql: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParameterType>,
    /// k for the template's aggregate (0: the template does not aggregate; then it may only
    /// be a list of agreed columns — the parties agreed the SQL itself).
    pub min_distinct_units: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    String,
    Int64,
    Float64,
    Boolean,
    Date,
}

/// The largest k a rule may ask for (AWS allows 2..=100000).
pub const MAX_MIN_DISTINCT_UNITS: u64 = 100_000;

/// A table or column name: 1-63 of `[a-z0-9_]`, starting with a letter (SQL folds unquoted
/// identifiers to lower case).
pub fn sql_ident_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Check a table on its own; `at` names it in errors (`datasets[i].table`).
pub fn validate_table(t: &Table, at: &str) -> Result<(), (String, String)> {
    if !sql_ident_ok(&t.name) {
        return Err((
            format!("{at}.name"),
            "must be 1-63 of [a-z0-9_], starting with a letter".into(),
        ));
    }
    if t.columns.is_empty() {
        return Err((format!("{at}.columns"), "at least one column".into()));
    }
    let mut seen = BTreeSet::new();
    for (i, c) in t.columns.iter().enumerate() {
        if !sql_ident_ok(&c.name) || !seen.insert(c.name.as_str()) {
            return Err((
                format!("{at}.columns[{i}].name"),
                "empty, malformed (1-63 of [a-z0-9_], starting with a letter) or duplicate".into(),
            ));
        }
    }
    if !seen.contains(t.privacy_unit.as_str()) {
        return Err((
            format!("{at}.privacy_unit"),
            format!("{:?} is not one of the table's columns", t.privacy_unit),
        ));
    }
    Ok(())
}

/// What a `table.column` names, for the checks below.
pub struct Catalog<'a> {
    pub tables: Vec<(&'a Table, &'a str)>,
}

impl<'a> Catalog<'a> {
    /// The table named `name` and its owner.
    pub fn table(&self, name: &str) -> Option<&'a Table> {
        self.tables
            .iter()
            .find(|(t, _)| t.name == name)
            .map(|t| t.0)
    }

    /// Resolve `table.column`.
    pub fn column(&self, qualified: &str) -> Result<(&'a Table, &'a Column), String> {
        let (t, c) = qualified
            .split_once('.')
            .ok_or_else(|| format!("{qualified:?}: expected table.column"))?;
        let table = self
            .table(t)
            .ok_or_else(|| format!("{qualified:?}: no table {t:?} in the contract"))?;
        let column = table
            .columns
            .iter()
            .find(|x| x.name == c)
            .ok_or_else(|| format!("{qualified:?}: table {t} has no column {c:?}"))?;
        Ok((table, column))
    }
}

/// Check an analysis against the contract's tables and parties; `at` names it in errors.
pub fn validate_analysis(
    a: &Analysis,
    at: &str,
    catalog: &Catalog,
    parties: &BTreeSet<&str>,
) -> Result<(), (String, String)> {
    let err = |f: &str, why: String| Err((format!("{at}.{f}"), why));
    if a.submitters.is_empty() {
        return err("submitters", "at least one party".into());
    }
    for (list, name) in [(&a.submitters, "submitters"), (&a.recipients, "recipients")] {
        let mut seen = BTreeSet::new();
        for (i, p) in list.iter().enumerate() {
            if !parties.contains(p.as_str()) {
                return err(&format!("{name}[{i}]"), format!("{p:?} is not a party"));
            }
            if !seen.insert(p) {
                return err(&format!("{name}[{i}]"), format!("{p:?} is listed twice"));
            }
        }
    }
    let columns = |list: &[String], name: &str| -> Result<(), (String, String)> {
        let mut seen = BTreeSet::new();
        for (i, q) in list.iter().enumerate() {
            catalog
                .column(q)
                .map_err(|why| (format!("{at}.rule.{name}[{i}]"), why))?;
            if !seen.insert(q) {
                return Err((format!("{at}.rule.{name}[{i}]"), format!("{q:?} twice")));
            }
        }
        Ok(())
    };
    // Output columns never include a privacy unit.
    let not_unit = |list: &[String], name: &str| -> Result<(), (String, String)> {
        for (i, q) in list.iter().enumerate() {
            let (t, c) = catalog
                .column(q)
                .map_err(|w| (format!("{at}.rule.{name}[{i}]"), w))?;
            if t.privacy_unit == c.name {
                return Err((
                    format!("{at}.rule.{name}[{i}]"),
                    format!("{q} is table {}'s privacy unit: it may only be joined on or counted distinct", t.name),
                ));
            }
        }
        Ok(())
    };
    let k_ok = |k: u64| (2..=MAX_MIN_DISTINCT_UNITS).contains(&k);
    match &a.rule {
        Rule::Aggregation(r) => {
            if !k_ok(r.min_distinct_units) {
                return err(
                    "rule.min_distinct_units",
                    format!(
                        "{}: must be 2 to {MAX_MIN_DISTINCT_UNITS}",
                        r.min_distinct_units
                    ),
                );
            }
            columns(&r.join_columns, "join_columns")?;
            columns(&r.dimensions, "dimensions")?;
            not_unit(&r.dimensions, "dimensions")?;
            if let Some(q) = r.dimensions.iter().find(|d| r.join_columns.contains(d)) {
                return err(
                    "rule.dimensions",
                    format!("{q} is also a join column (join columns are never output)"),
                );
            }
            if r.aggregates.is_empty() {
                return err("rule.aggregates", "at least one aggregate".into());
            }
            let mut fns = BTreeSet::new();
            for (i, g) in r.aggregates.iter().enumerate() {
                if !fns.insert(g.function) {
                    return err(
                        &format!("rule.aggregates[{i}].function"),
                        format!("{} listed twice", g.function.name()),
                    );
                }
                columns(&g.columns, &format!("aggregates[{i}].columns"))?;
                if g.columns.is_empty() {
                    return err(
                        &format!("rule.aggregates[{i}].columns"),
                        "at least one column".into(),
                    );
                }
                if g.function != AggregateFunction::CountDistinct {
                    not_unit(&g.columns, &format!("aggregates[{i}].columns"))?;
                }
            }
            let mut seen = BTreeSet::new();
            for (i, f) in r.scalar_functions.iter().enumerate() {
                if !seen.insert(f) {
                    return err(
                        &format!("rule.scalar_functions[{i}]"),
                        "listed twice".into(),
                    );
                }
            }
            if let Some(dp) = &r.dp {
                validate_dp(r, dp, catalog)
                    .map_err(|(f, why)| (format!("{at}.rule.dp.{f}"), why))?;
            }
        }
        Rule::List(r) => {
            if r.join_columns.is_empty() {
                return err("rule.join_columns", "a list rule needs join columns".into());
            }
            columns(&r.join_columns, "join_columns")?;
            columns(&r.list_columns, "list_columns")?;
            not_unit(&r.list_columns, "list_columns")?;
            if r.list_columns.is_empty() {
                return err("rule.list_columns", "at least one column".into());
            }
            if let Some(q) = r.list_columns.iter().find(|d| r.join_columns.contains(d)) {
                return err(
                    "rule.list_columns",
                    format!("{q} is also a join column (join columns are never output)"),
                );
            }
        }
        Rule::Template(r) => {
            if r.sql.trim().is_empty() || r.sql.len() > 16 * 1024 {
                return err("rule.sql", "1 to 16384 bytes of SQL".into());
            }
            if r.min_distinct_units != 0 && !k_ok(r.min_distinct_units) {
                return err(
                    "rule.min_distinct_units",
                    format!(
                        "{}: must be 0 (no aggregate) or 2 to {MAX_MIN_DISTINCT_UNITS}",
                        r.min_distinct_units
                    ),
                );
            }
            for p in r.parameters.keys() {
                if !sql_ident_ok(p) {
                    return err(
                        &format!("rule.parameters.{p}"),
                        "a parameter name is 1-63 of [a-z0-9_], starting with a letter".into(),
                    );
                }
            }
        }
    }
    Ok(())
}

/// A DP rule against its aggregation rule: the aggregates DP can bound (COUNT, COUNT
/// DISTINCT of a privacy unit, SUM and AVG of clamped columns), and clamp bounds for exactly
/// the SUM/AVG columns, numeric ones.
fn validate_dp(
    r: &AggregationRule,
    dp: &crate::dp::DpRule,
    catalog: &Catalog,
) -> Result<(), (String, String)> {
    dp.validate().map_err(|(f, why)| (f.to_string(), why))?;
    let mut need = BTreeSet::new();
    for g in &r.aggregates {
        match g.function {
            AggregateFunction::Count => {}
            AggregateFunction::CountDistinct => {
                for c in &g.columns {
                    let (t, col) = catalog.column(c).map_err(|w| ("aggregates".to_string(), w))?;
                    if t.privacy_unit != col.name {
                        return Err((
                            "aggregates".into(),
                            format!("count_distinct({c}): under DP only a privacy unit may be counted distinct"),
                        ));
                    }
                }
            }
            AggregateFunction::SumDistinct => {
                return Err((
                    "aggregates".into(),
                    "sum_distinct has no bounded sensitivity; DP allows count, count_distinct (privacy units), sum and avg".into(),
                ))
            }
            AggregateFunction::Sum | AggregateFunction::Avg => need.extend(g.columns.iter()),
        }
    }
    for c in &need {
        let (_, col) = catalog.column(c).map_err(|w| ("clamp".to_string(), w))?;
        if !matches!(col.ty, ColumnType::Int64 | ColumnType::Float64) {
            return Err(("clamp".into(), format!("{c} is not numeric")));
        }
        if !dp.clamp.contains_key(*c) {
            return Err((
                "clamp".into(),
                format!("{c} is summed or averaged: it needs bounds [lo, hi]"),
            ));
        }
    }
    if let Some(c) = dp.clamp.keys().find(|c| !need.contains(c)) {
        return Err((
            "clamp".into(),
            format!("{c} is not a sum or avg column of the rule"),
        ));
    }
    Ok(())
}

/// A parameter value for a template, typed by the template's declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParameterValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl ParameterValue {
    /// Whether this JSON value has the declared type (no coercion: `"5"` is not an int64).
    pub fn fits(&self, ty: ParameterType) -> bool {
        match (self, ty) {
            (ParameterValue::Text(_), ParameterType::String) => true,
            (ParameterValue::Text(s), ParameterType::Date) => crate::time::parse_date(s).is_some(),
            (ParameterValue::Int(_), ParameterType::Int64) => true,
            (ParameterValue::Int(_) | ParameterValue::Float(_), ParameterType::Float64) => true,
            (ParameterValue::Bool(_), ParameterType::Boolean) => true,
            _ => false,
        }
    }
}

/// The longest query text a party may submit (bytes).
pub const MAX_QUERY_SQL: usize = 16 * 1024;
/// The largest query document ([`Query::to_json`], escapes included): bounds what the service
/// stores and the signed list the guest reads (64 of these).
pub const MAX_QUERY_JSON: usize = 24 * 1024;

/// A query a party submits under an analysis: `dcr-attest query submit` sends it, the service
/// stores it bound to the contract and the party its token names, and the guest hands it to
/// the SQL engine. Exactly one of `sql` (aggregation and list rules) or `parameters`
/// (templates; may be empty) is meaningful for the analysis's rule; the engine refuses the
/// other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The analysis's name in the contract.
    pub analysis: String,
    /// Who submitted it (the service sets it from the party's token, never from the body).
    pub party: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParameterValue>,
}

/// Why a query document was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("not a query document: {0}")]
    Json(String),
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
}

impl Query {
    /// Parse and check a query document (size, names; the rule is the engine's job).
    pub fn from_json(bytes: &[u8]) -> Result<Self, QueryError> {
        let q: Query =
            serde_json::from_slice(bytes).map_err(|e| QueryError::Json(e.to_string()))?;
        q.validate()?;
        Ok(q)
    }

    /// The document's canonical bytes: serde_json of the typed query (fields in declaration
    /// order, parameters sorted). The submitter, the service and the guest all hash these.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a query serializes")
    }

    /// SHA-256 of [`Query::to_json`]: what an answer's `sha256=` names.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.to_json()).into()
    }

    pub fn validate(&self) -> Result<(), QueryError> {
        for (field, v) in [("analysis", &self.analysis), ("party", &self.party)] {
            if !crate::contract::id_ok(v) {
                return Err(QueryError::Field {
                    field,
                    reason: format!("{v:?} is not a name (1-64 of [A-Za-z0-9._-])"),
                });
            }
        }
        if let Some(sql) = &self.sql {
            if sql.len() > MAX_QUERY_SQL {
                return Err(QueryError::Field {
                    field: "sql",
                    reason: format!("{} bytes; at most {MAX_QUERY_SQL}", sql.len()),
                });
            }
            if !self.parameters.is_empty() {
                return Err(QueryError::Field {
                    field: "parameters",
                    reason: "a query has SQL or template parameters, not both".into(),
                });
            }
        }
        for (k, v) in &self.parameters {
            if !sql_ident_ok(k) {
                return Err(QueryError::Field {
                    field: "parameters",
                    reason: format!("{k:?} is not a parameter name"),
                });
            }
            if let ParameterValue::Text(s) = v {
                if s.len() > 4096 {
                    return Err(QueryError::Field {
                        field: "parameters",
                        reason: format!("{k}: longer than 4096 bytes"),
                    });
                }
            }
        }
        if self.parameters.len() > 64 {
            return Err(QueryError::Field {
                field: "parameters",
                reason: "more than 64".into(),
            });
        }
        let control = |s: &str, tabs: bool| {
            s.chars()
                .any(|c| c.is_control() && !(tabs && matches!(c, '\n' | '\r' | '\t')))
        };
        if self.sql.as_deref().is_some_and(|s| control(s, true)) {
            return Err(QueryError::Field {
                field: "sql",
                reason: "control characters other than tab and line ends".into(),
            });
        }
        if let Some((k, _)) = self
            .parameters
            .iter()
            .find(|(_, v)| matches!(v, ParameterValue::Text(t) if control(t, false)))
        {
            return Err(QueryError::Field {
                field: "parameters",
                reason: format!("{k}: control characters"),
            });
        }
        let n = self.to_json().len();
        if n > MAX_QUERY_JSON {
            return Err(QueryError::Field {
                field: "query",
                reason: format!("the document is {n} bytes as JSON; at most {MAX_QUERY_JSON}"),
            });
        }
        Ok(())
    }
}

/// What a query's result blob holds once opened (sealed to the analysis's recipients, signed
/// by the TEE like a run's output): a header line naming the query, the query document the TEE
/// ran (so every recipient sees what was asked, not only the submitter), then the rows or the
/// refusal.
///
/// ```text
/// dcr-answer/1 ok query=<id> analysis=<name> party=<id> sha256=<hex of the query JSON>\n
/// <the query JSON, Query::to_json, one line>\n
/// <CSV>            (ok)  |  <one line>\n   (refused)
/// ```
///
/// A DP answer has status `dp` and two more lines before its CSV: the engine's account
/// (`dp::DpAccount`, JSON) and the service's signed debit (`release::Signed` over a
/// `dp::Debit`, JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub query_id: String,
    /// The query document the TEE ran.
    pub query: Query,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The result, CSV with a header line.
    Rows(Vec<u8>),
    /// A DP result: what it spent, the service's signed debit of it, the noisy CSV.
    Dp {
        account: crate::dp::DpAccount,
        debit: crate::release::Signed,
        csv: Vec<u8>,
    },
    /// Refused before anything ran: one line naming the analysis and its rule.
    Refused(String),
}

const ANSWER_MAGIC: &str = "dcr-answer/1";

/// A refusal as one line of printable text (newlines and other control characters, which
/// could reach a recipient's terminal, become spaces).
pub fn one_line(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        let (status, body) = match &self.outcome {
            Outcome::Rows(csv) => ("ok", csv.clone()),
            Outcome::Dp {
                account,
                debit,
                csv,
            } => {
                let mut b = serde_json::to_vec(account).expect("a typed document");
                b.push(b'\n');
                b.extend_from_slice(&serde_json::to_vec(debit).expect("a typed document"));
                b.push(b'\n');
                b.extend_from_slice(csv);
                ("dp", b)
            }
            Outcome::Refused(r) => ("refused", format!("{}\n", one_line(r)).into_bytes()),
        };
        let doc = self.query.to_json();
        let mut out = format!(
            "{ANSWER_MAGIC} {status} query={} analysis={} party={} sha256={}\n",
            self.query_id,
            self.query.analysis,
            self.query.party,
            hex::encode(self.query.digest())
        )
        .into_bytes();
        out.extend_from_slice(&doc);
        out.push(b'\n');
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, QueryError> {
        let bad = |why: &str| QueryError::Field {
            field: "answer",
            reason: why.to_string(),
        };
        let line = |b: &[u8]| -> Result<usize, QueryError> {
            b.iter()
                .position(|&c| c == b'\n')
                .ok_or_else(|| bad("truncated header"))
        };
        let nl = line(bytes)?;
        let head = std::str::from_utf8(&bytes[..nl]).map_err(|_| bad("header is not UTF-8"))?;
        let rest = &bytes[nl + 1..];
        let nl2 = line(rest)?;
        let doc = &rest[..nl2];
        let body = &rest[nl2 + 1..];
        let parts: Vec<&str> = head.split(' ').collect();
        let [magic, status, q, a, p, s] = parts.as_slice() else {
            return Err(bad("header: expected 6 fields"));
        };
        if *magic != ANSWER_MAGIC {
            return Err(bad("not a dcr-answer/1 document"));
        }
        let field = |s: &'_ str, k: &str| -> Result<String, QueryError> {
            s.strip_prefix(k)
                .and_then(|v| v.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("header: expected {k}=")))
        };
        let query = Query::from_json(doc)?;
        // The document is canonical and the header names exactly it.
        if query.to_json() != doc
            || field(s, "sha256")? != hex::encode(query.digest())
            || field(a, "analysis")? != query.analysis
            || field(p, "party")? != query.party
        {
            return Err(bad(
                "the header does not name the query document it carries",
            ));
        }
        let outcome = match *status {
            "ok" => Outcome::Rows(body.to_vec()),
            "dp" => {
                let n1 = line(body)?;
                let account: crate::dp::DpAccount = serde_json::from_slice(&body[..n1])
                    .map_err(|e| bad(&format!("dp account: {e}")))?;
                let rest = &body[n1 + 1..];
                let n2 = line(rest)?;
                let debit: crate::release::Signed = serde_json::from_slice(&rest[..n2])
                    .map_err(|e| bad(&format!("dp debit: {e}")))?;
                Outcome::Dp {
                    account,
                    debit,
                    csv: rest[n2 + 1..].to_vec(),
                }
            }
            "refused" => {
                let text = std::str::from_utf8(body).map_err(|_| bad("refusal is not UTF-8"))?;
                let line = text
                    .strip_suffix('\n')
                    .filter(|l| !l.chars().any(char::is_control))
                    .ok_or_else(|| bad("a refusal is one line of text"))?;
                Outcome::Refused(line.to_string())
            }
            other => return Err(bad(&format!("status {other:?}"))),
        };
        Ok(Answer {
            query_id: field(q, "query")?,
            query,
            outcome,
        })
    }
}

/// The most rows an answer may carry (guest-init refuses a larger one).
pub const MAX_ANSWER_ROWS: usize = 1_000_000;
/// The most columns an answer may carry.
pub const MAX_ANSWER_COLUMNS: usize = 64;

/// guest-init's re-check of what the confined engine printed, before it is sealed
/// (docs/analysis.md, "What guest-init re-checks"): strict CSV (UTF-8, `\n` line ends, RFC 4180
/// quoting, no control characters), a header of 1-64 distinct non-empty names, every row as
/// wide as the header, at most [`MAX_ANSWER_ROWS`] rows, and per rule:
/// - `list`: every column is one of the rule's list columns (by name);
/// - `aggregation`, `template`: no column is named like a privacy unit or a join column
///   (unless a dimension or list column of the rule has that name).
///
/// The engine enforces the rule on the plan; this catches an engine that misbehaves grossly
/// (a raw identifier column, malformed or oversized output). Returns the number of rows.
pub fn check_answer_csv(rule: &Rule, catalog: &Catalog<'_>, csv: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(csv).map_err(|_| "the answer is not UTF-8".to_string())?;
    let records = csv_records(text)?;
    let Some((header, rows)) = records.split_first() else {
        return Err("the answer has no header line".into());
    };
    if header.is_empty() || header.len() > MAX_ANSWER_COLUMNS {
        return Err(format!(
            "the answer has {} columns (1 to {MAX_ANSWER_COLUMNS})",
            header.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for h in header {
        if h.is_empty() || !seen.insert(h.as_str()) {
            return Err(format!(
                "the answer's header has an empty or repeated name {h:?}"
            ));
        }
    }
    if rows.len() > MAX_ANSWER_ROWS {
        return Err(format!(
            "the answer has {} rows (at most {MAX_ANSWER_ROWS})",
            rows.len()
        ));
    }
    if let Some(i) = rows.iter().position(|r| r.len() != header.len()) {
        return Err(format!(
            "row {} has {} fields, the header {}",
            i + 1,
            rows[i].len(),
            header.len()
        ));
    }
    let bare = |q: &String| q.split_once('.').map_or(q.clone(), |(_, c)| c.to_string());
    match rule {
        Rule::List(l) => {
            let allowed: BTreeSet<String> = l.list_columns.iter().map(bare).collect();
            if let Some(h) = header.iter().find(|h| !allowed.contains(*h)) {
                return Err(format!(
                    "list rule: the answer has column {h:?}, not a list column"
                ));
            }
        }
        Rule::Aggregation(_) | Rule::Template(_) => {
            let mut allowed: BTreeSet<String> = BTreeSet::new();
            let mut banned: BTreeSet<String> = catalog
                .tables
                .iter()
                .map(|(t, _)| t.privacy_unit.clone())
                .collect();
            if let Rule::Aggregation(a) = rule {
                banned.extend(a.join_columns.iter().map(bare));
                allowed.extend(a.dimensions.iter().map(bare));
            }
            if let Some(h) = header
                .iter()
                .find(|h| banned.contains(*h) && !allowed.contains(*h))
            {
                return Err(format!(
                    "{} rule: the answer has a column named {h:?}, a privacy unit or join column",
                    rule.kind()
                ));
            }
        }
    }
    Ok(rows.len())
}

/// RFC 4180 records of `text` (`\n` line ends; a final line end required; quoted fields may
/// hold commas and doubled quotes but no line breaks; no control characters anywhere).
fn csv_records(text: &str) -> Result<Vec<Vec<String>>, String> {
    if !text.ends_with('\n') {
        return Err("the answer does not end with a line end".into());
    }
    let mut out = Vec::new();
    for (n, line) in text[..text.len() - 1].split('\n').enumerate() {
        if let Some(c) = line.chars().find(|c| c.is_control()) {
            return Err(format!("line {}: control character {c:?}", n + 1));
        }
        let mut fields = Vec::new();
        let mut rest = line;
        loop {
            if let Some(q) = rest.strip_prefix('"') {
                let mut v = String::new();
                let mut chars = q.char_indices();
                let end = loop {
                    match chars.next() {
                        None => return Err(format!("line {}: unterminated quote", n + 1)),
                        Some((i, '"')) => {
                            if q[i + 1..].starts_with('"') {
                                v.push('"');
                                chars.next();
                            } else {
                                break i + 1;
                            }
                        }
                        Some((_, c)) => v.push(c),
                    }
                };
                fields.push(v);
                rest = &q[end..];
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                if rest[..end].contains('"') {
                    return Err(format!("line {}: a quote inside an unquoted field", n + 1));
                }
                fields.push(rest[..end].to_string());
                rest = &rest[end..];
            }
            match rest.strip_prefix(',') {
                Some(r) => rest = r,
                None if rest.is_empty() => break,
                None => return Err(format!("line {}: text after a closing quote", n + 1)),
            }
        }
        out.push(fields);
    }
    Ok(out)
}

#[cfg(test)]
mod query_tests {
    use super::*;

    fn table(name: &str, unit: &str, cols: &[&str]) -> Table {
        Table {
            name: name.into(),
            format: TableFormat::Csv,
            privacy_unit: unit.into(),
            columns: cols
                .iter()
                .map(|c| Column {
                    name: (*c).into(),
                    ty: ColumnType::String,
                })
                .collect(),
        }
    }

    #[test]
    fn answers_are_rechecked_against_their_rule() {
        let seg = table("segments", "user", &["user", "segment"]);
        let conv = table("conversions", "uid", &["uid", "converted"]);
        let catalog = Catalog {
            tables: vec![(&seg, "publisher"), (&conv, "advertiser")],
        };
        let agg = Rule::Aggregation(AggregationRule {
            min_distinct_units: 50,
            join_columns: vec!["segments.user".into(), "conversions.uid".into()],
            dimensions: vec!["segments.segment".into()],
            aggregates: vec![],
            scalar_functions: vec![],
            dp: None,
        });
        let list = Rule::List(ListRule {
            join_columns: vec!["segments.user".into(), "conversions.uid".into()],
            list_columns: vec!["segments.segment".into()],
        });
        let ok = |r: &Rule, csv: &str| check_answer_csv(r, &catalog, csv.as_bytes());
        assert_eq!(
            ok(&agg, "segment,overlap\nnews,51\n\"a,\"\"b\"\"\",52\n"),
            Ok(2)
        );
        assert_eq!(ok(&agg, "segment,overlap\n"), Ok(0));
        assert_eq!(ok(&list, "segment\nnews\n"), Ok(1));
        for (rule, bad, why) in [
            (&agg, "", "line end"),
            (&agg, "segment,overlap\nnews,51", "line end"),
            (&agg, "segment,overlap\nnews\n", "fields"),
            (&agg, "segment,segment\nnews,news\n", "repeated"),
            (&agg, ",overlap\nnews,1\n", "empty"),
            (&agg, "user,overlap\nab12,51\n", "privacy unit"),
            (&agg, "uid,overlap\nab12,51\n", "privacy unit"),
            (&agg, "segment,overlap\nne\rws,51\n", "control"),
            (&agg, "segment,overlap\n\"news,51\n", "unterminated"),
            (&agg, "segment,overlap\nn\"ews,51\n", "quote"),
            (&agg, "segment,overlap\n\"news\"x,51\n", "closing quote"),
            (&list, "segment,user\nnews,ab12\n", "not a list column"),
        ] {
            let e = ok(rule, bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(check_answer_csv(&agg, &catalog, b"segment\n\xff\n").is_err());
        let many = format!("c\n{}", "1\n".repeat(MAX_ANSWER_ROWS + 1));
        assert!(ok(&agg, &many).unwrap_err().contains("rows"));
    }

    #[test]
    fn query_documents_are_checked() {
        let ok = br#"{"analysis":"overlap","party":"advertiser","sql":"SELECT 1"}"#;
        let q = Query::from_json(ok).unwrap();
        assert_eq!(q.sql.as_deref(), Some("SELECT 1"));
        for (bad, field) in [
            (
                r#"{"analysis":"overlap","party":"a","sql":"x","extra":1}"#,
                "unknown field",
            ),
            (r#"{"analysis":"../x","party":"a","sql":"x"}"#, "analysis"),
            (r#"{"analysis":"o","party":"","sql":"x"}"#, "party"),
            (
                r#"{"analysis":"o","party":"a","sql":"x","parameters":{"k":1}}"#,
                "not both",
            ),
            (
                r#"{"analysis":"o","party":"a","parameters":{"K-1":1}}"#,
                "parameter name",
            ),
        ] {
            let e = Query::from_json(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
        let long = format!(
            r#"{{"analysis":"o","party":"a","sql":"{}"}}"#,
            "x".repeat(MAX_QUERY_SQL + 1)
        );
        assert!(Query::from_json(long.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }

    #[test]
    fn query_documents_are_bounded_and_printable() {
        let q = |sql: &str| Query {
            analysis: "a".into(),
            party: "p".into(),
            sql: Some(sql.into()),
            parameters: BTreeMap::new(),
        };
        assert!(q("SELECT 1\r\n\tFROM t").validate().is_ok());
        assert!(q("SELECT '\u{1b}[2J'").validate().is_err());
        assert!(q("SELECT '\u{0}'").validate().is_err());
        // 16 KiB of control-free SQL that JSON escapes (quotes) past the document cap.
        assert!(q(&"\"".repeat(MAX_QUERY_SQL)).validate().is_err());
        let mut p = q("x");
        p.sql = None;
        for i in 0..64 {
            p.parameters
                .insert(format!("p{i}"), ParameterValue::Text("y".repeat(4096)));
        }
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        p.parameters.clear();
        p.parameters
            .insert("t".into(), ParameterValue::Text("a\nb".into()));
        assert!(p.validate().is_err());
    }

    #[test]
    fn answers_round_trip_and_refusals_stay_one_line() {
        let query = Query {
            analysis: "overlap".into(),
            party: "advertiser".into(),
            sql: Some("SELECT 1\nFROM t".into()),
            parameters: BTreeMap::new(),
        };
        let rows = Answer {
            query_id: "ab".repeat(16),
            query: query.clone(),
            outcome: Outcome::Rows(b"segment,n\nsports,60\n".to_vec()),
        };
        let bytes = rows.encode();
        assert_eq!(Answer::decode(&bytes).unwrap(), rows);
        let refused = Answer {
            outcome: Outcome::Refused(
                "refused by analysis overlap (aggregation rule):\nx\u{1b}[31m".into(),
            ),
            ..rows.clone()
        };
        let back = Answer::decode(&refused.encode()).unwrap();
        assert_eq!(
            back.outcome,
            Outcome::Refused("refused by analysis overlap (aggregation rule): x [31m".into())
        );
        // The header must name the document it carries.
        let text = String::from_utf8(bytes.clone()).unwrap();
        for (from, to) in [
            ("party=advertiser", "party=publisher"),
            ("analysis=overlap ", "analysis=other "),
            ("\"party\":\"advertiser\"", "\"party\":\"publisher\""),
            ("SELECT 1", "SELECT 2"),
            ("{\"analysis\"", "{ \"analysis\""),
        ] {
            assert!(text.contains(from), "{from}");
            let forged = text.replacen(from, to, 1);
            assert!(Answer::decode(forged.as_bytes()).is_err(), "{from} -> {to}");
        }
        let h = hex::encode(query.digest());
        assert!(Answer::decode(text.replacen(&h, &"0".repeat(64), 1).as_bytes()).is_err());
        assert!(
            Answer::decode(b"dcr-answer/1 maybe query=a analysis=b party=c sha256=00\n{}\n")
                .is_err()
        );
        assert!(Answer::decode(b"no newline").is_err());
        let mut raw = refused.encode();
        raw.truncate(raw.len() - 1);
        raw.extend_from_slice(b"\x07\n");
        assert!(Answer::decode(&raw).is_err());
    }
}
