//! `pdsup up` (and `pdsup plan DEST`, which is `up --dry-run`): connect, run the
//! steps of [`steps::UP`], print the summary.

use crate::error::Result;

use super::Output;
use crate::host::dest::Destination;
use crate::host::local::LocalHost;
use crate::host::ssh::{SshHost, SshOptions};
use crate::host::Host;
use crate::settings::Settings;
use crate::state::{SiteDir, SiteRecord};
use crate::steps::{self, Ctx};
use crate::ui::summary::Summary;
use crate::ui::Ui;

/// Where the steps run.
pub enum Target {
    Ssh {
        destination: Destination,
        options: SshOptions,
    },
    /// This machine (`--local`, e.g. from cloud-init on the droplet).
    Local,
}

/// Converges the droplet (or, with `dry_run`, shows what would change).
/// `record` is saved once connected, so a run that cannot connect leaves the
/// site's state as it was.
pub async fn converge(
    site: &SiteDir,
    settings: &Settings,
    record: SiteRecord,
    target: Target,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let (host, destination_host): (Box<dyn Host>, _) = match target {
        Target::Local => (Box::new(LocalHost::new()), None),
        Target::Ssh {
            destination,
            options,
        } => (
            Box::new(SshHost::connect(&destination, &options).await?),
            Some(destination.host.clone()),
        ),
    };
    if !dry_run {
        site.save_record(&record)?;
    }
    let mut ctx = Ctx::new(host.as_ref(), settings, site, record, &ui);
    ctx.destination_host = destination_host;
    let report = match steps::runner::run(&mut ctx, steps::UP, dry_run).await {
        Ok(report) => report,
        Err(e) => {
            ui.clear();
            return Err(e.context(format!(
                "pdsup stopped on {}; fix the cause and run the same command again: finished steps are skipped",
                host.describe()
            )));
        }
    };
    if !dry_run {
        // The first run pins the PDS it deployed: its version and digest.
        super::upgrade::record_pin(&mut ctx, &settings.pds_image).await?;
    }
    let summary = Summary {
        settings,
        outcome: &ctx.outcome,
        report: &report,
        env_file: site.env_file().display().to_string(),
        dry_run,
    };
    if ui.json() {
        println!("{}", serde_json::to_string_pretty(&summary.json())?);
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}
