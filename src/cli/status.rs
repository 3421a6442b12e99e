//! `pdsup status`: the site's health on one screen; fails (exit code of
//! `Unhealthy`) when something is wrong, for cron and monitors.

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::Result;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub site: SiteRef,
}

pub async fn status(args: StatusArgs, global: &Global) -> Result<()> {
    let site = args.site.open(global)?;
    let options = args.site.ssh_options(&site)?;
    crate::ops::status::status(site, args.site.dest.as_deref(), &options, global.output()).await
}
