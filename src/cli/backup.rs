//! `pdsup backup`: flags.

use std::path::PathBuf;

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::{bail, ensure, err, Result};
use crate::ops;
use crate::steps::backup_schedule::{
    Repository, DEFAULT_AT, DEFAULT_KEEP_DAILY, DEFAULT_KEEP_WEEKLY,
};

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub site: SiteRef,

    /// A file holding the passphrase that encrypts the site's secrets in the archive
    /// [default: PDSUP_BACKUP_PASSPHRASE, else a prompt]
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Install a systemd timer on the droplet that takes the same snapshot and sends it
    /// to a restic repository (--repo), instead of taking one archive now
    #[arg(long, conflicts_with_all = ["list", "passphrase_file"])]
    pub schedule: bool,

    /// With --schedule: the restic repository, sftp:user@host:/path or
    /// s3:https://HOST/BUCKET [default: the one site.toml records]
    #[arg(long, value_name = "REPO", requires = "schedule")]
    pub repo: Option<String>,

    /// With --schedule: when the timer runs, a systemd calendar expression
    /// [default: the recorded one, else daily]
    #[arg(long, value_name = "CALENDAR", requires = "schedule")]
    pub at: Option<String>,

    /// With --schedule: daily snapshots kept [default: the recorded number, else 7]
    #[arg(long, value_name = "N", requires = "schedule")]
    pub keep_daily: Option<u32>,

    /// With --schedule: weekly snapshots kept [default: the recorded number, else 4]
    #[arg(long, value_name = "N", requires = "schedule")]
    pub keep_weekly: Option<u32>,

    /// With --schedule: the newest snapshots kept whatever their day, besides the
    /// daily and weekly ones [default: the recorded number, else 0]
    #[arg(long, value_name = "N", requires = "schedule")]
    pub keep_last: Option<u32>,

    /// With --schedule and an S3 repository: a file of AWS_ACCESS_KEY_ID=… and
    /// AWS_SECRET_ACCESS_KEY=… lines [default: those variables, else the saved keys]
    #[arg(long, value_name = "FILE", requires = "schedule")]
    pub s3_credentials_file: Option<PathBuf>,

    /// With --schedule: show the changes, make none
    #[arg(long, requires = "schedule")]
    pub dry_run: bool,

    /// List the scheduled backup's snapshots and the timer's last run
    #[arg(long, conflicts_with = "passphrase_file")]
    pub list: bool,
}

pub async fn backup(args: BackupArgs, global: &Global) -> Result<()> {
    let site = args.site.open(global)?;
    if args.schedule || args.list {
        return scheduled(args, site, global).await;
    }
    let passphrase = ops::backup::passphrase(args.passphrase_file.as_deref(), true)?;
    let options = args.site.ssh_options(&site)?;
    let destination = site.destination(args.site.dest.as_deref())?;
    let done =
        ops::backup::backup(site, destination, &options, &passphrase, global.output()).await?;
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": true, "backup": done}))?
        );
    } else {
        println!(
            "backup of {} account(s), {} files, taken {}: {} ({} bytes)",
            done.accounts.len(),
            done.files,
            done.taken_at,
            done.archive.display(),
            done.bytes
        );
    }
    Ok(())
}

/// `--schedule` and `--list`: every value checked before connecting.
async fn scheduled(args: BackupArgs, site: ops::site::Site, global: &Global) -> Result<()> {
    let options = args.site.ssh_options(&site)?;
    let destination = site.destination(args.site.dest.as_deref())?;
    if args.list {
        return ops::schedule::list(site, destination, &options, global.output()).await;
    }
    let recorded = site.record.backup_schedule.clone();
    let Some(repo) = args
        .repo
        .clone()
        .or_else(|| recorded.as_ref().map(|r| r.repository.clone()))
    else {
        bail!(
            BadInput,
            "--schedule needs --repo: sftp:user@host:/path, or s3:https://HOST/BUCKET \
             (DigitalOcean Spaces: s3:https://REGION.digitaloceanspaces.com/BUCKET)"
        );
    };
    let repository = Repository::parse(&repo).map_err(|e| err!(BadInput, "--repo: {e}"))?;
    let at = args
        .at
        .clone()
        .or_else(|| recorded.as_ref().map(|r| r.at.clone()))
        .unwrap_or_else(|| DEFAULT_AT.to_string());
    ensure!(
        !at.trim().is_empty() && at.len() <= 100 && !at.chars().any(char::is_control),
        BadInput,
        "--at {at:?} is not a calendar expression: use daily, weekly, or a time such as '*-*-* 03:30'"
    );
    let keep_daily = args
        .keep_daily
        .or(recorded.as_ref().map(|r| r.keep_daily))
        .unwrap_or(DEFAULT_KEEP_DAILY);
    let keep_weekly = args
        .keep_weekly
        .or(recorded.as_ref().map(|r| r.keep_weekly))
        .unwrap_or(DEFAULT_KEEP_WEEKLY);
    let keep_last = args
        .keep_last
        .or(recorded.as_ref().map(|r| r.keep_last))
        .unwrap_or(0);
    ensure!(
        keep_daily.max(keep_weekly).max(keep_last) > 0,
        BadInput,
        "--keep-daily 0 and --keep-weekly 0 would keep no snapshot"
    );
    let s3 = ops::schedule::s3_keys_given(args.s3_credentials_file.as_deref())?;
    let request = ops::schedule::ScheduleRequest {
        repository,
        at,
        keep_daily,
        keep_weekly,
        keep_last,
        s3,
    };
    ops::schedule::schedule(
        site,
        destination,
        &options,
        request,
        args.dry_run,
        global.output(),
    )
    .await
}
