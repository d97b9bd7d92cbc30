//! The distinct-unit threshold, written into the plan by the engine (never trusted to the
//! query): the aggregate also counts, per table read, the distinct privacy units of each
//! group; a filter keeps the groups where every count reaches k; a projection restores the
//! query's own columns. The query above sees the same schema as before.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::functions_aggregate::count::count_distinct;
use datafusion::logical_expr::{Aggregate, Filter, LogicalPlan, Projection};
use datafusion::prelude::{lit, Column, Expr};

use crate::check::{units_reach, Scan, Why};

/// Name prefix of the helper columns (`__dcr_units_0`, …); the engine's post-check looks for
/// them in the optimized plan.
pub const UNITS: &str = "__dcr_units_";

/// Rewrite the one aggregate of `plan` so that only groups of at least `k` distinct units of
/// every scan survive. Refuses a plan with no or several aggregates.
pub fn apply(plan: LogicalPlan, scans: &[Scan], k: u64) -> Result<LogicalPlan, Why> {
    let mut aggregates = 0;
    plan.apply_with_subqueries(|n| {
        if matches!(n, LogicalPlan::Aggregate(_)) {
            aggregates += 1;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    if aggregates != 1 {
        return Err(format!(
            "the query has {aggregates} aggregates; the threshold needs exactly one"
        ));
    }
    let k = i64::try_from(k).map_err(|_| "k out of range".to_string())?;
    let mut failure = None;
    let out = plan
        .transform_up(|node| match node {
            LogicalPlan::Aggregate(a) => match threshold(a, scans, k) {
                Ok(p) => Ok(Transformed::yes(p)),
                Err(e) => {
                    failure = Some(e);
                    Ok(Transformed::no(LogicalPlan::EmptyRelation(
                        datafusion::logical_expr::EmptyRelation {
                            produce_one_row: false,
                            schema: Arc::new(datafusion::common::DFSchema::empty()),
                        },
                    )))
                }
            },
            other => Ok(Transformed::no(other)),
        })
        .map_err(|e| e.to_string())?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(out.data)
}

fn threshold(a: Aggregate, scans: &[Scan], k: i64) -> Result<LogicalPlan, Why> {
    let units = units_reach(scans, &a.input)?;
    if units.is_empty() {
        return Err("the query reads no contract table".into());
    }
    let original = a.schema.clone();
    let mut aggr_expr = a.aggr_expr.clone();
    let mut keep: Option<Expr> = None;
    for (i, u) in units.into_iter().enumerate() {
        let name = format!("{UNITS}{i}");
        aggr_expr.push(count_distinct(Expr::Column(u)).alias(&name));
        let c = Expr::Column(Column::new_unqualified(&name)).gt_eq(lit(k));
        keep = Some(match keep {
            None => c,
            Some(k) => k.and(c),
        });
    }
    let agg = Aggregate::try_new(a.input.clone(), a.group_expr.clone(), aggr_expr)
        .map_err(|e| format!("threshold: {e}"))?;
    let filter = Filter::try_new(
        keep.expect("at least one unit"),
        Arc::new(LogicalPlan::Aggregate(agg)),
    )
    .map_err(|e| format!("threshold: {e}"))?;
    let cols = original
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect::<Vec<_>>();
    let proj = Projection::try_new(cols, Arc::new(LogicalPlan::Filter(filter)))
        .map_err(|e| format!("threshold: {e}"))?;
    if proj.schema.fields() != original.fields() {
        return Err("threshold: the rewritten aggregate changed the query's columns".into());
    }
    Ok(LogicalPlan::Projection(proj))
}
