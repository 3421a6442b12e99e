//! `pdsup fleet up|plan|status|down|backup FILE`: the flags, and each site of the
//! fleet file resolved into the settings `up` would use for it (the fleet's
//! values as a layer above its `site.toml`). Every site is checked before any
//! droplet is contacted.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::args::{self, SiteArgs, SshArgs};
use super::up::Global;
use crate::error::{bail, err, Context, ErrorKind, Result};
use crate::host::ssh::SshOptions;
use crate::ops::fleet::{self, FleetOp, FleetRun, FleetSite};
use crate::settings::fleet as fleet_file;
use crate::state::SiteDir;

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Converge every site as `up` does, create the participants' accounts, write the handouts
    Up(FleetFileArgs),
    /// Show what `fleet up` would change on each site (read-only; every droplet is contacted)
    Plan(FleetFileArgs),
    /// Whether each site's droplet answers and its PDS is healthy
    Status(FleetFileArgs),
    /// Stop pdsup's jobs (the PDS, IO) on every site; the data and the sites' state are kept
    Down(FleetFileArgs),
    /// Back up every site as `pdsup backup` does, each archive in its site's state directory
    Backup(FleetBackupArgs),
}

#[derive(Debug, Args)]
pub struct FleetBackupArgs {
    #[command(flatten)]
    pub fleet: FleetFileArgs,

    /// A file holding the passphrase that encrypts each site's secrets in its archive
    /// (one for the whole fleet) [default: PDSUP_BACKUP_PASSPHRASE, else a prompt]
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FleetFileArgs {
    /// The fleet file (TOML): shared settings, sites, participants (see examples/fleet.toml)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// How many sites at once
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,

    /// Only these sites (by hostname; repeatable) [default: every site of the file]
    #[arg(long = "only", value_name = "HOSTNAME")]
    pub only: Vec<String>,

    /// Where each site's log and the handouts go [default: FILE's directory, <FILE's stem>.out]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    #[command(flatten)]
    pub ssh: SshArgs,
}

pub async fn fleet(args: FleetArgs, global: &Global) -> Result<()> {
    let (op, args, passphrase_file) = match args.command {
        FleetCommand::Up(a) => (FleetOp::Up, a, None),
        FleetCommand::Plan(a) => (FleetOp::Plan, a, None),
        FleetCommand::Status(a) => (FleetOp::Status, a, None),
        FleetCommand::Down(a) => (FleetOp::Down, a, None),
        FleetCommand::Backup(b) => (FleetOp::Backup, b.fleet, Some(b.passphrase_file)),
    };
    let mut run = resolve(&args, op, global)?;
    if let Some(file) = passphrase_file {
        run.passphrase = Some(crate::ops::backup::passphrase(file.as_deref(), true)?);
    }
    fleet::run(run, op).await
}

/// The fleet file and every site's settings, checked; nothing contacted.
fn resolve(args: &FleetFileArgs, op: FleetOp, global: &Global) -> Result<FleetRun> {
    let file = fleet_file::load(&args.file)?;
    for only in &args.only {
        if !file.sites.iter().any(|s| s.hostname.as_str() == only) {
            bail!(
                BadInput,
                "--only {only}: {} has no such site",
                args.file.display()
            );
        }
    }
    if let Some(identity) = &args.ssh.identity {
        std::fs::File::open(identity)
            .with_context(|| format!("-i {}: cannot read the key file", identity.display()))
            .kind(ErrorKind::BadInput)?;
    }
    let state_dir = global.state_dir()?;
    let mut sites = Vec::new();
    let mut problems = Vec::new();
    for site in &file.sites {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == site.hostname.as_str()) {
            continue;
        }
        match resolve_site(site, &state_dir, op, &args.ssh) {
            Ok(s) => sites.push(s),
            Err(e) => problems.push(format!(
                "{} ({}): {}",
                site.hostname,
                site.at,
                e.chain().collect::<Vec<_>>().join(": ")
            )),
        }
    }
    if !problems.is_empty() {
        return Err(err!(
            BadInput,
            "{} of the fleet's sites cannot run; nothing was contacted:\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
        .with_hint(
            "each of up's flags is a key of the fleet file's [settings] or of a site's table, \
             by its site.toml name: --email is email, --plc-url is plc_url",
        ));
    }
    let out_dir = match &args.out {
        Some(d) => d.clone(),
        None => {
            let stem = args
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "fleet".into());
            args.file
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(format!("{stem}.out"))
        }
    };
    Ok(FleetRun {
        sites,
        parallel: usize::from(args.parallel),
        out_dir,
        warnings: file.warnings,
        output: global.output(),
        passphrase: None,
    })
}

fn resolve_site(
    site: &fleet_file::FleetSite,
    state_dir: &std::path::Path,
    op: FleetOp,
    ssh: &SshArgs,
) -> Result<FleetSite> {
    let dir = SiteDir::new(state_dir, &site.hostname);
    let previous = dir.load_record()?;
    // A site without a site.toml was never reached: `fleet up` saves it
    // before it changes anything. The others still run; its row says so.
    let reached = previous.is_some();
    let settings = args::settings_at(
        &SiteArgs::for_fleet_site(&site.hostname, site.values.clone()),
        previous.as_ref(),
        Some(&dir.site_file()),
    )
    .kind(ErrorKind::BadInput)?;
    crate::ops::check_secrets(&dir, previous.as_ref())?;
    let destination = site
        .dest
        .parse()
        .map_err(crate::error::Error::from)
        .context("dest")?;
    let mut record = args::record(&settings, previous);
    record.destination = Some(site.dest.clone());
    let options = SshOptions {
        identity_file: ssh.identity.clone(),
        passphrase: None,
        known_hosts: dir.known_hosts(),
        accept_new_host_key: ssh.accept_new_host_key,
        pin_read_only: op == FleetOp::Plan,
        ssh_config: ssh.ssh_config.clone(),
        connect_timeout: Duration::from_secs(20),
    };
    Ok(FleetSite {
        dir,
        settings,
        record,
        destination,
        options,
        participants: site.participants.clone(),
        reached,
    })
}
