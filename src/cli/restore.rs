//! `pdsup restore ARCHIVE DEST`: flags. The site's settings come as for `up`
//! (flags over `site.toml` over defaults); `--hostname` must be the archive's.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::{self, SiteArgs, SshArgs};
use super::up::Global;
use crate::error::{bail, Context, ErrorKind, Result};
use crate::host::ssh::SshOptions;
use crate::ops;
use crate::state::SiteDir;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive `pdsup backup` wrote (a .tar.gz in the site's backups/ directory)
    #[arg(value_name = "ARCHIVE")]
    pub archive: PathBuf,

    /// The droplet: [user@]host[:port] or a ~/.ssh/config alias
    #[arg(value_name = "DEST")]
    pub dest: String,

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
    // Every checksum first: a damaged archive stops here, before anything changes.
    let (manifest, sealed) = ops::backup::read_archive(&args.archive, true)?;
    let hostname = args::hostname(&args.site)?;
    if hostname.as_str() != manifest.hostname {
        bail!(
            BadInput,
            "{} is a backup of {}, not of {hostname}: pass --hostname {}, or pick that site's archive",
            args.archive.display(),
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
    if let Some(identity) = &args.ssh.identity {
        std::fs::File::open(identity)
            .with_context(|| format!("-i {}: cannot read the key file", identity.display()))
            .kind(ErrorKind::BadInput)?;
    }
    let options = SshOptions {
        identity_file: args.ssh.identity.clone(),
        passphrase: None,
        known_hosts: site.known_hosts(),
        accept_new_host_key: args.ssh.accept_new_host_key,
        pin_read_only: false,
        ssh_config: args.ssh.ssh_config.clone(),
        connect_timeout: Duration::from_secs(20),
    };
    let mut record = args::record(&settings, previous);
    record.destination = Some(args.dest.clone());
    ops::restore::restore(
        ops::restore::Restore {
            site: &site,
            settings: &settings,
            record,
            destination: args.dest.parse()?,
            options,
            archive: args.archive.clone(),
            manifest,
            force: args.force,
            relays,
        },
        global.output(),
    )
    .await
}
