//! `pdsup restore`: `up`'s steps with the archive's data put in place just
//! before the PDS job first starts ([`RestoreDataStep`]), then a check that the
//! PDS serves every account of the manifest at its recorded repo head, and a
//! crawl request to the site's relays.
//!
//! The site's state comes from the state directory, or, when that has no
//! `pds.env` or `site.toml` for the site, from the archive's encrypted copy:
//! the archive alone rebuilds the site.

use std::path::PathBuf;

use super::backup::open_site_state;
use super::Output;
use crate::error::{bail, err, Error, Result};
use crate::host::dest::Destination;
use crate::host::ssh::{SshHost, SshOptions};
use crate::host::Host;
use crate::pds::data::Manifest;
use crate::pds::data::RepoHead;
use crate::pds::env::pds_environment;
use crate::pds::xrpc::Xrpc;
use crate::plan::Progress;
use crate::secret::Secret;
use crate::settings::Settings;
use crate::state::{SiteDir, SiteRecord};
use crate::steps::restore_data::{self, RestoreDataStep};
use crate::steps::{self, AnyStep, Ctx};
use crate::ui::summary::Summary;
use crate::ui::Ui;

/// One restore, resolved and checked.
pub struct Restore<'a> {
    pub site: &'a SiteDir,
    pub settings: &'a Settings,
    pub record: SiteRecord,
    pub destination: Destination,
    pub options: SshOptions,
    /// Checked against its manifest already.
    pub archive: PathBuf,
    pub manifest: Manifest,
    pub force: bool,
}

/// Writes the site's `pds.env` and `site.toml` from the archive where the
/// state directory has none (asking for the passphrase only then). Files
/// already there are kept as they are.
pub fn restore_site_state(
    site: &SiteDir,
    sealed: &[u8],
    passphrase: impl FnOnce() -> Result<Secret>,
) -> Result<()> {
    let need_env = !site.env_file().exists();
    let need_record = !site.site_file().exists();
    if !need_env && !need_record {
        return Ok(());
    }
    let state = open_site_state(sealed, &passphrase()?)?;
    if need_record {
        let record: SiteRecord = toml::from_str(&state.site_toml)
            .map_err(|e| err!(BadInput, "the archive's site.toml cannot be read: {e}"))?;
        site.save_record(&record)?;
    }
    if need_env {
        site.save_env_file(&state.pds_env)?;
    }
    // The restored state must read back exactly (secrets complete, fields valid).
    site.load_secrets()?;
    site.load_record()?;
    Ok(())
}

/// `steps::UP` with `restore` just before the pds job step.
pub fn steps_with(restore: &dyn AnyStep) -> Vec<&dyn AnyStep> {
    let mut list: Vec<&dyn AnyStep> = Vec::with_capacity(steps::UP.len() + 1);
    for step in steps::UP {
        if step.id() == steps::pds_job::ID {
            list.push(restore);
        }
        list.push(*step);
    }
    list
}

pub async fn restore(r: Restore<'_>, output: Output) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let host = SshHost::connect(&r.destination, &r.options).await?;
    r.site.save_record(&r.record)?;
    let mut ctx = Ctx::new(&host, r.settings, r.site, r.record, &ui);
    ctx.destination_host = Some(r.destination.host.clone());
    let step = RestoreDataStep {
        archive: r.archive.clone(),
        data_id: r.manifest.data_id(),
        force: r.force,
    };
    if r.force {
        stop_pds_on_other_data(&mut ctx, &step.data_id, &ui).await?;
    }
    let list = steps_with(&step);
    let report = match steps::runner::run(&mut ctx, &list, false).await {
        Ok(report) => report,
        Err(e) => {
            ui.clear();
            return Err(e.context(format!(
                "pdsup restore stopped on {}; fix the cause and run the same restore again: finished steps are skipped",
                host.describe()
            )));
        }
    };

    let restored_now = report
        .steps
        .iter()
        .any(|s| s.step == restore_data::ID && !s.changes.is_empty());
    let source = serde_json::json!({ "archive": r.archive });
    let restored = Restored {
        accounts: &r.manifest.accounts,
        taken_at: &r.manifest.taken_at,
        restored_now,
        source,
    };
    check_and_report(&mut ctx, r.settings, r.site, &report, restored, &ui).await
}

/// What a restore put in place, for the checks after it.
pub struct Restored<'a> {
    /// Every account of the backup, at the head it recorded.
    pub accounts: &'a [RepoHead],
    pub taken_at: &'a str,
    /// Whether this run put the data in place (else an earlier run did).
    pub restored_now: bool,
    /// Where the data came from, for `--json` (`archive` or `snapshot`).
    pub source: serde_json::Value,
}

/// After a restore's steps: every account of the backup served at the head
/// the backup recorded, the crawlers asked to crawl again, the summary.
pub async fn check_and_report(
    ctx: &mut Ctx<'_>,
    settings: &Settings,
    site: &SiteDir,
    report: &steps::RunReport,
    restored: Restored<'_>,
    ui: &Ui,
) -> Result<()> {
    // When an earlier run put the data in place, the PDS may have taken
    // commits since, so a later rev is fine then.
    let pds = ctx.pds().await?;
    let mut served = Vec::new();
    for account in restored.accounts {
        served.push((account, pds.latest_commit(&account.did).await));
    }
    let wrong = head_problems(&served, restored.restored_now);
    if !wrong.is_empty() {
        bail!(
            Unhealthy,
            "the restored PDS does not serve the backup's repositories as recorded: {}",
            wrong.join("; ")
        );
    }
    let crawled = request_crawls(ctx, settings, ui).await?;

    let summary = Summary {
        settings,
        outcome: &ctx.outcome,
        report,
        env_file: site.env_file().display().to_string(),
        dry_run: false,
    };
    if ui.json() {
        let mut json = summary.json();
        let mut about = serde_json::json!({
            "taken_at": restored.taken_at,
            "accounts": restored.accounts,
            "crawl_requested": crawled,
        });
        if let (Some(about), Some(source)) = (about.as_object_mut(), restored.source.as_object()) {
            about.extend(source.clone());
        }
        json["restore"] = about;
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", summary.text());
        println!(
            "restored the backup taken {}: {} account(s) served at their recorded repo heads",
            restored.taken_at,
            restored.accounts.len()
        );
        if !crawled.is_empty() {
            println!("asked {} to crawl the PDS again", crawled.join(", "));
        }
        println!(
            "if a relay saw newer commits than this backup holds, follow \"Fixing a Relay desync\" in the PDS README"
        );
    }
    Ok(())
}

/// With `--force`, a PDS running on data this archive did not put there is
/// stopped (its job purged; the pds job step registers it again after the
/// restore), so that its data can be set aside whole, with nothing writing to it.
pub async fn stop_pds_on_other_data(ctx: &mut Ctx<'_>, data_id: &str, ui: &Ui) -> Result<()> {
    let facts = restore_data::gather(ctx).await?;
    let ours = facts.restored.as_deref() == Some(data_id);
    if ours || facts.data.empty || !facts.pds_running {
        return Ok(());
    }
    ui.note("--force: stopping the PDS, whose data is set aside before the restore");
    let nomad = ctx.nomad().await?;
    // Stopped first and purged only once its allocation has stopped: a purged
    // job's allocations are no longer listed, so waiting on them would not
    // see a container that still runs (and writes to the data).
    nomad.deregister("pds", false).await.map_err(Error::from)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let allocations = nomad.allocations("pds").await.map_err(Error::from)?;
        if !allocations
            .iter()
            .any(|a| a.client_status == "running" || a.client_status == "pending")
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                TimedOut,
                "the PDS job was stopped, but its allocation still runs after 3 minutes: \
                 check `nomad job status pds` on the droplet, then run the same restore again"
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    // Purged, so that the pds job step registers it again from scratch.
    nomad.deregister("pds", true).await.map_err(Error::from)?;
    Ok(())
}

/// What is wrong with the heads the PDS serves (`(cid, rev)` or the error
/// asking for them) against the backup's. `exact`: the data was put in place
/// by this run, so nothing can have been committed since.
pub fn head_problems(served: &[(&RepoHead, Result<(String, String)>)], exact: bool) -> Vec<String> {
    let mut wrong = Vec::new();
    for (account, latest) in served {
        match latest {
            Ok((cid, _)) if *cid == account.head => {}
            // Revs are TIDs: they sort in commit order.
            Ok((_, rev)) if !exact && *rev > account.rev => {}
            Ok((cid, rev)) => wrong.push(format!(
                "{} is at {cid} (rev {rev}), the backup has {} (rev {})",
                account.did, account.head, account.rev
            )),
            Err(e) => wrong.push(format!("{}: {e:#}", account.did)),
        }
    }
    wrong
}

/// Asks each of the site's crawlers (`PDS_CRAWLERS`) to crawl it again; a relay
/// that does not answer is a note, not a failed restore.
async fn request_crawls(ctx: &mut Ctx<'_>, settings: &Settings, ui: &Ui) -> Result<Vec<String>> {
    let secrets = ctx.secrets()?.clone();
    let env = pds_environment(settings, &secrets)?;
    let crawlers: Vec<String> = env
        .iter()
        .filter(|(k, _)| k == "PDS_CRAWLERS")
        .flat_map(|(_, v)| {
            v.expose()
                .split(',')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect();
    let mut asked = Vec::new();
    for crawler in crawlers {
        match Xrpc::with_base(crawler.trim_end_matches('/'))
            .request_crawl(settings.hostname.as_str())
            .await
        {
            Ok(()) => asked.push(crawler),
            Err(e) => ui.note(&format!("{crawler} did not take the crawl request: {e:#}")),
        }
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_step_runs_just_before_the_pds_job_first_starts() {
        let step = RestoreDataStep {
            archive: "a.tar.gz".into(),
            data_id: "id".into(),
            force: false,
        };
        let ids: Vec<&str> = steps_with(&step).iter().map(|s| s.id().key()).collect();
        assert_eq!(ids.len(), steps::UP.len() + 1);
        let at = ids.iter().position(|id| *id == "restore_data").unwrap();
        assert_eq!(ids[at + 1], "pds_job", "{ids:?}");
        assert_eq!(ids.iter().filter(|id| **id == "restore_data").count(), 1);
    }

    #[test]
    fn heads_must_match_after_a_restore_and_may_only_move_on_after_an_earlier_one() {
        let head = RepoHead {
            did: "did:plc:a".into(),
            head: "bafyhead".into(),
            rev: "3kaaa".into(),
        };
        let same = || Ok(("bafyhead".to_string(), "3kaaa".to_string()));
        let later = || Ok(("bafylater".to_string(), "3kbbb".to_string()));
        let older = || Ok(("bafyolder".to_string(), "3k000".to_string()));
        assert!(head_problems(&[(&head, same())], true).is_empty());
        assert!(head_problems(&[(&head, same())], false).is_empty());
        assert_eq!(head_problems(&[(&head, later())], true).len(), 1);
        assert!(head_problems(&[(&head, later())], false).is_empty());
        assert_eq!(head_problems(&[(&head, older())], false).len(), 1);
        let missing = head_problems(
            &[(&head, Err(crate::error::Error::msg("RepoNotFound")))],
            false,
        );
        assert_eq!(missing, ["did:plc:a: RepoNotFound"]);
    }
}
