//! The runner: plans and applies a list of steps in order, with the same
//! progress output, `--dry-run` and report whatever the subcommand.

use crate::error::{Context, Result};

use super::{AnyStep, Ctx, PlanInput};
use crate::host::Cmd;
use crate::plan::{StepId, StepPlan};

/// How a run went, step by step.
#[derive(Debug, Default, serde::Serialize)]
pub struct RunReport {
    pub steps: Vec<StepReport>,
}

#[derive(Debug, serde::Serialize)]
pub struct StepReport {
    pub step: StepId,
    pub changes: Vec<String>,
    pub notes: Vec<String>,
}

impl StepReport {
    pub fn of(plan: &StepPlan) -> Self {
        StepReport {
            step: plan.step,
            changes: plan.changes.iter().map(|c| c.summary.clone()).collect(),
            notes: plan.notes.clone(),
        }
    }
}

impl RunReport {
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| !s.changes.is_empty())
    }
}

/// Plans and applies `steps` in order. With `dry_run`, plans only: each step
/// is still planned against the droplet as it is, so later steps may show work
/// that earlier steps would make unnecessary.
pub async fn run(ctx: &mut Ctx<'_>, steps: &[&dyn AnyStep], dry_run: bool) -> Result<RunReport> {
    let mut report = RunReport::default();
    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        let id = step.id();
        ctx.progress.step_started(i + 1, total, id);
        // Errors name their step as `--json` names it in the report.
        let in_step = |e: crate::error::Error| e.with_step(id.key());
        // Every step's facts in one round trip at the start (all of them, on a
        // droplet that needs no change); after a change, this step's own.
        let probes: Vec<Cmd> = match i {
            0 => steps.iter().flat_map(|s| s.probes(ctx.settings)).collect(),
            _ => step.probes(ctx.settings),
        };
        ctx.prefetch(&probes)
            .await
            .with_context(|| format!("{}: gathering facts", id.name()))
            .map_err(in_step)?;
        let plan = step
            .plan_live(ctx)
            .await
            .with_context(|| format!("{}: gathering facts", id.name()))
            .map_err(in_step)?;
        ctx.progress.show_plan(&plan, dry_run);
        if !plan.blockers.is_empty() {
            return Err(in_step(crate::err!(
                Blocked,
                "{} found problems; nothing was changed by this step:\n  - {}",
                id.name(),
                plan.blockers.join("\n  - ")
            )));
        }
        if !dry_run && !plan.changes.is_empty() {
            ctx.forget_facts();
            for change in &plan.changes {
                ctx.progress.change_started(change);
                step.apply(ctx, &change.action)
                    .await
                    .with_context(|| format!("{}: {}", id.name(), change.summary))
                    .map_err(in_step)?;
            }
            let recheck = async {
                ctx.prefetch(&step.probes(ctx.settings)).await?;
                step.recheck(ctx).await
            };
            recheck
                .await
                .with_context(|| format!("{}: checking the result", id.name()))
                .map_err(in_step)?;
        }
        ctx.progress.step_finished(id, &plan, dry_run);
        report.steps.push(StepReport::of(&plan));
    }
    Ok(report)
}

/// Every step's plan against a fresh droplet, with no droplet to ask.
pub fn plan_fresh(steps: &[&dyn AnyStep], input: &PlanInput<'_>) -> Result<Vec<StepPlan>> {
    steps.iter().map(|step| step.plan_fresh(input)).collect()
}
