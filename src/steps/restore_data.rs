//! `pdsup restore`'s own step, run just before the pds job step so that the
//! PDS first starts on the restored data: upload the archive, check every file
//! on the droplet against its checksums, set aside a data dir that holds other
//! data (only with `--force`), and move the restored data into place with a
//! marker naming the archive. A second run of the same restore finds the
//! marker and does nothing; a run cut off before the marker starts over from
//! the archive.

use std::path::PathBuf;

use crate::error::Result;

use super::account::{gather_data_dir, DataDir};
use super::{Action, Ctx, PlanInput, Step, StepId, StepPlan};
use crate::host::facts::file_text;
use crate::host::FileMode;
use crate::pds::data::{restore_script, RESTORED_MARKER};
use crate::settings::PDS_VOLUME_PATH;

pub const ID: StepId = StepId::new("restore_data", "restore data");

/// What to restore.
pub struct RestoreDataStep {
    /// The archive on this machine (already checked against its manifest).
    pub archive: PathBuf,
    /// [`crate::pds::data::Manifest::data_id`] of its data.
    pub data_id: String,
    /// Set aside a data dir that holds other data.
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub data: DataDir,
    /// The archive id a finished restore left in the data dir.
    pub restored: Option<String>,
    /// Whether a PDS allocation runs (on data that would be moved away).
    pub pds_running: bool,
}

impl RestoreDataStep {
    fn upload_path(&self) -> String {
        format!("/var/tmp/pdsup-restore-{}.tar.gz", short(&self.data_id))
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Where a data dir holding other data is moved (a time is appended on the droplet).
pub fn aside_path() -> String {
    format!("{PDS_VOLUME_PATH}.before-restore")
}

pub fn plan(step: &RestoreDataStep, facts: &Facts) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    if !needs_restore(&mut plan, &step.data_id, step.force, facts) {
        return plan;
    }
    let upload = step.upload_path();
    plan.change(
        format!("upload {} to {upload} (root, 0600)", step.archive.display()),
        Action::Upload {
            local: step.archive.clone(),
            path: upload.clone(),
            mode: FileMode::root(0o600),
        },
    );
    let aside = aside_path();
    let what = if facts.data.empty {
        format!("unpack it into {PDS_VOLUME_PATH}, every file checked against its checksum")
    } else {
        format!(
            "set {PDS_VOLUME_PATH} aside whole as {aside}.<time>, then unpack the archive there, \
             every file checked against its checksum"
        )
    };
    plan.change(
        what,
        Action::Run(restore_script(&upload, PDS_VOLUME_PATH, &aside, &step.data_id).cmd()),
    );
    plan
}

/// Whether a restore of `data_id` has work to do on a droplet with `facts`;
/// the note of a restore done already, or the blockers of a data dir that
/// holds other data, go into `plan`. Shared by the restore of an archive and
/// that of a restic snapshot (`steps::restore_snapshot`).
pub fn needs_restore(plan: &mut StepPlan, data_id: &str, force: bool, facts: &Facts) -> bool {
    if facts.restored.as_deref() == Some(data_id) {
        plan.notes.push(format!(
            "{PDS_VOLUME_PATH} already holds this backup's data (restored by an earlier run)"
        ));
        return false;
    }
    if !facts.data.empty {
        if !force {
            plan.blockers.push(format!(
                "{PDS_VOLUME_PATH} on the droplet already holds PDS data{}: restore onto a fresh droplet, \
                 or pass --force to set that data aside whole (as {}.<time>) and restore over it",
                facts
                    .data
                    .site_id
                    .as_deref()
                    .map(|id| format!(" (site id {id})"))
                    .unwrap_or_default(),
                aside_path()
            ));
            return false;
        }
        if facts.pds_running {
            // `pdsup restore --force` stops it before the steps run: still
            // running here means it came back.
            plan.blockers.push(format!(
                "the PDS is running on the data in {PDS_VOLUME_PATH}: stop it (on the droplet: \
                 `nomad job stop -purge pds`), then run the same restore again"
            ));
            return false;
        }
    }
    true
}

/// The facts of a restore: the data dir, the marker of a finished restore,
/// and whether a PDS runs on the data.
pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let data = gather_data_dir(ctx).await?;
    let restored = file_text(&format!("{PDS_VOLUME_PATH}/{RESTORED_MARKER}"))
        .read(ctx.host)
        .await?
        .map(|t| t.trim().to_string());
    let pds_running = if data.empty {
        false
    } else {
        let allocations = ctx
            .nomad()
            .await?
            .allocations("pds")
            .await
            .map_err(crate::error::Error::from)?;
        allocations
            .iter()
            .any(|a| a.client_status == "running" || a.client_status == "pending")
    };
    Ok(Facts {
        data,
        restored,
        pds_running,
    })
}

#[async_trait::async_trait(?Send)]
impl Step for RestoreDataStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts {
            data: DataDir::fresh(),
            restored: None,
            pds_running: false,
        }
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        gather(ctx).await
    }

    fn plan(&self, facts: &Facts, _input: &PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(self, facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(force: bool) -> RestoreDataStep {
        RestoreDataStep {
            archive: "/home/me/pds.example.com-20261203T140000Z.tar.gz".into(),
            data_id: "0123456789abcdef0123".into(),
            force,
        }
    }

    fn facts(empty: bool, restored: Option<&str>, pds_running: bool) -> Facts {
        Facts {
            data: DataDir {
                site_id: (!empty).then(|| "site".to_string()),
                empty,
            },
            restored: restored.map(str::to_string),
            pds_running,
        }
    }

    fn summaries(plan: &StepPlan) -> Vec<&str> {
        plan.changes.iter().map(|c| c.summary.as_str()).collect()
    }

    #[test]
    fn an_empty_data_dir_gets_the_archive_and_a_restored_one_nothing() {
        let p = plan(&step(false), &facts(true, None, false));
        assert!(p.blockers.is_empty());
        assert_eq!(
            summaries(&p),
            [
                "upload /home/me/pds.example.com-20261203T140000Z.tar.gz to /var/tmp/pdsup-restore-0123456789ab.tar.gz (root, 0600)",
                "unpack it into /srv/nomad/pds, every file checked against its checksum",
            ]
        );
        match &p.changes[1].action {
            Action::Run(cmd) => {
                assert!(cmd
                    .script
                    .contains("sha256sum --quiet --strict -c SHA256SUMS"));
                assert!(cmd.script.contains("0123456789abcdef0123"));
            }
            other => panic!("{other:?}"),
        }
        let done = plan(
            &step(false),
            &facts(false, Some("0123456789abcdef0123"), true),
        );
        assert!(done.changes.is_empty() && done.blockers.is_empty());
        assert_eq!(done.notes.len(), 1);
    }

    #[test]
    fn other_data_needs_force_and_a_stopped_pds() {
        let p = plan(&step(false), &facts(false, None, false));
        assert!(p.changes.is_empty());
        assert!(p.blockers[0].contains("pass --force"), "{:?}", p.blockers);
        let other = plan(&step(false), &facts(false, Some("another archive"), false));
        assert!(other.blockers[0].contains("pass --force"));
        let running = plan(&step(true), &facts(false, None, true));
        assert!(
            running.blockers[0].contains("nomad job stop -purge pds"),
            "{:?}",
            running.blockers
        );
        let forced = plan(&step(true), &facts(false, None, false));
        assert!(forced.blockers.is_empty());
        assert!(summaries(&forced)[1].starts_with("set /srv/nomad/pds aside whole"));
    }
}
