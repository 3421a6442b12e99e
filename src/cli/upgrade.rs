//! `pdsup upgrade [--to VERSION | --image REF]` and `pdsup rollback`.

use std::path::PathBuf;

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::{bail, Result};
use crate::inputs::ImageRef;
use crate::ops::{
    self,
    upgrade::{self, ArchiveBackup, BackupFirst, NomadTarget, Target},
};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The PDS version to run: the site's image repository at that tag (e.g. 0.4.204)
    #[arg(long, value_name = "VERSION", conflicts_with = "image")]
    pub to: Option<String>,

    /// The PDS image to run, in full [default: the site's image, pulled again]
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,

    /// Upgrade Nomad itself to this version instead of the PDS (installed as `up` installs it:
    /// the release downloaded, its signature and checksum checked), then Nomad restarted
    #[arg(long, value_name = "VERSION", conflicts_with_all = ["to", "image", "pds_image_archive"])]
    pub nomad: Option<String>,

    #[command(flatten)]
    pub nomad_source: NomadSourceArgs,

    /// Load the image from a `docker save` tarball instead of pulling it
    #[arg(long, value_name = "FILE")]
    pub pds_image_archive: Option<PathBuf>,

    /// Go to an older version too (the PDS migrates its databases forward: take a backup first)
    #[arg(long)]
    pub force: bool,

    /// Show what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub backup: BackupArgs,

    #[command(flatten)]
    pub site: SiteRef,
}

/// The backup taken before the PDS changes.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Do not take a backup first (by default one is taken when backups are configured:
    /// the droplet has pdsup-backup.service, or a passphrase is given for a local archive)
    #[arg(long, conflicts_with = "passphrase_file")]
    pub no_backup: bool,

    /// Take a local archive first (as `pdsup backup`), its secrets encrypted with the
    /// passphrase in FILE [default: PDSUP_BACKUP_PASSPHRASE when set]
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// Where a Nomad release comes from (with `--nomad`).
#[derive(Debug, Args)]
pub struct NomadSourceArgs {
    /// Download Nomad releases from this mirror (laid out like releases.hashicorp.com)
    #[arg(long, value_name = "URL", env = "PDSUP_NOMAD_RELEASE_URL")]
    pub nomad_release_url: Option<String>,

    /// Trust this armored OpenPGP key for the release signature instead of HashiCorp's
    #[arg(long, value_name = "FILE", env = "PDSUP_NOMAD_RELEASE_KEY")]
    pub nomad_release_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Return Nomad to the version the last `upgrade --nomad` replaced (instead of the PDS)
    #[arg(long, conflicts_with = "pds_image_archive")]
    pub nomad: bool,

    #[command(flatten)]
    pub nomad_source: NomadSourceArgs,

    /// Load the previous image from a `docker save` tarball (when the droplet no longer has it)
    #[arg(long, value_name = "FILE")]
    pub pds_image_archive: Option<PathBuf>,

    /// Show what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub backup: BackupArgs,

    #[command(flatten)]
    pub site: SiteRef,
}

/// The backup to take first. A passphrase is read (never prompted for) and a
/// second copy of the site opened here, before any connection.
fn backup_first(args: &BackupArgs, site: &SiteRef, global: &Global) -> Result<BackupFirst> {
    let given =
        args.passphrase_file.is_some() || std::env::var_os("PDSUP_BACKUP_PASSPHRASE").is_some();
    if args.no_backup || !given {
        return Ok(BackupFirst {
            no_backup: args.no_backup,
            archive: None,
        });
    }
    let passphrase = ops::backup::passphrase(args.passphrase_file.as_deref(), false)?;
    let copy = site.open(global)?;
    let options = site.ssh_options(&copy)?;
    let destination = copy.destination(site.dest.as_deref())?;
    Ok(BackupFirst {
        no_backup: false,
        archive: Some(ArchiveBackup {
            site: copy,
            destination,
            options,
            passphrase,
        }),
    })
}

fn nomad_target(version: String, source: NomadSourceArgs) -> Result<NomadTarget> {
    if let Some(key) = &source.nomad_release_key {
        if let Err(e) = std::fs::File::open(key) {
            bail!(
                BadInput,
                "--nomad-release-key {}: cannot read it: {e}",
                key.display()
            );
        }
    }
    Ok(NomadTarget {
        version,
        release_url: source.nomad_release_url,
        release_key: source.nomad_release_key,
    })
}

fn check_archive(archive: &Option<PathBuf>) -> Result<()> {
    if let Some(path) = archive {
        if let Err(e) = std::fs::File::open(path) {
            bail!(
                BadInput,
                "--pds-image-archive {}: cannot read it: {e}",
                path.display()
            );
        }
    }
    Ok(())
}

pub async fn upgrade(args: UpgradeArgs, global: &Global) -> Result<()> {
    check_archive(&args.pds_image_archive)?;
    let site = args.site.open(global)?;
    if let Some(version) = &args.nomad {
        upgrade::check_nomad_version(version)?;
        let target = nomad_target(version.clone(), args.nomad_source)?;
        let options = args.site.ssh_options(&site)?;
        let destination = site.destination(args.site.dest.as_deref())?;
        let session = site.connect(destination, &options).await?;
        return upgrade::upgrade_nomad(session, target, args.dry_run, global.output()).await;
    }
    let image = match (&args.to, &args.image) {
        (Some(version), _) => upgrade::image_for_version(&site.settings.pds_image, version)?,
        (None, Some(image)) => image.parse::<ImageRef>()?.to_string(),
        (None, None) => site.settings.pds_image.clone(),
    };
    let backup = backup_first(&args.backup, &args.site, global)?;
    let options = args.site.ssh_options(&site)?;
    let destination = site.destination(args.site.dest.as_deref())?;
    let session = site.connect(destination, &options).await?;
    let target = Target {
        image,
        pinned: None,
        // No version and no image: the site's tag, pulled again.
        refresh: args.to.is_none() && args.image.is_none() && args.pds_image_archive.is_none(),
        archive: args.pds_image_archive,
    };
    upgrade::upgrade(
        session,
        target,
        backup,
        args.force,
        args.dry_run,
        global.output(),
    )
    .await
}

pub async fn rollback(args: RollbackArgs, global: &Global) -> Result<()> {
    check_archive(&args.pds_image_archive)?;
    let site = args.site.open(global)?;
    let options = args.site.ssh_options(&site)?;
    let destination = site.destination(args.site.dest.as_deref())?;
    if args.nomad {
        // Checked before connecting, like the PDS's previous release below.
        let version = upgrade::nomad_rollback_version(&site.record, &site.dir.site_file())?;
        let target = nomad_target(version, args.nomad_source)?;
        let session = site.connect(destination, &options).await?;
        return upgrade::upgrade_nomad(session, target, args.dry_run, global.output()).await;
    }
    // Checked before connecting: a site with no previous release has nothing to return to.
    if site.record.pds_previous.is_none() {
        bail!(
            BadInput,
            "{} records no previous PDS release: rollback returns to the image the last \
             `pdsup upgrade` replaced, and there was none",
            site.dir.site_file().display()
        );
    }
    let backup = backup_first(&args.backup, &args.site, global)?;
    let session = site.connect(destination, &options).await?;
    let target = upgrade::rollback_target(&session, args.pds_image_archive)?;
    // Going back is the point of a rollback: no downgrade check.
    upgrade::upgrade(session, target, backup, true, args.dry_run, global.output()).await
}
