//! `pdsup up` and `pdsup plan`.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{bail, Context, ErrorKind, Result};
use clap::Args;

use super::args::{self, SiteArgs, SshArgs};
use crate::host::dest::Destination;
use crate::host::local::LocalHost;
use crate::host::ssh::{SshHost, SshOptions};
use crate::host::Host;
use crate::state::{PdsSecrets, SiteDir};
use crate::steps::{self, Ctx, Outcome, RunReport, StepId};
use crate::ui::summary::Summary;
use crate::ui::{render_plan, Ui};

pub struct Global {
    pub json: bool,
    pub quiet: bool,
    pub state_dir: Option<PathBuf>,
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
    let settings = args::settings(&args.site, previous.as_ref())?;
    check_secrets(&site, previous.as_ref())?;
    let secrets = site.load_secrets()?.unwrap_or_else(PdsSecrets::generate);
    let mut report = RunReport::default();
    let mut text =
        String::from("Plan for a fresh droplet (secrets masked; nothing is contacted):\n\n");
    for step in StepId::ALL {
        let plan = step.plan_fresh(&settings, &secrets)?;
        text.push_str(&render_plan(&plan, true));
        text.push('\n');
        report.steps.push(steps::StepReport {
            step,
            changes: plan.changes.iter().map(|c| c.summary.clone()).collect(),
            notes: plan.notes.clone(),
        });
    }
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"ok": true, "dry_run": true, "steps": report.steps})
            )?
        );
    } else {
        print!("{text}");
    }
    Ok(())
}

fn open_site(
    site_args: &SiteArgs,
    global: &Global,
) -> Result<(SiteDir, Option<crate::state::SiteRecord>)> {
    let state_dir = match &global.state_dir {
        Some(d) => d.clone(),
        None => SiteDir::default_state_dir()?,
    };
    let site = SiteDir::new(&state_dir, &args::hostname(site_args)?);
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
    let settings = args::settings(site_args, previous.as_ref())?;
    check_secrets(&site, previous.as_ref())?;
    let destination: Option<Destination> = match (&dest, local) {
        (Some(d), false) => Some(d.parse()?),
        (None, true) => None,
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
    let ui = Ui::new(global.json, global.quiet);
    let host: Box<dyn Host> = match &destination {
        None => Box::new(LocalHost::new()),
        Some(d) => {
            let opts = SshOptions {
                identity_file: ssh_args.identity.clone(),
                passphrase: None,
                known_hosts: site.known_hosts(),
                accept_new_host_key: ssh_args.accept_new_host_key,
                pin_read_only: dry_run,
                ssh_config: ssh_args.ssh_config.clone(),
                connect_timeout: Duration::from_secs(20),
            };
            Box::new(SshHost::connect(d, &opts).await?)
        }
    };
    let record = args::record(&settings, previous, dest.clone());
    if !dry_run {
        site.save_record(&record)?;
    }
    let mut ctx = Ctx::new(host.as_ref(), &settings, &site, record, &ui);
    ctx.destination_host = destination.as_ref().map(|d| d.host.clone());
    let result = steps::run(&mut ctx, dry_run).await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            ui.clear();
            return Err(e.context(format!(
                "pdsup stopped on {}; fix the cause and run the same command again: finished steps are skipped",
                host.describe()
            )));
        }
    };
    print_summary(&ui, &settings, &ctx.outcome, &report, &site, dry_run)
}

/// `pds.env` must be readable exactly, and must exist once the site has an
/// account: new secrets would mean a new PLC rotation key for an existing DID.
fn check_secrets(site: &SiteDir, record: Option<&crate::state::SiteRecord>) -> Result<()> {
    if site.load_secrets()?.is_none() {
        if let Some(did) = record.and_then(|r| r.account_did.as_deref()) {
            bail!(
                BadInput,
                "{} is missing, but {} records the account {did}: its secrets and PLC rotation \
                 key are in that file. Restore it from your backup; pdsup will not generate new \
                 secrets for a site that already has an identity",
                site.env_file().display(),
                site.site_file().display()
            );
        }
    }
    Ok(())
}

fn print_summary(
    ui: &Ui,
    settings: &crate::settings::Settings,
    outcome: &Outcome,
    report: &RunReport,
    site: &SiteDir,
    dry_run: bool,
) -> Result<()> {
    let summary = Summary {
        settings,
        outcome,
        report,
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
