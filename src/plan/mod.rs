//! The plan layer: what a step would change, as data. A plan is a list of
//! changes, each a one-line summary, an optional detail (a diff, the commands
//! in full, secrets masked) and the [`Action`] that carries it out. Plans are
//! built by pure functions in `steps` and rendered here, so `pdsup plan`,
//! `--dry-run`, progress output and tests all read the same values.
//!
//! This layer also defines [`Progress`], the interface through which a run
//! reports what it is doing: `ui` implements it, so nothing below `ui` ever
//! imports `ui`.

mod action;
mod render;

pub use action::{Action, Contents};
pub use render::{diff, render_plan};

/// A step's identity: a stable key for `--json` and a name for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepId {
    key: &'static str,
    name: &'static str,
}

impl StepId {
    pub const fn new(key: &'static str, name: &'static str) -> Self {
        StepId { key, name }
    }

    /// The stable key (`nomad_config`), as in `--json` output.
    pub fn key(self) -> &'static str {
        self.key
    }

    /// The name shown in progress and plans (`nomad.hcl`).
    pub fn name(self) -> &'static str {
        self.name
    }
}

impl serde::Serialize for StepId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.key)
    }
}

/// What a step would do: changes to apply in order, and things to tell the user.
#[derive(Debug)]
pub struct StepPlan {
    pub step: StepId,
    pub changes: Vec<Change>,
    /// Warnings and remarks shown with the plan (never secrets).
    pub notes: Vec<String>,
    /// A problem that stops the run before anything changes (bad OS, port taken).
    pub blockers: Vec<String>,
}

impl StepPlan {
    pub fn new(step: StepId) -> Self {
        StepPlan {
            step,
            changes: Vec::new(),
            notes: Vec::new(),
            blockers: Vec::new(),
        }
    }

    pub fn change(&mut self, summary: impl Into<String>, action: Action) -> &mut Change {
        // A command is shown as it will run, unless the step details it otherwise.
        let detail = match &action {
            Action::Run(cmd) | Action::Apt(cmd) => Some(cmd.script.trim_end().to_string()),
            _ => None,
        };
        self.changes.push(Change {
            summary: summary.into(),
            detail,
            action,
        });
        self.changes.last_mut().expect("just pushed")
    }

    pub fn is_unchanged(&self) -> bool {
        self.changes.is_empty()
    }
}

#[derive(Debug)]
pub struct Change {
    /// One line: "install docker.io from Debian".
    pub summary: String,
    /// A diff or the file/command in full, secrets masked.
    pub detail: Option<String>,
    pub action: Action,
}

impl Change {
    pub fn detail(&mut self, detail: impl Into<String>) -> &mut Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Where a run reports what it is doing. Implemented by `ui::Ui` (spinners,
/// plain lines, the journal); tests may implement it to record events.
pub trait Progress: Sync {
    /// Step `index` of `total` starts gathering its facts.
    fn step_started(&self, index: usize, total: usize, step: StepId);
    /// The step's plan is known; in a dry run the plan is the result.
    fn show_plan(&self, plan: &StepPlan, dry_run: bool);
    fn change_started(&self, change: &Change);
    /// A note on long work within a change (downloads, waits).
    fn progress(&self, message: &str);
    /// A wait the user should know about (another program holds what we need).
    /// Callers repeat it now and then, so a long wait is never silent.
    fn waiting(&self, message: &str);
    fn step_finished(&self, step: StepId, plan: &StepPlan, dry_run: bool);
    /// Something found while applying that the user must know (never a secret).
    fn note(&self, message: &str);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_id_serializes_as_its_key() {
        let id = StepId::new("nomad_config", "nomad.hcl");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"nomad_config\"");
        assert_eq!(id.name(), "nomad.hcl");
    }
}
