//! `pdsup backup`: flags.

use std::path::PathBuf;

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::Result;
use crate::ops;

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub site: SiteRef,

    /// A file holding the passphrase that encrypts the site's secrets in the archive
    /// [default: PDSUP_BACKUP_PASSPHRASE, else a prompt]
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

pub async fn backup(args: BackupArgs, global: &Global) -> Result<()> {
    let site = args.site.open(global)?;
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
