//! Differential privacy for aggregation rules with a `dp` section (docs/analysis.md,
//! "Differential privacy"). The query's one aggregate is not run by DataFusion: the engine
//! runs its input (joins and filters, as checked) projected to the privacy unit, the group
//! keys and the aggregates' arguments, then
//!
//! 1. bounds contributions: a unit with more than `max_rows_per_unit` rows keeps that many,
//!    chosen uniformly at random (so it touches at most that many groups, and changes any
//!    count by at most that much);
//! 2. clamps each SUM/AVG argument into the rule's `[lo, hi]` and sums on an integer grid
//!    (exact: no float summation whose sensitivity could be underestimated);
//! 3. selects the groups to release with OpenDP's Laplace threshold over each group's
//!    distinct-unit count (its threshold is at least the rule's `min_distinct_units`; δ
//!    bounds the chance a group of few units slips through);
//! 4. adds discrete Laplace noise (OpenDP `make_laplace`) to each aggregate over the released
//!    groups, with the scale its sensitivity and its share of `epsilon_per_query` give.
//!
//! ε is split evenly between the selection (when there is a GROUP BY) and each noisy
//! aggregate (AVG is a noisy sum over a noisy count: two). What is spent is what OpenDP's
//! privacy maps say at the scales used, summed (basic composition); it never exceeds the
//! rule's ε per query. Randomness: OpenDP's samplers, whose bits come from the kernel
//! (`attest/kernel-random`).
//!
//! Accepted shape: `SELECT <group columns and aggregates, optionally renamed> FROM … [JOIN …]
//! [WHERE …] [GROUP BY …]`, with every table joined on the privacy unit (one person, one
//! unit). HAVING, ORDER BY, LIMIT and expressions over aggregates would act on exact values
//! and are refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    new_empty_array, Array, ArrayRef, Float64Array, Int64Array, RecordBatch,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::AggregateFunction as AggCall;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::{Column, Expr};
use dcr_protocol::analysis::ColumnType;
use dcr_protocol::dp::{DpAccount, DpRule};
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::measurements::{make_laplace, make_laplace_threshold};
use opendp::measures::{Approximate, MaxDivergence};
use opendp::metrics::{AbsoluteDistance, L0PInfDistance, L1Distance};
use opendp::traits::samplers::fill_bytes;

use crate::check::{Scan, Why};

/// Grid steps per clamp bound for Float64 sums (values are rounded to `max|bound| / 2^20`).
const FLOAT_GRID: i64 = 1 << 20;

/// One aggregate of a DP query.
#[derive(Debug, Clone)]
pub(crate) enum Agg {
    /// COUNT(*) (`arg: None`) or COUNT(col): rows (with a non-null `col`).
    Count {
        arg: Option<usize>,
    },
    /// COUNT(DISTINCT unit).
    Units,
    /// SUM(col) / AVG(col), the argument clamped into `[lo, hi]`; `int`: an Int64 column.
    Sum {
        arg: usize,
        lo: i64,
        hi: i64,
        int: bool,
    },
    Avg {
        arg: usize,
        lo: i64,
        hi: i64,
    },
}

/// One output column: a group key or an aggregate.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    Group(usize),
    Agg(usize),
}

/// A DP query ready to run: the row-level plan and how to release its aggregate.
#[derive(Debug, Clone)]
pub struct DpQuery {
    /// Projects `unit, g0.., a0..` from the aggregate's input.
    pub(crate) rows: LogicalPlan,
    pub(crate) groups: usize,
    pub(crate) aggs: Vec<Agg>,
    /// Output columns in order, with their names.
    pub(crate) out: Vec<(String, Out)>,
    pub(crate) rule: DpRule,
    /// The rule's k: the selection threshold is at least this.
    pub(crate) min_units: u64,
}

impl DpQuery {
    pub fn rows_plan(&self) -> &LogicalPlan {
        &self.rows
    }
}

/// Turn a plan the aggregation check accepted into a DP query.
pub(crate) fn prepare(
    plan: &LogicalPlan,
    scans: &[Scan],
    classes: &[Vec<usize>],
    rule: &DpRule,
    min_units: u64,
) -> Result<DpQuery, Why> {
    if classes.len() != 1 {
        return Err(format!(
            "differential privacy needs every table joined on its privacy unit (one person, one unit); this query reads {} unrelated units",
            classes.len()
        ));
    }
    let shape = "under differential privacy a query is SELECT <group columns and aggregates> FROM … [JOIN …] [WHERE …] [GROUP BY …]";
    let (proj, agg) = match plan {
        LogicalPlan::Projection(p) => match p.input.as_ref() {
            LogicalPlan::Aggregate(a) => (Some(p), a),
            other => {
                return Err(format!(
                "{shape}: no HAVING, ORDER BY or LIMIT (they would act on exact values); found {}",
                other.display()
            ))
            }
        },
        LogicalPlan::Aggregate(a) => (None, a),
        other => {
            return Err(format!(
                "{shape}: no HAVING, ORDER BY or LIMIT (they would act on exact values); found {}",
                other.display()
            ))
        }
    };
    let unit_scan = &scans[classes[0][0]];
    let unit = Expr::Column(Column::new(
        Some(unit_scan.qualifier.as_str()),
        unit_scan.table.privacy_unit.as_str(),
    ));
    let is_unit = |e: &Expr| match e {
        Expr::Column(c) => scans.iter().any(|s| {
            c.relation
                .as_ref()
                .is_some_and(|r| r.table() == s.qualifier)
                && s.table.privacy_unit == c.name
        }),
        _ => false,
    };
    let ty_of = |c: &Column| -> Option<ColumnType> {
        let s = scans.iter().find(|s| {
            c.relation
                .as_ref()
                .is_some_and(|r| r.table() == s.qualifier)
        })?;
        s.table
            .columns
            .iter()
            .find(|x| x.name == c.name)
            .map(|x| x.ty)
    };
    let clamp_of = |c: &Column| -> Result<[i64; 2], Why> {
        let s = scans
            .iter()
            .find(|s| {
                c.relation
                    .as_ref()
                    .is_some_and(|r| r.table() == s.qualifier)
            })
            .ok_or_else(|| format!("column {c}: no table"))?;
        rule.clamp
            .get(&format!("{}.{}", s.table.name, c.name))
            .copied()
            .ok_or_else(|| {
                format!(
                    "{}.{} has no clamp bounds in the rule's dp section",
                    s.table.name, c.name
                )
            })
    };
    let mut exprs = vec![unit.alias("__dcr_unit")];
    for (i, g) in agg.group_expr.iter().enumerate() {
        if matches!(g, Expr::GroupingSet(_)) {
            return Err("GROUPING SETS / ROLLUP / CUBE are not allowed".into());
        }
        exprs.push(g.clone().alias(format!("__dcr_g{i}")));
    }
    let mut aggs = Vec::new();
    let mut args = 0usize;
    for e in &agg.aggr_expr {
        let call = match e {
            Expr::AggregateFunction(f) => f,
            Expr::Alias(a) => match a.expr.as_ref() {
                Expr::AggregateFunction(f) => f,
                _ => return Err(format!("{e}: not an aggregate")),
            },
            _ => return Err(format!("{e}: not an aggregate")),
        };
        aggs.push(agg_of(
            call, &is_unit, &ty_of, &clamp_of, &mut exprs, &mut args,
        )?);
    }
    let names: Vec<String> = agg
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let n_groups = agg.group_expr.len();
    let out = match proj {
        None => names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    if i < n_groups {
                        Out::Group(i)
                    } else {
                        Out::Agg(i - n_groups)
                    },
                )
            })
            .collect(),
        Some(p) => {
            let mut out = Vec::new();
            for (e, f) in p.expr.iter().zip(p.schema.fields()) {
                let inner = match e {
                    Expr::Alias(a) => a.expr.as_ref(),
                    other => other,
                };
                let Expr::Column(c) = inner else {
                    return Err(format!(
                        "{shape}: {e} computes over an aggregate's exact value; select the aggregate itself"
                    ));
                };
                let i = agg
                    .schema
                    .index_of_column(c)
                    .map_err(|_| format!("{c}: not an output of the aggregate"))?;
                out.push((
                    f.name().clone(),
                    if i < n_groups {
                        Out::Group(i)
                    } else {
                        Out::Agg(i - n_groups)
                    },
                ));
            }
            out
        }
    };
    let rows = LogicalPlanBuilder::from(agg.input.as_ref().clone())
        .project(exprs)
        .and_then(|b| b.build())
        .map_err(|e| format!("the query does not plan: {e}"))?;
    Ok(DpQuery {
        rows,
        groups: n_groups,
        aggs,
        out,
        rule: rule.clone(),
        min_units,
    })
}

fn agg_of(
    call: &AggCall,
    is_unit: &dyn Fn(&Expr) -> bool,
    ty_of: &dyn Fn(&Column) -> Option<ColumnType>,
    clamp_of: &dyn Fn(&Column) -> Result<[i64; 2], Why>,
    exprs: &mut Vec<Expr>,
    args: &mut usize,
) -> Result<Agg, Why> {
    let name = call.func.name().to_ascii_lowercase();
    let p = &call.params;
    if p.filter.is_some() || !p.order_by.is_empty() {
        return Err("aggregate FILTER / ORDER BY are not allowed".into());
    }
    let mut push = |e: &Expr| {
        exprs.push(e.clone().alias(format!("__dcr_a{}", *args)));
        *args += 1;
        *args - 1
    };
    let col = |e: &Expr| match e {
        Expr::Column(c) => Ok(c.clone()),
        other => Err(format!("{other}: an aggregate takes a bare column")),
    };
    match (name.as_str(), p.distinct, p.args.as_slice()) {
        ("count", false, []) => Ok(Agg::Count { arg: None }),
        ("count", false, [Expr::Literal(..)]) => Ok(Agg::Count { arg: None }),
        ("count", false, [e]) => Ok(Agg::Count { arg: Some(push(e)) }),
        ("count", true, [e]) if is_unit(e) => Ok(Agg::Units),
        ("count", true, [e]) => Err(format!(
            "COUNT(DISTINCT {e}): under differential privacy only a privacy unit may be counted distinct"
        )),
        ("sum", false, [e]) | ("avg", false, [e]) => {
            let c = col(e)?;
            let [lo, hi] = clamp_of(&c)?;
            let int = ty_of(&c) == Some(ColumnType::Int64);
            let arg = push(e);
            Ok(if name == "sum" {
                Agg::Sum { arg, lo, hi, int }
            } else {
                Agg::Avg { arg, lo, hi }
            })
        }
        (n, d, _) => Err(format!(
            "{}{n}: under differential privacy the aggregates are COUNT, COUNT(DISTINCT unit), SUM and AVG",
            if d { "DISTINCT " } else { "" }
        )),
    }
}

/// What a DP query releases: the output and the account of what it spent.
pub struct Released {
    pub schema: SchemaRef,
    pub batch: RecordBatch,
    pub account: DpAccount,
}

#[derive(Debug, thiserror::Error)]
pub enum DpError {
    #[error("OpenDP: {0}")]
    OpenDp(String),
    #[error("{0}")]
    Data(String),
}

fn odp(e: opendp::error::Error) -> DpError {
    DpError::OpenDp(e.to_string().lines().next().unwrap_or("").to_string())
}

/// Per-group running totals (after contribution bounding).
#[derive(Default, Clone)]
struct Group {
    /// Where the group first occurred (for its key values).
    at: (usize, usize),
    units: i64,
    rows: i64,
    /// Per argument: non-null rows, and the grid sum of clamped values.
    nonnull: Vec<i64>,
    sums: Vec<i64>,
}

type Laplace = opendp::core::Measurement<
    VectorDomain<AtomDomain<i64>>,
    L1Distance<i64>,
    MaxDivergence,
    Vec<i64>,
>;

/// OpenDP's discrete Laplace over a vector of integers (one value per released group).
fn laplace(scale: f64) -> Result<Laplace, DpError> {
    make_laplace(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L1Distance::<i64>::default(),
        scale,
        None,
    )
    .map_err(odp)
}

/// The scale of the Laplace noise for sensitivity `d_in` and budget `eps`, as OpenDP's map
/// confirms: the smallest scale tried (d_in/eps, then slightly larger) whose ε ≤ `eps`.
fn laplace_for(d_in: i64, eps: f64) -> Result<(f64, f64), DpError> {
    let mut scale = d_in as f64 / eps;
    for _ in 0..64 {
        let spent = laplace(scale)?.map(&d_in).map_err(odp)?;
        if spent <= eps {
            return Ok((scale, spent));
        }
        scale *= 1.0 + 1e-9_f64.max(spent / eps - 1.0);
    }
    Err(DpError::OpenDp(format!("no Laplace scale reaches ε {eps}")))
}

type Threshold = opendp::core::Measurement<
    MapDomain<AtomDomain<u64>, AtomDomain<i64>>,
    L0PInfDistance<1, AbsoluteDistance<i64>>,
    Approximate<MaxDivergence>,
    HashMap<u64, i64>,
>;

fn threshold_mech(scale: f64, tau: i64) -> Result<Threshold, DpError> {
    make_laplace_threshold(
        MapDomain::new(AtomDomain::<u64>::default(), AtomDomain::<i64>::default()),
        L0PInfDistance(AbsoluteDistance::<i64>::default()),
        scale,
        tau,
        None,
    )
    .map_err(odp)
}

/// Partition selection: the scale for ε and the smallest threshold ≥ `floor` whose δ ≤ `delta`
/// for a unit in up to `m` groups, changing each group's unit count by 1.
fn selection_for(
    m: i64,
    eps: f64,
    delta: f64,
    floor: i64,
) -> Result<(Threshold, f64, i64, (f64, f64)), DpError> {
    let d_in = (
        u32::try_from(m).map_err(|_| DpError::Data("rows per unit".into()))?,
        m,
        1i64,
    );
    let mut scale = m as f64 / eps;
    for _ in 0..64 {
        let spent = threshold_mech(scale, floor.max(1))?
            .map(&d_in)
            .map_err(odp)?;
        if spent.0 <= eps {
            break;
        }
        scale *= 1.0 + 1e-9_f64.max(spent.0 / eps - 1.0);
    }
    let ok = |tau: i64| -> Result<Option<(f64, f64)>, DpError> {
        let s = threshold_mech(scale, tau)?.map(&d_in).map_err(odp)?;
        Ok((s.0 <= eps && s.1 <= delta).then_some(s))
    };
    let (mut lo, mut hi) = (floor.max(1), floor.max(1));
    while ok(hi)?.is_none() {
        lo = hi;
        hi = hi
            .checked_mul(2)
            .filter(|h| *h < 1 << 40)
            .ok_or_else(|| DpError::OpenDp(format!("no threshold reaches δ {delta} at ε {eps}")))?;
    }
    if lo < hi {
        // lo fails (or is the floor itself, checked below); find the smallest passing.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if ok(mid)?.is_some() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        if ok(lo)?.is_some() {
            hi = lo;
        }
    }
    let spent = ok(hi)?.expect("checked");
    Ok((threshold_mech(scale, hi)?, scale, hi, spent))
}

/// Release a DP query's answer from its row-level batches (`unit, g0.., a0..`).
pub fn release(q: &DpQuery, batches: &[RecordBatch]) -> Result<Released, DpError> {
    let m = i64::from(q.rule.max_rows_per_unit);
    // From the plan, not the batches: a filter that matches nothing yields no batch at all,
    // and the answer must not depend on that (an empty input answers like any other).
    let schema = q.rows.schema();
    let n_args = schema.fields().len() - 1 - q.groups;
    let data = |e: datafusion::arrow::error::ArrowError| DpError::Data(e.to_string());
    // Units and group keys as comparable byte rows (one converter each, so that equal values
    // have equal bytes across batches); arguments as Float64/Int64.
    let row_conv = |types: Vec<DataType>| {
        RowConverter::new(types.into_iter().map(SortField::new).collect()).map_err(data)
    };
    let uconv = row_conv(vec![schema.field(0).data_type().clone()])?;
    let gconv = row_conv(
        (0..q.groups)
            .map(|i| schema.field(1 + i).data_type().clone())
            .collect(),
    )?;
    let mut unit_rows = Vec::with_capacity(batches.len());
    let mut group_rows = Vec::with_capacity(batches.len());
    let mut arg_cols: Vec<Vec<ArrayRef>> = Vec::with_capacity(batches.len());
    for b in batches {
        unit_rows.push(
            uconv
                .convert_columns(&[b.column(0).clone()])
                .map_err(data)?,
        );
        if q.groups > 0 {
            let gcols: Vec<ArrayRef> = (0..q.groups).map(|i| b.column(1 + i).clone()).collect();
            group_rows.push(Some(gconv.convert_columns(&gcols).map_err(data)?));
        } else {
            group_rows.push(None);
        }
        arg_cols.push(
            (0..n_args)
                .map(|j| b.column(1 + q.groups + j).clone())
                .collect(),
        );
    }
    // Every row's person and group as dense indices (hash tables over the converters' bytes:
    // nothing is allocated per row). Groups in order of first occurrence for now.
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if total > u32::MAX as usize {
        return Err(DpError::Data(format!(
            "{total} rows: at most {} under DP",
            u32::MAX
        )));
    }
    // DataFusion's hash map (hashbrown, randomly seeded foldhash): SipHash was most of the
    // time here.
    type FastMap<'a> = datafusion::common::HashMap<&'a [u8], u32>;
    let unit_key = |bi: usize, r: usize| unit_rows[bi].row(r).data();
    // People: the rows split in two by a hash of the person's bytes, each half indexed on its
    // own thread (the table of millions of people is bound by memory latency, not by
    // arithmetic); a person's id is its half's offset plus its id in that half.
    let split = FastMap::default().hasher().clone();
    let mut half = Vec::with_capacity(total);
    for (bi, b) in batches.iter().enumerate() {
        for r in 0..b.num_rows() {
            half.push((std::hash::BuildHasher::hash_one(&split, unit_key(bi, r)) & 1) as u8);
        }
    }
    let index_half = |p: u8| -> (Vec<u32>, usize) {
        let mut ix = FastMap::with_capacity_and_hasher(total / 2 + 16, Default::default());
        let mut local = vec![0u32; total];
        let mut i = 0;
        for (bi, b) in batches.iter().enumerate() {
            for r in 0..b.num_rows() {
                if half[i] == p {
                    let n = ix.len() as u32;
                    local[i] = *ix.entry(unit_key(bi, r)).or_insert(n);
                }
                i += 1;
            }
        }
        (local, ix.len())
    };
    let ((l0, n0), (l1, n1)) = std::thread::scope(|s| {
        // No second thread (a limit on threads): both halves here, one after the other.
        match std::thread::Builder::new().spawn_scoped(s, || index_half(1)) {
            Ok(other) => {
                let mine = index_half(0);
                (
                    mine,
                    other.join().expect("the indexing thread does not panic"),
                )
            }
            Err(_) => (index_half(0), index_half(1)),
        }
    });
    let n_units = n0 + n1;
    let row_unit: Vec<u32> = (0..total)
        .map(|i| {
            if half[i] == 0 {
                l0[i]
            } else {
                n0 as u32 + l1[i]
            }
        })
        .collect();
    drop((l0, l1, half));
    let mut row_group: Vec<u32> = Vec::with_capacity(total);
    let mut row_at: Vec<(u32, u32)> = Vec::with_capacity(total);
    let mut group_ix = FastMap::default();
    let mut group_first: Vec<(&[u8], (usize, usize))> = Vec::new();
    for (bi, b) in batches.iter().enumerate() {
        for r in 0..b.num_rows() {
            let g = match &group_rows[bi] {
                None => 0,
                Some(rows) => {
                    let key = rows.row(r).data();
                    let n = group_ix.len() as u32;
                    *group_ix.entry(key).or_insert_with(|| {
                        group_first.push((key, (bi, r)));
                        n
                    })
                }
            };
            row_group.push(g);
            row_at.push((bi as u32, r as u32));
        }
    }
    drop(group_ix);
    if q.groups == 0 && total > 0 {
        group_first.push((&[], (0, 0)));
    }
    // Rows per person.
    let mut count = vec![0u32; n_units];
    for &u in &row_unit {
        count[u as usize] += 1;
    }
    // Per argument: its grid (value units per step) and bounds in steps.
    let mut grid = vec![(1.0f64, 0i64, 0i64); n_args];
    for a in &q.aggs {
        if let Agg::Sum { arg, lo, hi, int } = *a {
            grid[arg] = if int {
                (1.0, lo, hi)
            } else {
                float_grid(lo, hi)
            };
        }
        if let Agg::Avg { arg, lo, hi } = *a {
            grid[arg] = float_grid(lo, hi);
        }
    }
    let f64_args: Vec<Vec<Option<Float64Array>>> = arg_cols
        .iter()
        .map(|cols| {
            cols.iter()
                .map(|c| {
                    matches!(
                        c.data_type(),
                        DataType::Int64 | DataType::Float64 | DataType::Int32
                    )
                    .then(|| cast(c, &DataType::Float64).ok())
                    .flatten()
                    .and_then(|a| a.as_any().downcast_ref::<Float64Array>().cloned())
                })
                .collect()
        })
        .collect();
    let mut accs: Vec<Group> = group_first
        .iter()
        .map(|(_, at)| Group {
            at: *at,
            nonnull: vec![0; n_args],
            sums: vec![0; n_args],
            ..Group::default()
        })
        .collect();
    // One kept row into its group's accumulators.
    let add = |g: &mut Group, bi: usize, r: usize| {
        g.rows += 1;
        for j in 0..n_args {
            let col = &arg_cols[bi][j];
            // NaN counts as NULL (no value to clamp).
            let nan = f64_args[bi][j]
                .as_ref()
                .is_some_and(|f| f.value(r).is_nan());
            if col.is_null(r) || nan {
                continue;
            }
            g.nonnull[j] += 1;
            if let Some(f) = &f64_args[bi][j] {
                let (step, lo, hi) = grid[j];
                if step > 0.0 && hi > lo {
                    let q = ((f.value(r) / step).round() as i64).clamp(lo, hi);
                    // Saturating, not an error: a failure must not depend on the data.
                    g.sums[j] = g.sums[j].saturating_add(q);
                }
            }
        }
    };
    // 1. A person with at most m rows keeps them all: those rows are added in row order (one
    // sequential pass), and a person with one row counts once in its group right there.
    for (i, &u) in row_unit.iter().enumerate() {
        let c = count[u as usize];
        if i64::from(c) <= m {
            let (bi, r) = row_at[i];
            let g = &mut accs[row_group[i] as usize];
            add(g, bi as usize, r as usize);
            if c == 1 {
                g.units += 1;
            }
        }
    }
    // 2. The people with more than one row, their rows gathered by a counting sort: each
    // counts once per group it has a kept row in; one with more than m rows keeps m of them, a
    // uniformly random subset (partial Fisher-Yates, the random words drawn from OpenDP's
    // sampler — the kernel — in one call), added here.
    let multi: Vec<u32> = (0..n_units as u32)
        .filter(|&u| count[u as usize] > 1)
        .collect();
    let mut slot = vec![u32::MAX; n_units];
    let mut start = vec![0u32; multi.len() + 1];
    for (k, &u) in multi.iter().enumerate() {
        slot[u as usize] = k as u32;
        start[k + 1] = start[k] + count[u as usize];
    }
    let mut next = start.clone();
    let mut by_unit = vec![0u32; start[multi.len()] as usize];
    for (i, &u) in row_unit.iter().enumerate() {
        let k = slot[u as usize];
        if k != u32::MAX {
            by_unit[next[k as usize] as usize] = i as u32;
            next[k as usize] += 1;
        }
    }
    drop((next, slot, row_unit));
    let draws: usize = multi
        .iter()
        .filter(|&&u| i64::from(count[u as usize]) > m)
        .count()
        .saturating_mul(m as usize);
    let mut words = RandomWords::new(draws)?;
    // The last person counted in each group (O(1) per row, however many groups a person has).
    let mut last = vec![u32::MAX; accs.len()];
    for k in 0..multi.len() {
        let rows = &mut by_unit[start[k] as usize..start[k + 1] as usize];
        let keep = if rows.len() as i64 > m {
            for i in 0..m as usize {
                let j = i + words.below((rows.len() - i) as u64)? as usize;
                rows.swap(i, j);
            }
            let keep = m as usize;
            for &row in &rows[..keep] {
                let (bi, r) = row_at[row as usize];
                add(
                    &mut accs[row_group[row as usize] as usize],
                    bi as usize,
                    r as usize,
                );
            }
            keep
        } else {
            rows.len()
        };
        for &row in &rows[..keep] {
            let gi = row_group[row as usize] as usize;
            if last[gi] != k as u32 {
                last[gi] = k as u32;
                accs[gi].units += 1;
            }
        }
    }
    // Groups by their key bytes (the order the answer lists them in).
    let mut groups: BTreeMap<Vec<u8>, Group> = group_first
        .iter()
        .map(|(k, _)| k.to_vec())
        .zip(accs)
        .collect();
    // ε split: the selection (with GROUP BY) and each noisy measure.
    let measures: usize = q
        .aggs
        .iter()
        .map(|a| if matches!(a, Agg::Avg { .. }) { 2 } else { 1 })
        .sum::<usize>()
        + usize::from(q.groups > 0);
    let eps_q = q.rule.epsilon_per_query.as_f64();
    let eps_each = eps_q / measures as f64;
    let mut spent_eps = 0.0;
    let mut spent_delta = 0.0;
    let mut threshold = None;
    // 3. Partition selection.
    let keys: Vec<Vec<u8>> = groups.keys().cloned().collect();
    let released: Vec<Vec<u8>> = if q.groups == 0 {
        if groups.is_empty() {
            groups.insert(
                Vec::new(),
                Group {
                    nonnull: vec![0; n_args],
                    sums: vec![0; n_args],
                    ..Group::default()
                },
            );
        }
        vec![Vec::new()]
    } else {
        let floor = i64::try_from(q.min_units).unwrap_or(i64::MAX);
        let (mech, _scale, tau, spent) = selection_for(m, eps_each, q.rule.delta.0, floor)?;
        let counts: HashMap<u64, i64> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u64, groups[k].units))
            .collect();
        let kept = mech.invoke(&counts).map_err(odp)?;
        spent_eps += spent.0;
        spent_delta += spent.1;
        threshold = Some(tau as u64);
        let mut idx: Vec<u64> = kept.into_keys().collect();
        idx.sort_unstable();
        idx.into_iter().map(|i| keys[i as usize].clone()).collect()
    };
    // 4. Noise per aggregate over the released groups.
    let mut scales = BTreeMap::new();
    let mut noisy = |values: Vec<i64>, d_in: i64| -> Result<(Vec<i64>, f64), DpError> {
        let (scale, spent) = laplace_for(d_in, eps_each)?;
        spent_eps += spent;
        Ok((laplace(scale)?.invoke(&values).map_err(odp)?, scale))
    };
    let pick = |f: &dyn Fn(&Group) -> i64| -> Vec<i64> {
        released.iter().map(|k| f(&groups[k])).collect()
    };
    let mut agg_cols: Vec<(ArrayRef, f64)> = Vec::new();
    for a in &q.aggs {
        let col: (ArrayRef, f64) = match *a {
            Agg::Count { arg } => {
                let (v, s) = noisy(pick(&|g| arg.map_or(g.rows, |j| g.nonnull[j])), m)?;
                (
                    Arc::new(Int64Array::from_iter_values(
                        v.into_iter().map(|x| x.max(0)),
                    )),
                    s,
                )
            }
            Agg::Units => {
                let (v, s) = noisy(pick(&|g| g.units), m)?;
                (
                    Arc::new(Int64Array::from_iter_values(
                        v.into_iter().map(|x| x.max(0)),
                    )),
                    s,
                )
            }
            Agg::Sum {
                arg,
                lo: _,
                hi: _,
                int,
            } => {
                let (step, glo, ghi) = grid[arg];
                let bound = glo.unsigned_abs().max(ghi.unsigned_abs()) as i64;
                let d_in = m
                    .checked_mul(bound)
                    .ok_or_else(|| DpError::Data("sensitivity overflow".into()))?;
                let (v, s) = noisy(pick(&|g| g.sums[arg]), d_in)?;
                if int {
                    (Arc::new(Int64Array::from_iter_values(v)), s)
                } else {
                    (
                        Arc::new(Float64Array::from_iter_values(
                            v.into_iter().map(|x| x as f64 * step),
                        )),
                        s * step,
                    )
                }
            }
            Agg::Avg { arg, lo, hi } => {
                let (step, glo, ghi) = grid[arg];
                let bound = glo.unsigned_abs().max(ghi.unsigned_abs()) as i64;
                let d_in = m
                    .checked_mul(bound)
                    .ok_or_else(|| DpError::Data("sensitivity overflow".into()))?;
                let (sum, s1) = noisy(pick(&|g| g.sums[arg]), d_in)?;
                let (cnt, _) = noisy(pick(&|g| g.nonnull[arg]), m)?;
                let v = sum.iter().zip(&cnt).map(|(s, c)| {
                    ((*s as f64 * step) / (*c).max(1) as f64).clamp(lo as f64, hi as f64)
                });
                (Arc::new(Float64Array::from_iter_values(v)), s1 * step)
            }
        };
        agg_cols.push(col);
    }
    // The output, in the query's column order.
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (name, o) in &q.out {
        match o {
            Out::Group(i) => {
                let dt = schema.field(1 + i).data_type().clone();
                let values: Vec<ScalarValue> = released
                    .iter()
                    .map(|k| {
                        let (bi, r) = groups[k].at;
                        ScalarValue::try_from_array(batches[bi].column(1 + i), r)
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| DpError::Data(e.to_string()))?;
                let arr = if values.is_empty() {
                    new_empty_array(&dt)
                } else {
                    ScalarValue::iter_to_array(values).map_err(|e| DpError::Data(e.to_string()))?
                };
                fields.push(Field::new(name, dt, true));
                columns.push(arr);
            }
            Out::Agg(j) => {
                let (arr, scale) = &agg_cols[*j];
                fields.push(Field::new(name, arr.data_type().clone(), false));
                scales.insert(name.clone(), *scale);
                columns.push(arr.clone());
            }
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(data)?;
    if spent_eps > eps_q * (1.0 + 1e-12) {
        return Err(DpError::OpenDp(format!(
            "spent ε {spent_eps} exceeds the rule's {eps_q}"
        )));
    }
    Ok(Released {
        schema,
        batch,
        account: DpAccount {
            epsilon: spent_eps,
            delta: spent_delta,
            scales,
            threshold,
            max_rows_per_unit: q.rule.max_rows_per_unit,
        },
    })
}

/// Uniform random words for the contribution bound, fetched from OpenDP's sampler (the
/// kernel's getrandom in this build) in one call rather than one call per draw.
struct RandomWords {
    buf: Vec<u8>,
    at: usize,
}

impl RandomWords {
    fn new(draws: usize) -> Result<Self, DpError> {
        let mut buf = vec![0u8; draws.saturating_mul(8)];
        fill_bytes(&mut buf).map_err(odp)?;
        Ok(RandomWords { buf, at: 0 })
    }

    fn word(&mut self) -> Result<u64, DpError> {
        if self.at + 8 > self.buf.len() {
            // Past the batch (after a rejection): one more word.
            let mut b = [0u8; 8];
            fill_bytes(&mut b).map_err(odp)?;
            return Ok(u64::from_ne_bytes(b));
        }
        let w = u64::from_ne_bytes(self.buf[self.at..self.at + 8].try_into().expect("8 bytes"));
        self.at += 8;
        Ok(w)
    }

    /// Uniform in `[0, upper)` (`upper` ≥ 1): rejection above the largest multiple of
    /// `upper`, as OpenDP's `sample_uniform_uint_below`.
    fn below(&mut self, upper: u64) -> Result<u64, DpError> {
        let threshold = u64::MAX - u64::MAX % upper;
        loop {
            let w = self.word()?;
            if w < threshold {
                return Ok(w % upper);
            }
        }
    }
}

/// A Float64 argument's grid: value units per step and the bounds in steps.
fn float_grid(lo: i64, hi: i64) -> (f64, i64, i64) {
    let b = lo.unsigned_abs().max(hi.unsigned_abs()).max(1) as f64;
    let step = b / FLOAT_GRID as f64;
    (
        step,
        (lo as f64 / step).round() as i64,
        (hi as f64 / step).round() as i64,
    )
}
