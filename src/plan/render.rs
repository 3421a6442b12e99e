//! Plans as text, for `pdsup plan`, `--dry-run` and progress output.

use super::StepPlan;

/// A step's plan as text: each change, with its detail indented.
pub fn render_plan(plan: &StepPlan, details: bool) -> String {
    let mut out = format!("== {} ==\n", plan.step.name());
    if plan.changes.is_empty() {
        out.push_str("  (no changes)\n");
    }
    for change in &plan.changes {
        out.push_str(&format!("  + {}\n", change.summary));
        if let (true, Some(detail)) = (details, &change.detail) {
            for line in detail.lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
    }
    for note in &plan.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    for blocker in &plan.blockers {
        out.push_str(&format!("  BLOCKED: {blocker}\n"));
    }
    out
}

/// A unified diff of two texts, for plans (`--- before` / `+++ after`).
pub fn diff(before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header("before", "after")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, StepId};

    #[test]
    fn diff_shows_added_lines() {
        let d = diff("a\nb\n", "a\nb\nc\n");
        assert!(d.contains("+c"), "{d}");
        assert!(d.contains("--- before"));
    }

    #[test]
    fn a_plan_renders_changes_details_notes_and_blockers() {
        let mut plan = StepPlan::new(StepId::new("dns", "dns"));
        plan.change(
            "restart nomad",
            Action::Run(crate::host::Cmd::sh("systemctl restart nomad")),
        )
        .detail("line one\nline two");
        plan.notes.push("a note".into());
        plan.blockers.push("port 80 is taken".into());
        let text = render_plan(&plan, true);
        assert_eq!(
            text,
            "== dns ==\n  + restart nomad\n      line one\n      line two\n  note: a note\n  BLOCKED: port 80 is taken\n"
        );
        assert!(!render_plan(&plan, false).contains("line one"));
    }
}
