//! `pdsup up` and `pdsup plan`: their flags, resolved into settings and handed
//! to the operations in `ops`.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{bail, Context, ErrorKind, Result};
use clap::Args;

use super::args::{self, SiteArgs, SshArgs};
use crate::host::ssh::SshOptions;
use crate::ops::{self, up::Target};
use crate::state::{SiteDir, SiteRecord};

pub struct Global {
    pub json: bool,
    pub quiet: bool,
    pub state_dir: Option<PathBuf>,
}

impl Global {
    /// Where site state lives: `--state-dir`, else the default.
    pub fn state_dir(&self) -> Result<PathBuf> {
        match &self.state_dir {
            Some(d) => Ok(d.clone()),
            None => SiteDir::default_state_dir(),
        }
    }

    pub fn output(&self) -> ops::Output {
        ops::Output {
            json: self.json,
            quiet: self.quiet,
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The droplet: [user@]host[:port] or a ~/.ssh/config alias (a non-root user needs passwordless sudo)
    #[arg(value_name = "DEST", required_unless_present_any = ["local", "dry_run"])]
    pub dest: Option<String>,

    /// Run on this machine instead of over SSH (e.g. from cloud-init on the droplet)
    #[arg(long, conflicts_with = "dest")]
    pub local: bool,

    /// Show the plan and change nothing: against DEST, or for a fresh droplet without DEST (no network)
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub site: SiteArgs,

    #[command(flatten)]
    pub ssh: SshArgs,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The droplet to diff against; without it, the plan for a fresh droplet (no network)
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,

    #[command(flatten)]
    pub site: SiteArgs,

    #[command(flatten)]
    pub ssh: SshArgs,
}

pub async fn up(args: UpArgs, global: &Global) -> Result<()> {
    if args.dry_run && args.dest.is_none() && !args.local {
        return plan(
            PlanArgs {
                dest: None,
                site: args.site,
                ssh: args.ssh,
            },
            global,
        )
        .await;
    }
    run(
        args.dest,
        args.local,
        args.dry_run,
        &args.site,
        &args.ssh,
        global,
    )
    .await
}

pub async fn plan(args: PlanArgs, global: &Global) -> Result<()> {
    if args.dest.is_some() {
        return run(args.dest, false, true, &args.site, &args.ssh, global).await;
    }
    let (site, previous) = open_site(&args.site, global)?;
    let settings = args::settings_at(&args.site, previous.as_ref(), Some(&site.site_file()))
        .kind(ErrorKind::BadInput)?;
    ops::check_secrets(&site, previous.as_ref())?;
    ops::plan::fresh(&site, &settings, global.output())
}

fn open_site(site_args: &SiteArgs, global: &Global) -> Result<(SiteDir, Option<SiteRecord>)> {
    let site = SiteDir::new(&global.state_dir()?, &args::hostname(site_args)?);
    let record = site.load_record()?;
    Ok((site, record))
}

async fn run(
    dest: Option<String>,
    local: bool,
    dry_run: bool,
    site_args: &SiteArgs,
    ssh_args: &SshArgs,
    global: &Global,
) -> Result<()> {
    // Everything the user typed, and the site's saved state, is checked before
    // any connection: a broken site.toml or pds.env stops the run here, not
    // after the installs.
    let (site, previous) = open_site(site_args, global)?;
    let settings = args::settings_at(site_args, previous.as_ref(), Some(&site.site_file()))
        .kind(ErrorKind::BadInput)?;
    ops::check_secrets(&site, previous.as_ref())?;
    let target = match (&dest, local) {
        (Some(d), false) => Target::Ssh {
            destination: d.parse()?,
            options: SshOptions {
                identity_file: ssh_args.identity.clone(),
                passphrase: None,
                known_hosts: site.known_hosts(),
                accept_new_host_key: ssh_args.accept_new_host_key,
                pin_read_only: dry_run,
                ssh_config: ssh_args.ssh_config.clone(),
                connect_timeout: Duration::from_secs(20),
            },
        },
        (None, true) => Target::Local,
        _ => bail!(
            BadInput,
            "give either DEST (the droplet, e.g. root@203.0.113.7) or --local"
        ),
    };
    if let Some(identity) = &ssh_args.identity {
        std::fs::File::open(identity)
            .with_context(|| format!("-i {}: cannot read the key file", identity.display()))
            .kind(ErrorKind::BadInput)?;
    }
    let previous_image = previous.as_ref().and_then(|r| r.pds_image.clone());
    let mut record = args::record(&settings, previous);
    ops::upgrade::forget_stale_pin(&mut record, previous_image.as_deref());
    // site.toml keeps the image as chosen; the run deploys it by its pinned digest.
    let mut settings = settings;
    settings.pds_image = ops::upgrade::image_to_run(&settings.pds_image, &record);
    if let Some(dest) = &dest {
        // Saved once connected: the day-2 commands' default DEST.
        record.destination = Some(dest.clone());
    }
    ops::up::converge(&site, &settings, record, target, dry_run, global.output()).await
}
