//! `pdsup plan` without a droplet: every step of `up` planned against the facts
//! of a fresh droplet. Nothing is contacted and nothing is written.

use crate::error::Result;

use super::Output;
use crate::plan::render_plan;
use crate::settings::Settings;
use crate::state::{PdsSecrets, SiteDir};
use crate::steps::{self, runner, PlanInput, StepReport};

pub fn fresh(site: &SiteDir, settings: &Settings, output: Output) -> Result<()> {
    let secrets = site.load_secrets()?.unwrap_or_else(PdsSecrets::generate);
    let input = PlanInput {
        settings,
        secrets: &secrets,
        env_file: "pds.env",
    };
    let plans = runner::plan_fresh(steps::UP, &input)?;
    if output.json {
        let reports: Vec<StepReport> = plans.iter().map(StepReport::of).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"ok": true, "dry_run": true, "steps": reports})
            )?
        );
    } else {
        let mut text =
            String::from("Plan for a fresh droplet (secrets masked; nothing is contacted):\n\n");
        for plan in &plans {
            text.push_str(&render_plan(plan, true));
            text.push('\n');
        }
        print!("{text}");
    }
    Ok(())
}
