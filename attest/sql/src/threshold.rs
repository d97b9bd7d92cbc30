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
/// every scan survive. Refuses a plan with no or several aggregates. Returns the plan and the
/// units it counts: one per class of units an inner join equates (`a.user = b.user` makes
/// every joined row carry the same value in both, so their distinct counts per group are
/// equal), as (qualifier, column).
pub fn apply(
    plan: LogicalPlan,
    scans: &[Scan],
    k: u64,
) -> Result<(LogicalPlan, Vec<(String, String)>), Why> {
    let classes = unit_classes(&plan, scans)?;
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
    let reps: Vec<&Scan> = classes.iter().map(|c| &scans[c[0]]).collect();
    let out = plan
        .transform_up(|node| match node {
            LogicalPlan::Aggregate(a) => match threshold(a, &reps, k) {
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
    let counted = reps
        .iter()
        .map(|s| (s.qualifier.clone(), s.table.privacy_unit.clone()))
        .collect();
    Ok((out.data, counted))
}

/// Scans grouped by inner-join equalities between their privacy units (of the same declared
/// type, so no coercion can merge distinct values): indices into `scans`, each class's first
/// member its representative.
pub(crate) fn unit_classes(plan: &LogicalPlan, scans: &[Scan]) -> Result<Vec<Vec<usize>>, Why> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::{BinaryExpr, JoinType, Operator};
    let mut parent: Vec<usize> = (0..scans.len()).collect();
    fn find(p: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while p[r] != r {
            r = p[r];
        }
        p[i] = r;
        r
    }
    let unit_of = |c: &Column| -> Option<usize> {
        let q = c.relation.as_ref()?.table();
        scans
            .iter()
            .position(|s| s.qualifier == q && s.table.privacy_unit == c.name)
    };
    let ty = |i: usize| {
        let s = &scans[i];
        s.table
            .columns
            .iter()
            .find(|c| c.name == s.table.privacy_unit)
            .map(|c| c.ty)
    };
    let mut pairs = Vec::new();
    plan.apply(|n| {
        if let LogicalPlan::Join(j) = n {
            if j.join_type == JoinType::Inner {
                for (l, r) in &j.on {
                    pairs.push((l.clone(), r.clone()));
                }
                if let Some(f) = &j.filter {
                    for c in datafusion::logical_expr::utils::split_conjunction(f) {
                        if let Expr::BinaryExpr(BinaryExpr {
                            left,
                            op: Operator::Eq,
                            right,
                        }) = c
                        {
                            pairs.push(((**left).clone(), (**right).clone()));
                        }
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| e.to_string())?;
    for (l, r) in pairs {
        let (Expr::Column(l), Expr::Column(r)) = (l, r) else {
            continue;
        };
        if let (Some(a), Some(b)) = (unit_of(&l), unit_of(&r)) {
            if ty(a) == ty(b) {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                if ra != rb {
                    parent[ra.max(rb)] = ra.min(rb);
                }
            }
        }
    }
    let mut classes: Vec<Vec<usize>> = Vec::new();
    for i in 0..scans.len() {
        let r = find(&mut parent, i);
        match classes.iter_mut().find(|c| c[0] == r) {
            Some(c) => c.push(i),
            None => classes.push(vec![i]),
        }
    }
    Ok(classes)
}

fn threshold(a: Aggregate, scans: &[&Scan], k: i64) -> Result<LogicalPlan, Why> {
    let owned: Vec<Scan> = scans.iter().map(|s| (*s).clone()).collect();
    let units = units_reach(&owned, &a.input)?;
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
