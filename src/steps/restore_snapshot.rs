//! `pdsup restore --snapshot`'s own step, run just before the pds job step (as
//! `restore_data` is for an archive): restic restores the snapshot the timer
//! took into a stage beside the data dir, every file is checked against the
//! snapshot's `SHA256SUMS`, and the data moves into place with a marker naming
//! the snapshot. restic and its credentials are on the droplet already (the
//! `backup_schedule` step, without its timer, runs first).

use super::backup_schedule::{STAGE, WRAPPER};
use super::restore_data::{self, aside_path, needs_restore, Facts};
use super::{Action, Ctx, PlanInput, Step, StepId, StepPlan};
use crate::error::Result;
use crate::host::Script;
use crate::pds::data::PLACE_TEMPLATE;
use crate::settings::PDS_VOLUME_PATH;

pub const ID: StepId = StepId::new("restore_snapshot", "restore snapshot");

/// What to restore.
pub struct RestoreSnapshotStep {
    /// The snapshot's full id (resolved from `latest` before the run).
    pub snapshot: String,
    /// Set aside a data dir that holds other data.
    pub force: bool,
}

/// Where restic restores to: beside the data dir, on the same file system.
pub fn target() -> String {
    format!("{PDS_VOLUME_PATH}.pdsup-restic")
}

/// restic's restore into [`target`], then [`PLACE_TEMPLATE`] from the stage
/// path inside it.
pub fn restore_script(snapshot: &str) -> Script {
    let target = target();
    let stage = format!("{target}{STAGE}");
    Script::of(
        "set -eu; umask 077; target={}\nrm -rf \"$target\"; mkdir -p \"$target\"\n",
        &[&target],
    )
    .push(
        "{} restore {} --target \"$target\" >/dev/null\n",
        &[WRAPPER, snapshot],
    )
    .push(
        PLACE_TEMPLATE,
        &[PDS_VOLUME_PATH, &stage, &aside_path(), snapshot],
    )
    .push("; rm -rf \"$target\"; sync", &[])
}

pub fn plan(step: &RestoreSnapshotStep, facts: &Facts) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    if !needs_restore(&mut plan, &step.snapshot, step.force, facts) {
        return plan;
    }
    let short = &step.snapshot[..step.snapshot.len().min(8)];
    let what = if facts.data.empty {
        format!(
            "restore restic snapshot {short} into {PDS_VOLUME_PATH}, every file checked against its checksum"
        )
    } else {
        format!(
            "set {PDS_VOLUME_PATH} aside whole as {}.<time>, then restore restic snapshot {short} there, \
             every file checked against its checksum",
            aside_path()
        )
    };
    plan.change(what, Action::Run(restore_script(&step.snapshot).cmd()));
    plan
}

#[async_trait::async_trait(?Send)]
impl Step for RestoreSnapshotStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts {
            data: super::account::DataDir::fresh(),
            restored: None,
            pds_running: false,
        }
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        restore_data::gather(ctx).await
    }

    fn plan(&self, facts: &Facts, _input: &PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(self, facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::account::DataDir;

    const SNAP: &str = "4f2c9a1be0d3c5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0";

    fn facts(empty: bool, restored: Option<&str>) -> Facts {
        Facts {
            data: DataDir {
                site_id: (!empty).then(|| "site".to_string()),
                empty,
            },
            restored: restored.map(str::to_string),
            pds_running: false,
        }
    }

    #[test]
    fn a_fresh_droplet_gets_the_snapshot_and_a_restored_one_nothing() {
        let step = RestoreSnapshotStep {
            snapshot: SNAP.into(),
            force: false,
        };
        let p = plan(&step, &facts(true, None));
        assert_eq!(p.changes.len(), 1);
        assert_eq!(
            p.changes[0].summary,
            "restore restic snapshot 4f2c9a1b into /srv/nomad/pds, every file checked against its checksum"
        );
        let Action::Run(cmd) = &p.changes[0].action else {
            panic!("{:?}", p.changes[0].action)
        };
        assert!(cmd.script.contains(&format!(
            "/usr/local/sbin/pdsup-restic restore {SNAP} --target"
        )));
        assert!(cmd
            .script
            .contains("stage=/srv/nomad/pds.pdsup-restic/var/lib/pdsup-backup/stage"));
        assert!(cmd
            .script
            .contains("sha256sum --quiet --strict -c SHA256SUMS"));
        assert!(plan(&step, &facts(false, Some(SNAP))).is_unchanged());
        let other = plan(&step, &facts(false, None));
        assert!(
            other.blockers[0].contains("--force"),
            "{:?}",
            other.blockers
        );
    }
}
