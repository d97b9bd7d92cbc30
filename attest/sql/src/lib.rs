//! dcr's SQL engine: the contract's analysis rules enforced on Apache DataFusion's logical
//! plan (docs/analysis.md).
//!
//! - [`Engine::check`]: plan a submitted query (or bind a template's parameters), check it
//!   against its analysis's rule and submitter list, and write the distinct-unit threshold
//!   into the plan. Nothing runs; refusals name the rule.
//! - [`Engine::run`]: execute a checked query over the loaded tables; the output is CSV.
//!
//! The session registers only the functions a rule allows (no file, URL or DDL access: no
//! table factories, no file formats, statements refused).

pub mod check;
pub mod dp;
pub mod load;
pub mod threshold;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder, ScalarUDF, SortExpr};
use datafusion::prelude::{Expr, SQLOptions, SessionConfig, SessionContext};
use dcr_protocol::analysis::{Analysis, ParameterType, ParameterValue, Rule, ScalarFunction};
use dcr_protocol::contract::Contract;

/// The longest query text accepted.
pub const MAX_SQL: usize = dcr_protocol::analysis::MAX_QUERY_SQL;

/// What a party submits under an analysis.
#[derive(Debug, Clone, PartialEq)]
pub enum Submission {
    /// SQL text, for an aggregation or list rule.
    Sql(String),
    /// Parameter values, for a template.
    Template(BTreeMap<String, ParameterValue>),
}

/// A query refused before anything ran: the analysis, its rule kind and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by analysis {analysis} ({rule} rule): {reason}")]
pub struct Refusal {
    pub analysis: String,
    pub rule: &'static str,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error("no table {0:?} in the contract")]
    UnknownTable(String),
    #[error("tokio runtime: {0}")]
    Runtime(String),
    #[error("the query failed while running: {0}")]
    Run(String),
    #[error("output: {0}")]
    Output(String),
    #[error("differential privacy: {0}")]
    Dp(#[from] dp::DpError),
}

/// A query that passed its rule, with the plan the engine will run.
pub struct Checked {
    pub analysis: String,
    ctx: SessionContext,
    plan: LogicalPlan,
    /// The engine's table generation the plan was made against (its scans hold those tables).
    generation: u64,
    /// Under a DP rule: how the aggregate is released instead (`plan` is then unused).
    dp: Option<dp::DpQuery>,
}

impl Checked {
    /// The plan as it will run (threshold included), for `query check --explain`.
    pub fn plan(&self) -> &LogicalPlan {
        match &self.dp {
            Some(d) => d.rows_plan(),
            None => &self.plan,
        }
    }
}

/// The result of a query: its schema and rows.
pub struct Output {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// A DP answer's account (what it spent, its noise scales).
    pub dp: Option<dcr_protocol::dp::DpAccount>,
}

impl Output {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// CSV with a header line.
    pub fn to_csv(&self) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::new();
        {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if self.batches.is_empty() {
                w.write(&RecordBatch::new_empty(self.schema.clone()))
                    .map_err(|e| EngineError::Output(e.to_string()))?;
            }
            for b in &self.batches {
                w.write(b).map_err(|e| EngineError::Output(e.to_string()))?;
            }
        }
        Ok(out)
    }
}

pub struct Engine<'c> {
    contract: &'c Contract,
    tables: HashMap<String, Arc<MemTable>>,
    rt: tokio::runtime::Runtime,
    threads: usize,
    /// Bumped by every [`Engine::load`]: a query checked before a load would scan the tables
    /// as they were, so [`Engine::run`] refuses it.
    generation: u64,
}

impl<'c> Engine<'c> {
    /// An engine over the contract's tables, all empty (enough to check queries).
    pub fn new(contract: &'c Contract) -> Result<Self, EngineError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("dcr-sql")
            .build()
            .map_err(|e| EngineError::Runtime(e.to_string()))?;
        let mut e = Engine {
            contract,
            tables: HashMap::new(),
            rt,
            threads,
            generation: 0,
        };
        for (t, _) in contract.catalog().tables {
            e.load(&t.name, Vec::new())?;
        }
        Ok(e)
    }

    /// Put a table's rows (from [`load::csv`] / [`load::parquet`]) in place.
    pub fn load(&mut self, table: &str, batches: Vec<RecordBatch>) -> Result<(), EngineError> {
        let t = self
            .contract
            .catalog()
            .table(table)
            .ok_or_else(|| EngineError::UnknownTable(table.into()))?;
        let schema = load::schema(t);
        // One partition per thread, so scans run in parallel.
        let n = self.threads.max(1);
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        for (i, b) in batches.into_iter().enumerate() {
            parts[i % n].push(b);
        }
        let mem = MemTable::try_new(schema, parts).map_err(|e| {
            EngineError::Load(load::LoadError::Table {
                table: table.into(),
                reason: e.to_string(),
            })
        })?;
        self.tables.insert(table.into(), Arc::new(mem));
        self.generation += 1;
        Ok(())
    }

    /// A session that knows the contract's tables and only the functions `allowed`.
    fn session(&self, allowed: &[ScalarFunction], extra_aggregates: bool) -> SessionContext {
        use datafusion::functions::{math, string};
        use datafusion::functions_aggregate::{average, count, min_max, sum};
        let scalar: Vec<Arc<ScalarUDF>> = allowed
            .iter()
            .map(|f| match f {
                ScalarFunction::Abs => math::abs(),
                ScalarFunction::Ceil => math::ceil(),
                ScalarFunction::Floor => math::floor(),
                ScalarFunction::Round => math::round(),
                ScalarFunction::Lower => string::lower(),
                ScalarFunction::Upper => string::upper(),
                ScalarFunction::Trim => string::btrim(),
            })
            .collect();
        let mut aggregates = vec![count::count_udaf(), sum::sum_udaf(), average::avg_udaf()];
        if extra_aggregates {
            aggregates.extend([min_max::min_udaf(), min_max::max_udaf()]);
        }
        let mut config = SessionConfig::new()
            .with_target_partitions(self.threads.max(1))
            .with_information_schema(false);
        config.options_mut().sql_parser.enable_ident_normalization = true;
        // Every default optimizer rule but the one that turns a single COUNT(DISTINCT x) into
        // a two-level aggregate (the post-check reads the threshold as COUNT(DISTINCT unit)).
        let rules = datafusion::optimizer::Optimizer::new()
            .rules
            .into_iter()
            .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
            .collect();
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_optimizer_rules(rules)
            .with_scalar_functions(scalar)
            .with_aggregate_functions(aggregates)
            .with_window_functions(Vec::new())
            .build();
        let ctx = SessionContext::new_with_state(state);
        for (name, t) in &self.tables {
            ctx.register_table(name.as_str(), t.clone())
                .expect("a fresh session has no tables");
        }
        ctx
    }

    /// Check `submission` by `party` under analysis `name`. `party: None` skips the
    /// submitter check (a local dry run by someone who has not said who they are).
    pub fn check(
        &self,
        name: &str,
        party: Option<&str>,
        submission: &Submission,
    ) -> Result<Checked, Refusal> {
        let Some(analysis) = self.contract.analysis(name) else {
            return Err(Refusal {
                analysis: name.into(),
                rule: "no",
                reason: format!(
                    "the contract has no analysis {name:?} (it has: {})",
                    self.contract
                        .analyses
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        let refuse = |reason: String| Refusal {
            analysis: analysis.name.clone(),
            rule: analysis.rule.kind(),
            reason,
        };
        if let Some(p) = party {
            if !analysis.submitters.iter().any(|s| s == p) {
                return Err(refuse(format!(
                    "party {p:?} may not submit queries under it (submitters: {})",
                    analysis.submitters.join(", ")
                )));
            }
        }
        self.rt
            .block_on(self.check_async(analysis, submission))
            .map_err(refuse)
    }

    async fn check_async(&self, a: &Analysis, submission: &Submission) -> Result<Checked, String> {
        let catalog = self.contract.catalog();
        let (ctx, sql, k, params) = match (&a.rule, submission) {
            (Rule::Aggregation(r), Submission::Sql(sql)) => (
                self.session(&r.scalar_functions, false),
                sql.as_str(),
                r.min_distinct_units,
                None,
            ),
            (Rule::List(_), Submission::Sql(sql)) => {
                (self.session(&[], false), sql.as_str(), 0, None)
            }
            (Rule::Template(t), Submission::Template(values)) => {
                let all = [
                    ScalarFunction::Abs,
                    ScalarFunction::Ceil,
                    ScalarFunction::Floor,
                    ScalarFunction::Round,
                    ScalarFunction::Lower,
                    ScalarFunction::Upper,
                    ScalarFunction::Trim,
                ];
                (
                    self.session(&all, true),
                    t.sql.as_str(),
                    t.min_distinct_units,
                    Some(bind(&t.parameters, values)?),
                )
            }
            (Rule::Template(_), Submission::Sql(_)) => {
                return Err("a template takes parameter values, not SQL".into())
            }
            (_, Submission::Template(_)) => {
                return Err("parameter values are for template rules; submit SQL".into())
            }
        };
        if sql.len() > MAX_SQL {
            return Err(format!(
                "the query is {} bytes; at most {MAX_SQL}",
                sql.len()
            ));
        }
        let state = ctx.state();
        let mut plan = state
            .create_logical_plan(sql)
            .await
            .map_err(|e| format!("the query does not plan: {}", one_line(&e.to_string())))?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| one_line(&e.to_string()))?;
        let scans = match (&a.rule, params) {
            (Rule::Aggregation(r), _) => check::aggregation(&plan, r, &catalog)?,
            (Rule::List(r), _) => check::list(&plan, r, &catalog)?,
            (Rule::Template(_), Some(p)) => {
                plan = plan
                    .with_param_values(p)
                    .map_err(|e| format!("template parameters: {}", one_line(&e.to_string())))?;
                check::scans(&plan, &catalog)?
            }
            (Rule::Template(_), None) => unreachable!("bound above"),
        };
        if let (Rule::Aggregation(r), Some(rule)) = (&a.rule, a.rule_dp()) {
            let classes = threshold::unit_classes(&plan, &scans)?;
            let d = dp::prepare(&plan, &scans, &classes, rule, r.min_distinct_units)?;
            // What runs is the row-level plan; check that the optimizer keeps it one.
            state
                .optimize(&d.rows)
                .map_err(|e| format!("the query does not plan: {}", one_line(&e.to_string())))?;
            return Ok(Checked {
                analysis: a.name.clone(),
                ctx,
                plan: d.rows.clone(),
                generation: self.generation,
                dp: Some(d),
            });
        }
        let mut units = Vec::new();
        if k > 0 {
            let (p, counted) = threshold::apply(plan, &scans, k)?;
            plan = p;
            units = counted;
        }
        let plan = ordered(plan)?;
        // Re-check what will run: the optimizer moves predicates, rewrites subqueries and
        // splits aggregates; none of that may drop the threshold or add a banned node.
        let optimized = state
            .optimize(&plan)
            .map_err(|e| format!("the query does not plan: {}", one_line(&e.to_string())))?;
        post_check(&optimized, &units, k)?;
        Ok(Checked {
            analysis: a.name.clone(),
            ctx,
            plan,
            generation: self.generation,
            dp: None,
        })
    }

    /// Run a checked query. Load the tables first: a query checked before a load is refused
    /// (its plan holds the tables as they were when it was checked).
    pub fn run(&self, q: &Checked) -> Result<Output, EngineError> {
        if q.generation != self.generation {
            return Err(EngineError::Run(
                "tables were loaded after this query was checked; check it again".into(),
            ));
        }
        self.rt.block_on(async {
            let df = q
                .ctx
                .execute_logical_plan(q.plan.clone())
                .await
                .map_err(|e| EngineError::Run(one_line(&e.to_string())))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df
                .collect()
                .await
                .map_err(|e| EngineError::Run(one_line(&e.to_string())))?;
            if let Some(d) = &q.dp {
                let r = dp::release(d, &batches)?;
                return Ok(Output {
                    schema: r.schema,
                    batches: vec![r.batch],
                    dp: Some(r.account),
                });
            }
            Ok(Output {
                schema,
                batches,
                dp: None,
            })
        })
    }
}

/// Typed template parameters → DataFusion's named parameter values.
fn bind(
    declared: &BTreeMap<String, ParameterType>,
    values: &BTreeMap<String, ParameterValue>,
) -> Result<ParamValues, String> {
    if let Some(extra) = values.keys().find(|k| !declared.contains_key(*k)) {
        return Err(format!("the template has no parameter {extra:?}"));
    }
    let mut map = HashMap::new();
    for (name, ty) in declared {
        let v = values
            .get(name)
            .ok_or_else(|| format!("parameter {name} ({ty:?}) is missing"))?;
        if !v.fits(*ty) {
            return Err(format!(
                "parameter {name}: expected {}, got {}",
                format!("{ty:?}").to_lowercase(),
                match v {
                    ParameterValue::Bool(_) => "a boolean",
                    ParameterValue::Int(_) => "an integer",
                    ParameterValue::Float(_) => "a float",
                    ParameterValue::Text(_) => "a string",
                }
            ));
        }
        let s = match (v, ty) {
            (ParameterValue::Text(s), ParameterType::Date) => ScalarValue::Date32(Some(
                dcr_protocol::time::parse_date(s)
                    .and_then(|d| i32::try_from(d).ok())
                    .ok_or_else(|| format!("parameter {name}: not a date"))?,
            )),
            (ParameterValue::Text(s), _) => ScalarValue::Utf8(Some(s.clone())),
            (ParameterValue::Int(i), ParameterType::Float64) => {
                ScalarValue::Float64(Some(*i as f64))
            }
            (ParameterValue::Int(i), _) => ScalarValue::Int64(Some(*i)),
            (ParameterValue::Float(f), _) => ScalarValue::Float64(Some(*f)),
            (ParameterValue::Bool(b), _) => ScalarValue::Boolean(Some(*b)),
        };
        map.insert(name.clone(), s.into());
    }
    Ok(ParamValues::Map(map))
}

/// Rows in a fixed order: the query's ORDER BY if it has one, else every column ascending,
/// so that the same data gives the same bytes.
fn ordered(plan: LogicalPlan) -> Result<LogicalPlan, String> {
    let top_sorted = match &plan {
        LogicalPlan::Sort(_) => true,
        LogicalPlan::Limit(l) => matches!(&*l.input, LogicalPlan::Sort(_)),
        LogicalPlan::Projection(p) => matches!(&*p.input, LogicalPlan::Sort(_)),
        _ => false,
    };
    if top_sorted {
        return Ok(plan);
    }
    let keys: Vec<SortExpr> = plan
        .schema()
        .columns()
        .into_iter()
        .map(|c| Expr::Column(c).sort(true, true))
        .collect();
    LogicalPlanBuilder::from(plan)
        .sort(keys)
        .and_then(|b| b.build())
        .map_err(|e| format!("ordering the output: {}", one_line(&e.to_string())))
}

/// What the optimized plan may contain, and the threshold it must keep: for every table read
/// (by its qualifier), a filter conjunct `c >= k` where `c` is an aggregate's
/// `count(DISTINCT <that table's privacy unit>)`, whatever the optimizer renamed it to.
fn post_check(plan: &LogicalPlan, units: &[(String, String)], k: u64) -> Result<(), String> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let mut defs: HashMap<String, Expr> = HashMap::new();
    let mut bad = None;
    plan.apply_with_subqueries(|n| {
        match n {
            LogicalPlan::Window(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::Extension(_)
            | LogicalPlan::RecursiveQuery(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_) => bad = Some(format!("{}", n.display())),
            LogicalPlan::Aggregate(a) => {
                for e in &a.aggr_expr {
                    match e {
                        Expr::Alias(al) => defs.insert(al.name.clone(), (*al.expr).clone()),
                        e => defs.insert(e.schema_name().to_string(), e.clone()),
                    };
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    if let Some(b) = bad {
        return Err(format!("the optimized plan holds {b}: refused"));
    }
    // A plan the optimizer proved empty reads no table: nothing in it depends on anyone.
    let mut scans = 0;
    plan.apply_with_subqueries(|n| {
        scans += usize::from(matches!(n, LogicalPlan::TableScan(_)));
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    if scans == 0 {
        return Ok(());
    }
    let mut seen = vec![false; units.len()];
    plan.apply_with_subqueries(|n| {
        if let LogicalPlan::Filter(f) = n {
            for c in datafusion::logical_expr::utils::split_conjunction(&f.predicate) {
                let Expr::BinaryExpr(BinaryExpr { left, op, right }) = c else {
                    continue;
                };
                // `count >= v`, `count > v`, `count = v` (or flipped) with every allowed
                // count at least k: the simplifier may merge a HAVING into the threshold.
                let (col, op, v) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(ScalarValue::Int64(Some(v)), _)) => {
                        (c, *op, *v)
                    }
                    (Expr::Literal(ScalarValue::Int64(Some(v)), _), Expr::Column(c)) => {
                        let Some(op) = op.swap() else { continue };
                        (c, op, *v)
                    }
                    _ => continue,
                };
                let least = match op {
                    Operator::GtEq | Operator::Eq => i128::from(v),
                    Operator::Gt => i128::from(v) + 1,
                    _ => continue,
                };
                if least < i128::from(k) {
                    continue;
                }
                let Some(Expr::AggregateFunction(af)) = defs.get(&col.name) else {
                    continue;
                };
                if af.func.name() != "count" || !af.params.distinct || af.params.filter.is_some() {
                    continue;
                }
                if let [Expr::Column(u)] = af.params.args.as_slice() {
                    for (i, (q, unit)) in units.iter().enumerate() {
                        if u.name == *unit && u.relation.as_ref().map(|r| r.table()) == Some(q) {
                            seen[i] = true;
                        }
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    if seen.iter().any(|s| !s) {
        return Err("the optimized plan lost the distinct-unit threshold: refused".into());
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}
