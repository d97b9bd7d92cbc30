//! The rules, checked on DataFusion's logical plan as SQL planning produced it (before type
//! coercion and optimization, so every CAST and function in it is one the analyst wrote).
//! Default deny: a node or expression not named here is refused (docs/analysis.md).

use datafusion::common::TableReference;
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator};
use datafusion::prelude::Column;
use dcr_protocol::analysis::{
    AggregateFunction as Agg, AggregationRule, Catalog, ListRule, ScalarFunction, Table,
};

/// Why a query is refused: one line, naming what in the query broke which rule.
pub type Why = String;

/// A table read by the query, under the name its columns are qualified with.
#[derive(Debug, Clone)]
pub struct Scan<'a> {
    pub qualifier: String,
    pub table: &'a Table,
}

/// How a rule classes a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A table's privacy unit.
    Unit,
    /// A join column (not a dimension).
    Join,
    /// Selectable, groupable, filterable.
    Dimension,
    /// Anything else: usable only as an allowed aggregate's argument.
    Other,
}

/// The scans of a plan, by qualifier. Only `TableScan` and `SubqueryAlias` over a `TableScan`
/// introduce names here; anything else below an alias is a subquery or CTE and is refused by
/// the shape checks.
pub fn scans<'a>(plan: &LogicalPlan, catalog: &Catalog<'a>) -> Result<Vec<Scan<'a>>, Why> {
    fn walk<'a>(
        plan: &LogicalPlan,
        catalog: &Catalog<'a>,
        alias: Option<&TableReference>,
        out: &mut Vec<Scan<'a>>,
    ) -> Result<(), Why> {
        match plan {
            LogicalPlan::TableScan(t) => {
                let name = t.table_name.table();
                let table = catalog
                    .table(name)
                    .ok_or_else(|| format!("table {name:?} is not in the contract"))?;
                let qualifier = alias.map_or(name, |a| a.table()).to_string();
                if out.iter().any(|s| s.qualifier == qualifier) {
                    return Err(format!("{qualifier:?} names two tables"));
                }
                out.push(Scan { qualifier, table });
                Ok(())
            }
            LogicalPlan::SubqueryAlias(a) if matches!(*a.input, LogicalPlan::TableScan(_)) => {
                walk(&a.input, catalog, Some(&a.alias), out)
            }
            other => {
                for i in other.inputs() {
                    walk(i, catalog, None, out)?;
                }
                Ok(())
            }
        }
    }
    let mut out = Vec::new();
    walk(plan, catalog, None, &mut out)?;
    Ok(out)
}

/// Each contract table at most once: a self-join (under any aliases) multiplies a person's
/// rows by their own row count, which turns row-weighted aggregates into a per-person signal.
fn once_each(scans: &[Scan]) -> Result<(), Why> {
    for (i, s) in scans.iter().enumerate() {
        if scans[..i].iter().any(|x| x.table.name == s.table.name) {
            return Err(format!(
                "table {} is read twice: self-joins are not allowed (they multiply a person's rows)",
                s.table.name
            ));
        }
    }
    Ok(())
}

/// Column lineage and classes for one query under one rule.
struct Columns<'a, 'r> {
    scans: &'r [Scan<'a>],
    join: Vec<&'r str>,
    dimensions: Vec<&'r str>,
}

impl<'a, 'r> Columns<'a, 'r> {
    /// `table.column` (contract names) of a column reference.
    fn resolve(&self, c: &Column) -> Result<String, Why> {
        let scan = match &c.relation {
            Some(r) => self.scans.iter().find(|s| s.qualifier == r.table()),
            None => {
                let mut m = self
                    .scans
                    .iter()
                    .filter(|s| s.table.columns.iter().any(|x| x.name == c.name));
                match (m.next(), m.next()) {
                    (Some(s), None) => Some(s),
                    _ => None,
                }
            }
        };
        let scan = scan.ok_or_else(|| format!("column {c} is not a column of a contract table"))?;
        if !scan.table.columns.iter().any(|x| x.name == c.name) {
            return Err(format!(
                "column {c} is not a column of table {}",
                scan.table.name
            ));
        }
        Ok(format!("{}.{}", scan.table.name, c.name))
    }

    fn class(&self, c: &Column) -> Result<(String, Class), Why> {
        let q = self.resolve(c)?;
        let (table, col) = q.split_once('.').expect("resolved");
        let unit = self
            .scans
            .iter()
            .any(|s| s.table.name == table && s.table.privacy_unit == col);
        let class = if unit {
            Class::Unit
        } else if self.dimensions.contains(&q.as_str()) {
            Class::Dimension
        } else if self.join.contains(&q.as_str()) {
            Class::Join
        } else {
            Class::Other
        };
        Ok((q, class))
    }

    /// A column that may be selected, grouped or filtered on.
    fn dimension(&self, c: &Column, place: &str) -> Result<(), Why> {
        match self.class(c)? {
            (_, Class::Dimension) => Ok(()),
            (q, Class::Unit) => Err(format!(
                "{q} is a privacy unit: it may not appear in {place} (only in JOIN … ON and COUNT(DISTINCT …))"
            )),
            (q, Class::Join) => Err(format!(
                "{q} is a join column: it may not appear in {place} (only in INNER JOIN … ON)"
            )),
            (q, Class::Other) => Err(format!(
                "{q} is not a dimension of this rule: it may not appear in {place}"
            )),
        }
    }
}

fn node_name(p: &LogicalPlan) -> String {
    match p {
        LogicalPlan::Union(_) => "UNION / EXCEPT / INTERSECT".into(),
        LogicalPlan::Window(_) => "a window function (OVER …)".into(),
        LogicalPlan::Limit(_) => "LIMIT / OFFSET".into(),
        LogicalPlan::Distinct(_) => "SELECT DISTINCT".into(),
        LogicalPlan::Values(_) => "VALUES".into(),
        LogicalPlan::EmptyRelation(_) => "a SELECT without FROM".into(),
        LogicalPlan::Subquery(_) => "a subquery".into(),
        LogicalPlan::RecursiveQuery(_) => "WITH RECURSIVE".into(),
        LogicalPlan::Unnest(_) => "UNNEST".into(),
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => "EXPLAIN".into(),
        LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Copy(_) => {
            "a statement that is not a query".into()
        }
        LogicalPlan::Statement(_) | LogicalPlan::DescribeTable(_) => {
            "a statement that is not a query".into()
        }
        other => format!("a {} node", other.display()),
    }
}

/// Expressions no rule allows anywhere.
#[allow(deprecated)] // Expr::Wildcard: still produced for `SELECT *` in some positions
fn never(e: &Expr) -> Option<Why> {
    Some(match e {
        Expr::Exists(_)
        | Expr::InSubquery(_)
        | Expr::ScalarSubquery(_)
        | Expr::SetComparison(_) => {
            "a subquery in an expression (EXISTS, IN (SELECT …), scalar subquery) is not allowed"
                .into()
        }
        Expr::WindowFunction(_) => "window functions (OVER …) are not allowed".into(),
        Expr::GroupingSet(_) => "ROLLUP / CUBE / GROUPING SETS are not allowed".into(),
        Expr::Placeholder(p) => format!("placeholder {} outside a template", p.id),
        Expr::ScalarVariable(..) => "session variables are not allowed".into(),
        Expr::Unnest(_) => "UNNEST is not allowed".into(),
        Expr::Wildcard { .. } => "SELECT * is not allowed (name the columns)".into(),
        Expr::OuterReferenceColumn(..) => "correlated subqueries are not allowed".into(),
        Expr::HigherOrderFunction(_) | Expr::Lambda(_) | Expr::LambdaVariable(_) => {
            "lambda functions are not allowed".into()
        }
        Expr::SimilarTo(_) => "SIMILAR TO is not allowed".into(),
        _ => return None,
    })
}

/// The operand of NOT, IS [NOT] NULL / TRUE / FALSE / UNKNOWN and unary minus: allowed
/// wherever their operand is.
fn operand(e: &Expr) -> Option<&Expr> {
    match e {
        Expr::Not(x)
        | Expr::IsNull(x)
        | Expr::IsNotNull(x)
        | Expr::IsTrue(x)
        | Expr::IsFalse(x)
        | Expr::IsNotTrue(x)
        | Expr::IsNotFalse(x)
        | Expr::IsUnknown(x)
        | Expr::IsNotUnknown(x)
        | Expr::Negative(x) => Some(x),
        _ => None,
    }
}

fn scalar_allowed(f: &str, allowed: &[ScalarFunction]) -> bool {
    allowed.iter().any(|a| a.name() == f)
}

/// An expression over dimensions and literals, in a filter or a group key: comparisons, AND /
/// OR / NOT, IN (literals), BETWEEN, LIKE, IS NULL and allowed scalar functions. No CAST, no
/// CASE, no arithmetic on columns in group keys (they smuggle values into keys).
fn pre_expr(e: &Expr, cols: &Columns, allowed: &[ScalarFunction], place: &str) -> Result<(), Why> {
    if let Some(w) = never(e) {
        return Err(w);
    }
    let rec = |x: &Expr| pre_expr(x, cols, allowed, place);
    if let Some(x) = operand(e) {
        return rec(x);
    }
    match e {
        Expr::Column(c) => cols.dimension(c, place),
        Expr::Literal(..) => Ok(()),
        Expr::Alias(Alias { expr, .. }) => rec(expr),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let ok = matches!(
                op,
                Operator::Eq
                    | Operator::NotEq
                    | Operator::Lt
                    | Operator::LtEq
                    | Operator::Gt
                    | Operator::GtEq
                    | Operator::And
                    | Operator::Or
            );
            if !ok {
                return Err(format!("operator {op} is not allowed in {place}"));
            }
            rec(left)?;
            rec(right)
        }
        Expr::Between(b) => {
            rec(&b.expr)?;
            rec(&b.low)?;
            rec(&b.high)
        }
        Expr::InList(l) => {
            rec(&l.expr)?;
            if l.list.len() > 1000 {
                return Err(format!("IN lists in {place} are limited to 1000 values"));
            }
            for x in &l.list {
                if !matches!(x, Expr::Literal(..)) {
                    return Err(format!("IN lists in {place} may hold literals only"));
                }
            }
            Ok(())
        }
        Expr::Like(l) => {
            if !matches!(*l.pattern, Expr::Literal(..)) {
                return Err(format!("LIKE patterns in {place} must be literals"));
            }
            rec(&l.expr)
        }
        Expr::ScalarFunction(f) => {
            if !scalar_allowed(f.name(), allowed) {
                return Err(format!(
                    "function {}() is not allowed by this rule (scalar_functions)",
                    f.name()
                ));
            }
            f.args.iter().try_for_each(rec)
        }
        // A typed literal (`DATE '2026-01-02'`) is a cast of a constant: harmless.
        Expr::Cast(c) if matches!(*c.expr, Expr::Literal(..)) => Ok(()),
        Expr::Cast(_) | Expr::TryCast(_) => Err(format!(
            "CAST is not allowed in {place} (a cast can turn any column into a group key)"
        )),
        Expr::Case(_) => Err(format!("CASE is not allowed in {place}")),
        Expr::AggregateFunction(_) => Err(format!("an aggregate is not allowed in {place}")),
        other => Err(format!("{other} is not allowed in {place}")),
    }
}

/// An expression above the aggregate (SELECT list, HAVING, ORDER BY): columns there are the
/// aggregate's outputs (group keys and aggregate results, already thresholded), combined
/// with literals, arithmetic, comparisons, CAST and allowed scalar functions.
fn post_expr(e: &Expr, allowed: &[ScalarFunction]) -> Result<(), Why> {
    if let Some(w) = never(e) {
        return Err(w);
    }
    let rec = |x: &Expr| post_expr(x, allowed);
    if let Some(x) = operand(e) {
        return rec(x);
    }
    match e {
        Expr::Column(_) | Expr::Literal(..) => Ok(()),
        Expr::Alias(Alias { expr, .. }) => rec(expr),
        Expr::BinaryExpr(BinaryExpr { left, right, .. }) => {
            rec(left)?;
            rec(right)
        }
        Expr::Cast(c) => rec(&c.expr),
        Expr::TryCast(c) => rec(&c.expr),
        Expr::Between(b) => {
            rec(&b.expr)?;
            rec(&b.low)?;
            rec(&b.high)
        }
        Expr::InList(l) => {
            rec(&l.expr)?;
            l.list.iter().try_for_each(rec)
        }
        Expr::ScalarFunction(f) => {
            if !scalar_allowed(f.name(), allowed) {
                return Err(format!(
                    "function {}() is not allowed by this rule (scalar_functions)",
                    f.name()
                ));
            }
            f.args.iter().try_for_each(rec)
        }
        Expr::AggregateFunction(_) => Ok(()),
        other => Err(format!("{other} is not allowed above the aggregate")),
    }
}

/// The part below the aggregate: scans (optionally aliased), inner equi-joins on join
/// columns, and WHERE filters on dimensions. Returns how many joins it saw.
fn below(
    plan: &LogicalPlan,
    cols: &Columns,
    allowed: &[ScalarFunction],
    filter_place: &str,
) -> Result<usize, Why> {
    match plan {
        LogicalPlan::TableScan(_) => Ok(0),
        LogicalPlan::SubqueryAlias(a) => match &*a.input {
            LogicalPlan::TableScan(_) => Ok(0),
            _ => Err(
                "subqueries and CTEs (WITH) are not allowed: read contract tables directly".into(),
            ),
        },
        LogicalPlan::Filter(f) => {
            pre_expr(&f.predicate, cols, allowed, filter_place)?;
            below(&f.input, cols, allowed, filter_place)
        }
        LogicalPlan::Join(j) => {
            if j.join_type != JoinType::Inner {
                return Err(format!(
                    "{} joins are not allowed: only INNER JOIN … ON equal join columns",
                    j.join_type
                ));
            }
            let mut pairs: Vec<(&Expr, &Expr)> = j.on.iter().map(|(l, r)| (l, r)).collect();
            if let Some(f) = &j.filter {
                conjuncts_eq(f, &mut pairs)?;
            }
            if pairs.is_empty() {
                return Err(
                    "a join without ON equalities (CROSS JOIN, or FROM a, b) is not allowed".into(),
                );
            }
            for (l, r) in pairs {
                let (Expr::Column(lc), Expr::Column(rc)) = (l, r) else {
                    return Err(format!(
                        "join condition {l} = {r}: both sides must be bare join columns"
                    ));
                };
                for c in [lc, rc] {
                    let (q, class) = cols.class(c)?;
                    let listed = cols.join.contains(&q.as_str());
                    if !listed {
                        let _ = class;
                        return Err(format!("{q} is not a join column of this rule"));
                    }
                }
                if lc.relation == rc.relation {
                    return Err(format!(
                        "join condition {l} = {r} compares one table with itself"
                    ));
                }
            }
            Ok(1 + below(&j.left, cols, allowed, filter_place)?
                + below(&j.right, cols, allowed, filter_place)?)
        }
        LogicalPlan::Projection(_) | LogicalPlan::Aggregate(_) => {
            Err("subqueries and CTEs (WITH) are not allowed: read contract tables directly".into())
        }
        other => Err(format!("{} is not allowed here", node_name(other))),
    }
}

/// `a = b AND c = d …` → pairs; anything else is refused.
fn conjuncts_eq<'e>(e: &'e Expr, out: &mut Vec<(&'e Expr, &'e Expr)>) -> Result<(), Why> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            conjuncts_eq(left, out)?;
            conjuncts_eq(right, out)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            out.push((left, right));
            Ok(())
        }
        other => Err(format!(
            "join condition {other}: only equalities of join columns joined by AND"
        )),
    }
}

/// The structure of an aggregation query, before any column is resolved: the nodes above
/// its one aggregate, and below it only filters, inner joins and (aliased) table scans.
fn shape(plan: &LogicalPlan) -> Result<(), Why> {
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(p) => node = &p.input,
            LogicalPlan::Sort(s) => node = &s.input,
            LogicalPlan::Filter(f) => node = &f.input,
            LogicalPlan::Aggregate(a) => {
                node = &a.input;
                break;
            }
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(inner))
                if matches!(**inner, LogicalPlan::Union(_)) =>
            {
                return Err("UNION / EXCEPT / INTERSECT are not allowed".into())
            }
            LogicalPlan::Join(j) if j.join_type != JoinType::Inner => {
                return Err(format!(
                    "UNION / EXCEPT / INTERSECT and {} joins are not allowed",
                    j.join_type
                ))
            }
            LogicalPlan::SubqueryAlias(a) if !matches!(*a.input, LogicalPlan::TableScan(_)) => {
                return Err("subqueries and CTEs (WITH) are not allowed".into())
            }
            LogicalPlan::SubqueryAlias(_) | LogicalPlan::TableScan(_) | LogicalPlan::Join(_) => {
                return Err(
                    "the query must aggregate (GROUP BY and/or aggregate functions): raw rows are never output"
                        .into(),
                )
            }
            LogicalPlan::Limit(_) => {
                return Err(
                    "LIMIT / OFFSET are not allowed under an aggregation rule (they single out rows)"
                        .into(),
                )
            }
            other => return Err(format!("{} is not allowed under an aggregation rule", node_name(other))),
        }
    }
    fn below(p: &LogicalPlan) -> Result<(), Why> {
        match p {
            LogicalPlan::TableScan(_) => Ok(()),
            LogicalPlan::SubqueryAlias(a) if matches!(*a.input, LogicalPlan::TableScan(_)) => {
                Ok(())
            }
            LogicalPlan::Filter(f) => below(&f.input),
            LogicalPlan::Join(j) => {
                below(&j.left)?;
                below(&j.right)
            }
            LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Projection(_)
            | LogicalPlan::Aggregate(_) => Err(
                "subqueries and CTEs (WITH) are not allowed: read contract tables directly".into(),
            ),
            other => Err(format!(
                "{} is not allowed under an aggregation rule",
                node_name(other)
            )),
        }
    }
    below(node)
}

/// Check a planned query against an aggregation rule. Returns the scans (for the threshold).
pub fn aggregation<'a>(
    plan: &LogicalPlan,
    rule: &AggregationRule,
    catalog: &Catalog<'a>,
) -> Result<Vec<Scan<'a>>, Why> {
    shape(plan)?;
    let scans = scans(plan, catalog)?;
    once_each(&scans)?;
    let cols = Columns {
        scans: &scans,
        join: rule.join_columns.iter().map(String::as_str).collect(),
        dimensions: rule.dimensions.iter().map(String::as_str).collect(),
    };
    let allowed = &rule.scalar_functions;
    // Above the aggregate.
    let mut node = plan;
    let agg = loop {
        match node {
            LogicalPlan::Projection(p) => {
                p.expr.iter().try_for_each(|e| post_expr(e, allowed))?;
                node = &p.input;
            }
            LogicalPlan::Sort(s) => {
                if s.fetch.is_some() {
                    return Err("LIMIT is not allowed under an aggregation rule".into());
                }
                s.expr.iter().try_for_each(|e| post_expr(&e.expr, allowed))?;
                node = &s.input;
            }
            LogicalPlan::Filter(f) => {
                post_expr(&f.predicate, allowed)?;
                node = &f.input;
            }
            LogicalPlan::Aggregate(a) => break a,
            LogicalPlan::Limit(_) => {
                return Err(
                    "LIMIT / OFFSET are not allowed under an aggregation rule (they single out rows)"
                        .into(),
                )
            }
            LogicalPlan::SubqueryAlias(a) if !matches!(*a.input, LogicalPlan::TableScan(_)) => {
                return Err("subqueries and CTEs (WITH) are not allowed".into())
            }
            LogicalPlan::SubqueryAlias(_) | LogicalPlan::TableScan(_) | LogicalPlan::Join(_) => {
                return Err(
                    "the query must aggregate (GROUP BY and/or aggregate functions): raw rows are never output"
                        .into(),
                )
            }
            other => return Err(format!("{} is not allowed under an aggregation rule", node_name(other))),
        }
    };
    for g in &agg.group_expr {
        pre_expr(g, &cols, allowed, "GROUP BY")?;
    }
    if agg.aggr_expr.is_empty() {
        return Err("the query must compute at least one aggregate".into());
    }
    for e in &agg.aggr_expr {
        aggregate_ok(e, rule, &cols)?;
    }
    below(&agg.input, &cols, allowed, "WHERE")?;
    Ok(scans)
}

fn aggregate_ok(e: &Expr, rule: &AggregationRule, cols: &Columns) -> Result<(), Why> {
    let e = match e {
        Expr::Alias(Alias { expr, .. }) => expr,
        e => e,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
        return Err(format!("{e} is not an aggregate"));
    };
    let name = func.name().to_ascii_lowercase();
    let f = match (name.as_str(), params.distinct) {
        ("count", false) => Agg::Count,
        ("count", true) => Agg::CountDistinct,
        ("sum", false) => Agg::Sum,
        ("sum", true) => Agg::SumDistinct,
        ("avg", false) => Agg::Avg,
        (n, d) => {
            return Err(format!(
                "aggregate {}{n}() is not allowed (count, count distinct, sum, sum distinct, avg)",
                if d { "DISTINCT " } else { "" }
            ))
        }
    };
    if params.filter.is_some() {
        return Err(format!("{}(…) FILTER (WHERE …) is not allowed", f.name()));
    }
    if !params.order_by.is_empty() {
        return Err(format!("{}(… ORDER BY …) is not allowed", f.name()));
    }
    let [arg] = params.args.as_slice() else {
        return Err(format!("{}() takes exactly one column", f.name()));
    };
    let Expr::Column(c) = arg else {
        if matches!(arg, Expr::Literal(..)) && f == Agg::Count {
            return Err(
                "COUNT(*) counts rows, not people (a join can repeat a person's rows): use COUNT(DISTINCT <privacy unit>) if the rule allows it"
                    .into(),
            );
        }
        return Err(format!(
            "{}({arg}): aggregates take a bare column, not an expression",
            f.name()
        ));
    };
    let (q, _) = cols.class(c)?;
    let ok = rule
        .aggregates
        .iter()
        .any(|a| a.function == f && a.columns.contains(&q));
    if !ok {
        return Err(format!(
            "{}({q}) is not allowed by this rule (aggregates)",
            f.name()
        ));
    }
    Ok(())
}

/// Check a planned query against a list rule: `SELECT [DISTINCT] list columns … INNER JOIN …
/// [WHERE …] [ORDER BY …] [LIMIT n]`.
pub fn list<'a>(
    plan: &LogicalPlan,
    rule: &ListRule,
    catalog: &Catalog<'a>,
) -> Result<Vec<Scan<'a>>, Why> {
    let scans = scans(plan, catalog)?;
    let cols = Columns {
        scans: &scans,
        join: rule.join_columns.iter().map(String::as_str).collect(),
        dimensions: rule.list_columns.iter().map(String::as_str).collect(),
    };
    let mut node = plan;
    let mut sorted = false;
    let mut projected = false;
    loop {
        match node {
            LogicalPlan::Limit(l) => {
                if !matches!(&*l.input, LogicalPlan::Sort(_)) {
                    return Err("LIMIT needs ORDER BY (otherwise it picks arbitrary rows)".into());
                }
                if l.skip.is_some() {
                    return Err("OFFSET is not allowed under a list rule".into());
                }
                node = &l.input;
            }
            LogicalPlan::Sort(s) => {
                for e in &s.expr {
                    if projected {
                        return Err("ORDER BY must come last".into());
                    }
                    match &e.expr {
                        Expr::Column(_) => {}
                        other => {
                            return Err(format!("ORDER BY {other}: order by output columns only"))
                        }
                    }
                }
                sorted = true;
                node = &s.input;
            }
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input)) => node = input,
            LogicalPlan::Projection(p) => {
                if projected {
                    return Err("subqueries and CTEs (WITH) are not allowed".into());
                }
                for e in &p.expr {
                    let inner = match e {
                        Expr::Alias(Alias { expr, .. }) => expr.as_ref(),
                        e => e,
                    };
                    match inner {
                        Expr::Column(c) => cols.dimension(c, "the SELECT list")?,
                        other => {
                            return Err(format!(
                                "{other}: a list rule outputs list columns as they are"
                            ))
                        }
                    }
                }
                projected = true;
                node = &p.input;
            }
            _ => break,
        }
    }
    let _ = sorted;
    if !projected {
        return Err("name the list columns to output".into());
    }
    let joins = below(node, &cols, &[], "WHERE")?;
    if joins == 0 {
        return Err("a list rule needs at least one INNER JOIN on join columns".into());
    }
    once_each(&scans)?;
    let owners: std::collections::BTreeSet<&str> = scans
        .iter()
        .filter_map(|s| {
            catalog
                .tables
                .iter()
                .find(|(t, _)| t.name == s.table.name)
                .map(|(_, o)| *o)
        })
        .collect();
    if owners.len() < 2 {
        return Err(
            "a list rule lists the overlap of two parties' tables: join tables of different owners"
                .into(),
        );
    }
    Ok(scans)
}

/// Every table's privacy unit must reach the aggregate's input (for the threshold).
pub fn units_reach<'a>(scans: &[Scan<'a>], agg_input: &LogicalPlan) -> Result<Vec<Column>, Why> {
    let schema = agg_input.schema();
    let mut out = Vec::new();
    for s in scans {
        let c = Column::new(
            Some(TableReference::bare(s.qualifier.clone())),
            &s.table.privacy_unit,
        );
        if !schema.has_column(&c) {
            return Err(format!(
                "table {} ({}) is read but its privacy unit {} does not reach the aggregate",
                s.table.name, s.qualifier, s.table.privacy_unit
            ));
        }
        out.push(c);
    }
    Ok(out)
}
