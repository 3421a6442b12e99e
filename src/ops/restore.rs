//! `pdsup restore`: `up`'s steps with the archive's data put in place just
//! before the PDS job first starts ([`RestoreDataStep`]), then a check that the
//! PDS serves every account of the manifest at its recorded repo head, and a
//! crawl request to the site's relays.
//!
//! A backup older than what a relay has seen leaves that relay ahead of the
//! PDS (a "relay desync"): the restore asks each relay for every account's
//! latest commit and, when one has a newer rev than the restored PDS serves,
//! prints the fix as commands for this site (the restore itself succeeded).
//!
//! The site's state comes from the state directory, or, when that has no
//! `pds.env` or `site.toml` for the site, from the archive's encrypted copy:
//! the archive alone rebuilds the site.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::backup::open_site_state;
use super::Output;
use crate::error::{bail, err, Error, Result};
use crate::host::dest::Destination;
use crate::host::ssh::{SshHost, SshOptions};
use crate::host::Host;
use crate::inputs::HttpUrl;
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
    /// `--relay`: the relays to check for a desync and ask to crawl, instead
    /// of the site's `PDS_CRAWLERS`.
    pub relays: Vec<HttpUrl>,
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
        relays: &r.relays,
        destination: &r.destination,
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
    /// `--relay`: checked for a desync and asked to crawl; empty for the
    /// site's `PDS_CRAWLERS`.
    pub relays: &'a [HttpUrl],
    /// The droplet, for the desync fix's commands.
    pub destination: &'a Destination,
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
    let relays = if restored.relays.is_empty() {
        site_crawlers(ctx, settings)?
    } else {
        restored
            .relays
            .iter()
            .map(|u| u.as_str().to_string())
            .collect()
    };
    let restored_revs: Vec<(String, String)> = served
        .iter()
        .filter_map(|(account, latest)| {
            latest
                .as_ref()
                .ok()
                .map(|(_, rev)| (account.did.clone(), rev.clone()))
        })
        .collect();
    let hostname = settings.hostname.as_str();
    let desyncs = check_relays(&relays, &restored_revs, hostname, ui).await;
    let crawled = request_crawls(&relays, settings, ui).await;

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
            "relay_desync": desyncs
                .iter()
                .map(|d| {
                    let mut v = serde_json::to_value(d).expect("plain fields");
                    v["fix"] = desync_fix(d, hostname, restored.destination).into();
                    v
                })
                .collect::<Vec<_>>(),
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
        for desync in &desyncs {
            print!("{}", desync_fix(desync, hostname, restored.destination));
        }
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

/// The relays of the site's `PDS_CRAWLERS`.
fn site_crawlers(ctx: &mut Ctx<'_>, settings: &Settings) -> Result<Vec<String>> {
    let secrets = ctx.secrets()?.clone();
    let env = pds_environment(settings, &secrets)?;
    Ok(env
        .iter()
        .filter(|(k, _)| k == "PDS_CRAWLERS")
        .flat_map(|(_, v)| {
            v.expose()
                .split(',')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect())
}

/// How long one relay may take to answer one call.
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks each relay to crawl the site again; a relay that does not answer is a
/// note, not a failed restore.
async fn request_crawls(relays: &[String], settings: &Settings, ui: &Ui) -> Vec<String> {
    let mut asked = Vec::new();
    for relay in relays {
        let client = Xrpc::with_base(relay.trim_end_matches('/'));
        let call = client.request_crawl(settings.hostname.as_str());
        match tokio::time::timeout(RELAY_TIMEOUT, call).await {
            Ok(Ok(())) => asked.push(relay.clone()),
            Ok(Err(e)) => ui.note(&format!("{relay} did not take the crawl request: {e:#}")),
            Err(_) => ui.note(&format!("{relay} did not answer the crawl request in time")),
        }
    }
    asked
}

/// A relay that has seen newer commits than the restored PDS serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelayDesync {
    pub relay: String,
    /// The relay's last event sequence number for this PDS, when it tells
    /// (`com.atproto.sync.getHostStatus`).
    pub relay_seq: Option<u64>,
    pub repos: Vec<RepoAhead>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RepoAhead {
    pub did: String,
    pub relay_rev: String,
    pub restored_rev: String,
}

/// The repos of `restored` (DID, rev the PDS serves) that a relay knows at a
/// later rev (`seen`: DID, the relay's rev; a repo the relay does not know
/// is absent). Revs are TIDs: they sort in commit order.
pub fn repos_ahead(restored: &[(String, String)], seen: &[(String, String)]) -> Vec<RepoAhead> {
    restored
        .iter()
        .filter_map(|(did, restored_rev)| {
            let (_, relay_rev) = seen.iter().find(|(d, _)| d == did)?;
            (relay_rev > restored_rev).then(|| RepoAhead {
                did: did.clone(),
                relay_rev: relay_rev.clone(),
                restored_rev: restored_rev.clone(),
            })
        })
        .collect()
}

/// Asks every relay for each restored repo's latest commit. A relay that
/// does not answer, or does not know a repo, is a note: only a relay that is
/// known to be ahead is a desync.
async fn check_relays(
    relays: &[String],
    restored: &[(String, String)],
    hostname: &str,
    ui: &Ui,
) -> Vec<RelayDesync> {
    let mut desyncs = Vec::new();
    for relay in relays {
        let client = Xrpc::with_base(relay.trim_end_matches('/'));
        let mut seen = Vec::new();
        for (did, _) in restored {
            match tokio::time::timeout(RELAY_TIMEOUT, client.latest_commit(did)).await {
                Ok(Ok((_, rev))) => seen.push((did.clone(), rev)),
                Ok(Err(e)) => ui.note(&format!(
                    "{relay} has no latest commit of {did} ({e:#}); not checked for a desync"
                )),
                Err(_) => ui.note(&format!(
                    "{relay} did not answer for {did} in time; not checked for a desync"
                )),
            }
        }
        let repos = repos_ahead(restored, &seen);
        if repos.is_empty() {
            continue;
        }
        let relay_seq = tokio::time::timeout(RELAY_TIMEOUT, client.host_seq(hostname))
            .await
            .ok()
            .and_then(|r| r.ok());
        desyncs.push(RelayDesync {
            relay: relay.clone(),
            relay_seq,
            repos,
        });
    }
    desyncs
}

/// The PDS README's "Fixing a Relay desync", as commands for this site: the
/// relay's last sequence number for the host, the PDS stopped, its
/// `repo_seq` moved past that number, the PDS started again by `up`, a crawl
/// requested.
pub fn desync_fix(desync: &RelayDesync, hostname: &str, dest: &Destination) -> String {
    let mut ssh = String::from("ssh");
    if let Some(port) = dest.port {
        ssh.push_str(&format!(" -p {port}"));
    }
    ssh.push(' ');
    if let Some(user) = &dest.user {
        ssh.push_str(&format!("{user}@"));
    }
    ssh.push_str(&dest.host);
    let behind: Vec<String> = desync
        .repos
        .iter()
        .map(|r| {
            format!(
                "{} (the relay has rev {}, the restored PDS {})",
                r.did, r.relay_rev, r.restored_rev
            )
        })
        .collect();
    let (seq_line, seq) = match desync.relay_seq {
        Some(seq) => (
            format!("the relay's last sequence number for {hostname} is {seq}"),
            (seq + 1).to_string(),
        ),
        None => (
            format!(
                "read the relay's last sequence number for {hostname}: \
                 `goat relay host status {hostname} --json` (its \"seq\"); N below is that plus one"
            ),
            "N".to_string(),
        ),
    };
    format!(
        "warning: {relay} has seen newer commits than this backup holds: {behind}.\n\
         The relay ignores this PDS's events until its sequence passes the relay's \
         (\"Fixing a Relay desync\" in the PDS README):\n\
         \x20 1. {seq_line}\n\
         \x20 2. stop the PDS: {ssh} nomad job stop -purge pds\n\
         \x20 3. move its sequence on: {ssh} \"apt-get install -y -q sqlite3 && sqlite3 /srv/nomad/pds/sequencer.sqlite \
         \\\"UPDATE sqlite_sequence SET seq = {seq} WHERE name = 'repo_seq'\\\"\"\n\
         \x20 4. start it again: pdsup up {dest} --hostname {hostname}\n\
         \x20 5. ask the relay to crawl: pdsup request-crawl {relay} --hostname {hostname}\n",
        relay = desync.relay,
        behind = behind.join(", "),
    )
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

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_relay_is_ahead_only_for_repos_it_knows_at_a_later_rev() {
        let restored = pairs(&[
            ("did:plc:a", "3kaaa"),
            ("did:plc:b", "3kbbb"),
            ("did:plc:c", "3kccc"),
        ]);
        // a: the relay is ahead; b: the same rev; c: the relay is behind; d: not restored.
        let seen = pairs(&[
            ("did:plc:a", "3kzzz"),
            ("did:plc:b", "3kbbb"),
            ("did:plc:c", "3k000"),
            ("did:plc:d", "3kzzz"),
        ]);
        assert_eq!(
            repos_ahead(&restored, &seen),
            [RepoAhead {
                did: "did:plc:a".into(),
                relay_rev: "3kzzz".into(),
                restored_rev: "3kaaa".into(),
            }]
        );
        assert!(repos_ahead(&restored, &seen[1..]).is_empty());
        assert!(repos_ahead(&restored, &[]).is_empty());
    }

    #[test]
    fn the_desync_fix_names_this_site_its_droplet_and_the_relay_s_sequence() {
        let desync = RelayDesync {
            relay: "https://relay.example.net".into(),
            relay_seq: Some(41),
            repos: vec![RepoAhead {
                did: "did:plc:a".into(),
                relay_rev: "3kzzz".into(),
                restored_rev: "3kaaa".into(),
            }],
        };
        let dest: Destination = "admin@198.51.100.4:2222".parse().unwrap();
        let fix = desync_fix(&desync, "pds.example.com", &dest);
        for want in [
            "https://relay.example.net has seen newer commits",
            "did:plc:a (the relay has rev 3kzzz, the restored PDS 3kaaa)",
            "is 41",
            "ssh -p 2222 admin@198.51.100.4 nomad job stop -purge pds",
            "sqlite3 /srv/nomad/pds/sequencer.sqlite \\\"UPDATE sqlite_sequence SET seq = 42 WHERE name = 'repo_seq'\\\"\"",
            "pdsup up admin@198.51.100.4:2222 --hostname pds.example.com",
            "pdsup request-crawl https://relay.example.net --hostname pds.example.com",
        ] {
            assert!(fix.contains(want), "{want:?} not in:\n{fix}");
        }
        // Without the relay's sequence number: how to read it, and N in its place.
        let unknown = RelayDesync {
            relay_seq: None,
            ..desync
        };
        let fix = desync_fix(&unknown, "pds.example.com", &"pds1".parse().unwrap());
        assert!(
            fix.contains("goat relay host status pds.example.com --json"),
            "{fix}"
        );
        assert!(fix.contains("SET seq = N WHERE"), "{fix}");
        assert!(fix.contains("ssh pds1 nomad job stop"), "{fix}");
    }
}
