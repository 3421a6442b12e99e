//! `pdsup restore ARCHIVE DEST`: flags. The site's settings come as for `up`
//! (flags over `site.toml` over defaults); `--hostname` must be the archive's.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::{self, SiteArgs, SshArgs};
use super::up::Global;
use crate::error::{bail, ensure, Context, ErrorKind, Result};
use crate::host::ssh::SshOptions;
use crate::ops;
use crate::state::SiteDir;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive `pdsup backup` wrote (a .tar.gz in the site's backups/ directory);
    /// with --snapshot, give only DEST
    #[arg(value_name = "ARCHIVE")]
    pub archive: Option<PathBuf>,

    /// The droplet: [user@]host[:port] or a ~/.ssh/config alias
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,

    /// Restore a snapshot of the scheduled backup (`pdsup backup --list` shows them):
    /// its id, or latest. Needs the site's state directory (site.toml, pds.env, restic/)
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,

    /// Restore over a data dir that holds other PDS data, setting it aside whole first
    #[arg(long)]
    pub force: bool,

    /// A file holding the archive's passphrase, needed when the state directory
    /// has no pds.env or site.toml for the site [default: PDSUP_BACKUP_PASSPHRASE, else a prompt]
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// A relay (URL) to check for a desync and ask to crawl, instead of the
    /// site's PDS_CRAWLERS; repeat for several
    #[arg(long = "relay", value_name = "URL")]
    pub relays: Vec<String>,

    #[command(flatten)]
    pub site: SiteArgs,

    #[command(flatten)]
    pub ssh: SshArgs,
}

pub async fn restore(args: RestoreArgs, global: &Global) -> Result<()> {
    let relays = args
        .relays
        .iter()
        .map(|r| Ok(r.parse::<crate::inputs::HttpUrl>()?))
        .collect::<Result<Vec<_>>>()?;
    if let Some(snapshot) = args.snapshot.clone() {
        return restore_snapshot(args, snapshot, relays, global).await;
    }
    let (Some(archive), Some(dest)) = (args.archive.clone(), args.dest.clone()) else {
        bail!(
            BadInput,
            "restore needs ARCHIVE and DEST (`pdsup restore ARCHIVE DEST`), or --snapshot ID and DEST"
        );
    };
    // Every checksum first: a damaged archive stops here, before anything changes.
    let (manifest, sealed) = ops::backup::read_archive(&archive, true)?;
    let hostname = args::hostname(&args.site)?;
    if hostname.as_str() != manifest.hostname {
        bail!(
            BadInput,
            "{} is a backup of {}, not of {hostname}: pass --hostname {}, or pick that site's archive",
            archive.display(),
            manifest.hostname,
            manifest.hostname
        );
    }
    let site = SiteDir::new(&global.state_dir()?, &hostname);
    let passphrase_file = args.passphrase_file.clone();
    ops::restore::restore_site_state(&site, &sealed, || {
        ops::backup::passphrase(passphrase_file.as_deref(), false)
    })?;
    let previous = site.load_record()?;
    let settings = args::settings_at(&args.site, previous.as_ref(), Some(&site.site_file()))
        .kind(ErrorKind::BadInput)?;
    ops::check_secrets(&site, previous.as_ref())?;
    let options = ssh_options(&args, &site)?;
    let mut record = args::record(&settings, previous);
    record.destination = Some(dest.clone());
    ops::restore::restore(
        ops::restore::Restore {
            site: &site,
            settings: &settings,
            record,
            destination: dest.parse()?,
            options,
            archive,
            manifest,
            force: args.force,
            relays,
        },
        global.output(),
    )
    .await
}

fn ssh_options(args: &RestoreArgs, site: &SiteDir) -> Result<SshOptions> {
    if let Some(identity) = &args.ssh.identity {
        std::fs::File::open(identity)
            .with_context(|| format!("-i {}: cannot read the key file", identity.display()))
            .kind(ErrorKind::BadInput)?;
    }
    Ok(SshOptions {
        identity_file: args.ssh.identity.clone(),
        passphrase: None,
        known_hosts: site.known_hosts(),
        accept_new_host_key: args.ssh.accept_new_host_key,
        pin_read_only: false,
        ssh_config: args.ssh.ssh_config.clone(),
        connect_timeout: Duration::from_secs(20),
    })
}

/// `restore --snapshot ID DEST`: the site's state must be in the state
/// directory (a snapshot holds the data, not the site's secrets).
async fn restore_snapshot(
    args: RestoreArgs,
    snapshot: String,
    relays: Vec<crate::inputs::HttpUrl>,
    global: &Global,
) -> Result<()> {
    let dest = match (&args.archive, &args.dest) {
        (Some(dest), None) => dest.display().to_string(),
        _ => bail!(
            BadInput,
            "with --snapshot, give only DEST (`pdsup restore --snapshot {snapshot} DEST`): \
             the data comes from the scheduled backup's repository, not an archive"
        ),
    };
    ensure!(
        snapshot == "latest"
            || (snapshot.len() >= 4 && snapshot.bytes().all(|b| b.is_ascii_hexdigit())),
        BadInput,
        "--snapshot {snapshot:?}: give a snapshot id (`pdsup backup --list` shows them) or latest"
    );
    let hostname = args::hostname(&args.site)?;
    let site = SiteDir::new(&global.state_dir()?, &hostname);
    let Some(previous) = site.load_record()? else {
        bail!(
            BadInput,
            "no site.toml for {hostname} in {}: restoring a snapshot needs the site's state \
             directory (site.toml, pds.env and restic/); without it, restore an archive of `pdsup backup`",
            site.path().display()
        );
    };
    if site.load_secrets()?.is_none() {
        bail!(
            BadInput,
            "{} is missing: a snapshot holds the PDS's data, not the site's secrets; put the file \
             back from your copy of the state directory (or restore an archive of `pdsup backup`)",
            site.env_file().display()
        );
    }
    let settings = args::settings_at(&args.site, Some(&previous), Some(&site.site_file()))
        .kind(ErrorKind::BadInput)?;
    let options = ssh_options(&args, &site)?;
    let mut record = args::record(&settings, Some(previous));
    record.destination = Some(dest.clone());
    ops::schedule::restore(
        ops::schedule::SnapshotRestore {
            site: &site,
            settings: &settings,
            record,
            destination: dest.parse()?,
            options,
            snapshot,
            force: args.force,
            relays,
        },
        global.output(),
    )
    .await
}
