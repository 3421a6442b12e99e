//! `pdsup down [--purge-data]`.

use std::io::BufRead;

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::{bail, Result};
use crate::ops;

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Also delete the PDS data on the droplet (accounts, repos, blobs): asks for the hostname to confirm
    #[arg(long)]
    pub purge_data: bool,

    /// The hostname, confirming --purge-data without a prompt (for scripts)
    #[arg(long, value_name = "HOSTNAME", requires = "purge_data")]
    pub confirm: Option<String>,

    /// Show what would be stopped and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub site: SiteRef,
}

pub async fn down(args: DownArgs, global: &Global) -> Result<()> {
    let site = args.site.open(global)?;
    let hostname = site.dir.hostname().to_string();
    // Confirmed before connecting: a wrong answer changes nothing anywhere.
    let purge = args.purge_data && !args.dry_run;
    if purge {
        let typed = match &args.confirm {
            Some(typed) => typed.clone(),
            None => {
                eprint!(
                    "This deletes every account, repo and blob of {hostname} on the droplet.\n\
                     Type the hostname to confirm: "
                );
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line
            }
        };
        if !ops::down::confirms(&typed, &hostname) {
            bail!(
                BadInput,
                "--purge-data was not confirmed ({:?} is not {hostname}); nothing was changed",
                typed.trim()
            );
        }
    }
    let options = args.site.ssh_options(&site)?;
    let destination = site.destination(args.site.dest.as_deref())?;
    let session = site.connect(destination, &options).await?;
    ops::down::down(session, purge, args.dry_run, global.output()).await
}
