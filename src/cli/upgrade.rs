//! `pdsup upgrade [--to VERSION | --image REF]` and `pdsup rollback`.

use std::path::PathBuf;

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::{bail, Result};
use crate::inputs::ImageRef;
use crate::ops::upgrade::{self, Target};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The PDS version to run: the site's image repository at that tag (e.g. 0.4.204)
    #[arg(long, value_name = "VERSION", conflicts_with = "image")]
    pub to: Option<String>,

    /// The PDS image to run, in full [default: the site's image, pulled again]
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,

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
    pub site: SiteRef,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Load the previous image from a `docker save` tarball (when the droplet no longer has it)
    #[arg(long, value_name = "FILE")]
    pub pds_image_archive: Option<PathBuf>,

    /// Show what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub site: SiteRef,
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
    let image = match (&args.to, &args.image) {
        (Some(version), _) => upgrade::image_for_version(&site.settings.pds_image, version)?,
        (None, Some(image)) => image.parse::<ImageRef>()?.to_string(),
        (None, None) => site.settings.pds_image.clone(),
    };
    let options = args.site.ssh_options(&site)?;
    let destination = site.destination(args.site.dest.as_deref())?;
    let session = site.connect(destination, &options).await?;
    let target = Target {
        image,
        // No version and no image: the site's tag, pulled again.
        refresh: args.to.is_none() && args.image.is_none() && args.pds_image_archive.is_none(),
        archive: args.pds_image_archive,
    };
    upgrade::upgrade(session, target, args.force, args.dry_run, global.output()).await
}

pub async fn rollback(args: RollbackArgs, global: &Global) -> Result<()> {
    check_archive(&args.pds_image_archive)?;
    let site = args.site.open(global)?;
    let options = args.site.ssh_options(&site)?;
    let destination = site.destination(args.site.dest.as_deref())?;
    // Checked before connecting: a site with no previous release has nothing to return to.
    if site.record.pds_previous.is_none() {
        bail!(
            BadInput,
            "{} records no previous PDS release: rollback returns to the image the last \
             `pdsup upgrade` replaced, and there was none",
            site.dir.site_file().display()
        );
    }
    let session = site.connect(destination, &options).await?;
    let target = upgrade::rollback_target(&session, args.pds_image_archive)?;
    // Going back is the point of a rollback: no downgrade check.
    upgrade::upgrade(session, target, true, args.dry_run, global.output()).await
}
