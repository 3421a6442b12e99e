//! `pdsup down [--purge-data]`: stops and removes the Nomad jobs pdsup
//! deployed (those carrying its `managed-by = pdsup` mark; a job of the
//! user's, an adopted IO included, is never touched). The PDS data on the
//! droplet stays, unless `--purge-data` and the hostname typed to confirm it.
//! Docker, Nomad and Caddy stay installed: `pdsup up` brings the site back.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::site::Session;
use super::Output;
use crate::error::{bail, Result};
use crate::host::Cmd;
use crate::nomad::job::is_pdsups;
use crate::plan::Progress;
use crate::settings::PDS_VOLUME_PATH;
use crate::ui::Ui;

const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// The result, for text and `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub dry_run: bool,
    /// The jobs stopped and removed (or that would be).
    pub jobs: Vec<String>,
    /// Jobs Nomad runs that are not pdsup's, left alone.
    pub kept: Vec<String>,
    pub data_purged: bool,
}

/// Whether `typed` confirms purging `hostname`'s data: exactly the hostname.
pub fn confirms(typed: &str, hostname: &str) -> bool {
    typed.trim() == hostname
}

/// Removes everything in the PDS data dir (the directory itself stays: it is
/// Nomad's host volume).
fn purge_command() -> Cmd {
    Cmd::argv([
        "find",
        PDS_VOLUME_PATH,
        "-mindepth",
        "1",
        "-xdev",
        "-delete",
    ])
}

/// `pdsup down`. `purge_confirmed` is the caller's: the hostname was typed.
pub async fn down(
    mut session: Session,
    purge_confirmed: bool,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let mut ctx = session.ctx(&ui);
    let nomad = ctx.nomad().await?;
    let mut jobs = Vec::new();
    let mut kept = Vec::new();
    for id in nomad.job_ids().await? {
        match nomad.job(&id).await? {
            Some(spec) if is_pdsups(&spec) => jobs.push(id),
            Some(_) => kept.push(id),
            None => {}
        }
    }
    if !dry_run {
        for id in &jobs {
            ui.progress(&format!("stopping and removing the {id} job"));
            nomad.deregister(id, true).await?;
        }
        // The data may go only once no task holds it open.
        let deadline = Instant::now() + STOP_TIMEOUT;
        for id in &jobs {
            loop {
                let allocs = nomad.allocations(id).await?;
                let running = allocs
                    .iter()
                    .any(|a| !matches!(a.client_status.as_str(), "complete" | "failed" | "lost"));
                if !running {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        TimedOut,
                        "the {id} job's allocations did not stop within {}s; see `nomad job status {id}` on the droplet",
                        STOP_TIMEOUT.as_secs()
                    );
                }
                ui.progress(&format!("waiting for the {id} job to stop"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    drop(ctx);
    let mut data_purged = false;
    if purge_confirmed && !dry_run {
        ui.progress(&format!("deleting the PDS data in {PDS_VOLUME_PATH}"));
        session.host.run(&purge_command()).await?;
        // The site has no account on the droplet any more: the next `up`
        // creates one, instead of refusing data that is not this site's.
        let record = &mut session.site.record;
        record.account_did = None;
        record.site_id = None;
        record.account_intent = None;
        session.site.dir.save_record(record)?;
        data_purged = true;
    }
    ui.clear();
    let report = Report {
        ok: true,
        dry_run,
        jobs,
        kept,
        data_purged,
    };
    super::print(output, &report, &render(&report))
}

fn render(report: &Report) -> String {
    let verb = if report.dry_run {
        "would stop and remove"
    } else {
        "stopped and removed"
    };
    let mut text = match report.jobs.as_slice() {
        [] => "no job of pdsup's is registered with Nomad\n".to_string(),
        jobs => format!("{verb}: {}\n", jobs.join(", ")),
    };
    if !report.kept.is_empty() {
        text.push_str(&format!(
            "left alone (not pdsup's): {}\n",
            report.kept.join(", ")
        ));
    }
    if report.data_purged {
        text.push_str(&format!("deleted the PDS data in {PDS_VOLUME_PATH}\n"));
    } else {
        text.push_str(&format!(
            "the PDS data in {PDS_VOLUME_PATH} is kept: `pdsup up` runs the site again\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_hostname_confirms_a_purge() {
        assert!(confirms("pds.example.com\n", "pds.example.com"));
        assert!(confirms("  pds.example.com ", "pds.example.com"));
        for typed in [
            "",
            "yes",
            "y",
            "PDS.example.com",
            "pds.example.com.",
            "example.com",
        ] {
            assert!(!confirms(typed, "pds.example.com"), "{typed:?}");
        }
    }

    #[test]
    fn the_purge_deletes_inside_the_volume_only() {
        let cmd = format!("{:?}", purge_command());
        for needle in ["find", PDS_VOLUME_PATH, "-mindepth", "-xdev", "-delete"] {
            assert!(cmd.contains(needle), "{cmd}");
        }
    }

    #[test]
    fn the_report_says_what_went_and_what_stayed() {
        let report = Report {
            ok: true,
            dry_run: true,
            jobs: vec!["pds".into(), "io".into()],
            kept: vec!["mine".into()],
            data_purged: false,
        };
        assert_eq!(
            render(&report),
            "would stop and remove: pds, io\nleft alone (not pdsup's): mine\n\
             the PDS data in /srv/nomad/pds is kept: `pdsup up` runs the site again\n"
        );
    }
}
