//! Steps: each one gathers facts from the droplet, turns them into a plan of
//! changes (a pure function, unit-tested with facts in and changes out), and the
//! runner applies the changes. The same plans drive `pdsup plan`, `--dry-run`, the
//! progress output and the tests.
//!
//! Steps are planned one at a time, just before they run, so a plan never goes
//! stale because of an earlier step's changes. `pdsup plan` without a droplet
//! plans every step against the facts of a fresh droplet instead (`Facts::fresh`).

pub mod account;
pub mod config_file;
pub mod dns;
pub mod docker;
pub mod nomad_config;
pub mod nomad_install;
pub mod packages;
pub mod pds_job;
pub mod preflight;
pub mod proxy;
pub mod secrets;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Context, Result};

use crate::host::{Cmd, FileMode, Host};
use crate::nomad::api::NomadApi;
use crate::nomad::job::Job;
use crate::pds::xrpc::Xrpc;
use crate::secret::Secret;
use crate::settings::{Settings, NOMAD_HTTP_PORT, PDS_PORT};
use crate::state::{PdsSecrets, SiteDir, SiteRecord};
use crate::ui::Ui;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepId {
    Preflight,
    Docker,
    Nomad,
    NomadConfig,
    Proxy,
    Secrets,
    PdsJob,
    Account,
    Dns,
}

impl StepId {
    pub const ALL: [StepId; 9] = [
        StepId::Preflight,
        StepId::Docker,
        StepId::Nomad,
        StepId::NomadConfig,
        StepId::Proxy,
        StepId::Secrets,
        StepId::PdsJob,
        StepId::Account,
        StepId::Dns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StepId::Preflight => "preflight",
            StepId::Docker => "docker",
            StepId::Nomad => "nomad",
            StepId::NomadConfig => "nomad.hcl",
            StepId::Proxy => "proxy",
            StepId::Secrets => "secrets",
            StepId::PdsJob => "pds job",
            StepId::Account => "account",
            StepId::Dns => "dns",
        }
    }

    /// Gathers this step's facts from the droplet and plans against them.
    pub async fn plan(self, ctx: &mut Ctx<'_>) -> Result<StepPlan> {
        let s = ctx.settings;
        match self {
            StepId::Preflight => Ok(preflight::plan(&preflight::gather(ctx).await?, s)),
            StepId::Docker => Ok(docker::plan(&docker::gather(ctx).await?, s)),
            StepId::Nomad => Ok(nomad_install::plan(&nomad_install::gather(ctx).await?, s)),
            StepId::NomadConfig => nomad_config::plan(&nomad_config::gather(ctx).await?, s),
            StepId::Proxy => proxy::plan(&proxy::gather(ctx).await?, s),
            StepId::Secrets => secrets::plan(&secrets::gather(ctx)?, s),
            StepId::PdsJob => {
                let facts = pds_job::gather(ctx).await?;
                pds_job::plan(&facts, s, ctx.secrets()?)
            }
            StepId::Account => {
                let facts = account::gather(ctx).await?;
                Ok(account::plan(
                    &facts,
                    s,
                    &ctx.site.env_file().display().to_string(),
                ))
            }
            StepId::Dns => Ok(dns::plan(&dns::gather(ctx).await?, s)),
        }
    }

    /// The plan for a fresh droplet, with no droplet to ask (`pdsup plan`).
    pub fn plan_fresh(self, settings: &Settings, secrets: &PdsSecrets) -> Result<StepPlan> {
        let s = settings;
        match self {
            StepId::Preflight => Ok(preflight::plan(&preflight::Facts::fresh(), s)),
            StepId::Docker => Ok(docker::plan(&docker::Facts::fresh(), s)),
            StepId::Nomad => Ok(nomad_install::plan(&nomad_install::Facts::fresh(), s)),
            StepId::NomadConfig => nomad_config::plan(&nomad_config::Facts::fresh(), s),
            StepId::Proxy => proxy::plan(&proxy::Facts::fresh(), s),
            StepId::Secrets => secrets::plan(&secrets::Facts::fresh(), s),
            StepId::PdsJob => pds_job::plan(&pds_job::Facts::fresh(), s, secrets),
            StepId::Account => Ok(account::plan(&account::Facts::fresh(), s, "pds.env")),
            StepId::Dns => Ok(dns::plan(&dns::Facts::fresh(), s)),
        }
    }
}

/// What a step would do: changes to apply in order, and things to tell the user.
#[derive(Debug)]
pub struct StepPlan {
    pub step: StepId,
    pub changes: Vec<Change>,
    /// Warnings and remarks shown with the plan (never secrets).
    pub notes: Vec<String>,
    /// A problem that stops the run before anything changes (bad OS, port taken).
    pub blockers: Vec<String>,
}

impl StepPlan {
    pub fn new(step: StepId) -> Self {
        StepPlan {
            step,
            changes: Vec::new(),
            notes: Vec::new(),
            blockers: Vec::new(),
        }
    }

    pub fn change(&mut self, summary: impl Into<String>, action: Action) -> &mut Change {
        self.changes.push(Change {
            summary: summary.into(),
            detail: None,
            action,
        });
        self.changes.last_mut().expect("just pushed")
    }

    pub fn is_unchanged(&self) -> bool {
        self.changes.is_empty()
    }
}

#[derive(Debug)]
pub struct Change {
    /// One line: "install docker.io from Debian".
    pub summary: String,
    /// A diff or the file/command in full, secrets masked.
    pub detail: Option<String>,
    pub action: Action,
}

impl Change {
    pub fn detail(&mut self, detail: impl Into<String>) -> &mut Self {
        self.detail = Some(detail.into());
        self
    }
}

#[derive(Debug)]
pub enum Action {
    /// Run a shell command on the droplet as root.
    Run(Cmd),
    /// Run an apt or dpkg command once the dpkg lock is free (saying who holds it).
    Apt(Cmd),
    /// Write a file on the droplet (atomically, contents on stdin).
    Write {
        path: String,
        contents: Contents,
        mode: FileMode,
    },
    /// Stream a local file to the droplet.
    Upload {
        local: PathBuf,
        path: String,
        mode: FileMode,
    },
    /// Install a file a service reads and restart the service, putting the
    /// previous file back when the service does not come up on the new one.
    InstallConfig(config_file::Install),
    /// Download (or upload), verify and install the pinned Nomad release.
    InstallNomad(nomad_install::Install),
    /// Generate the site's secrets, or rewrite `pds.env` around the existing ones.
    SaveEnvFile,
    /// Wait until the Nomad node is ready with these host volumes.
    WaitNomadReady { volumes: Vec<String> },
    /// Register a job with Nomad.
    SubmitJob(Box<Job>),
    /// Wait until the job's allocation runs and is healthy.
    WaitJobHealthy { job: String, image: String },
    /// Wait until the PDS answers `/xrpc/_health`.
    WaitPdsHealthy,
    /// Mark the PDS data dir as this site's (`site_id` in site.toml first).
    ClaimDataDir { site_id: String },
    /// Invite code + createAccount; the password is generated at apply time.
    CreateAccount { handle: String, email: String },
    /// Record an account found on the PDS in site.toml.
    RecordAccount { did: String },
    /// The seed's sqlite update marking the account's email confirmed.
    ConfirmEmail { handle: String },
}

#[derive(Debug)]
pub enum Contents {
    Text(String),
    Secret(Secret),
}

impl Contents {
    fn bytes(&self) -> &[u8] {
        match self {
            Contents::Text(t) => t.as_bytes(),
            Contents::Secret(s) => s.expose().as_bytes(),
        }
    }
}

/// The first account, as the run leaves it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AccountOutcome {
    pub did: String,
    pub handle: String,
    /// Only when this run created the account: shown once, never stored.
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// What the run found out and made, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub account: Option<AccountOutcome>,
    pub dns_records: Vec<dns::Record>,
    pub pds_version: Option<String>,
}

/// Everything a step may touch while planning and applying.
pub struct Ctx<'a> {
    pub host: &'a dyn Host,
    pub settings: &'a Settings,
    pub site: &'a SiteDir,
    pub record: SiteRecord,
    pub ui: &'a Ui,
    pub outcome: Outcome,
    /// The DEST the user gave, for the DNS step's guess of the public address.
    pub destination_host: Option<String>,
    secrets: Option<PdsSecrets>,
    nomad: Option<NomadApi>,
    pds: Option<Xrpc>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        host: &'a dyn Host,
        settings: &'a Settings,
        site: &'a SiteDir,
        record: SiteRecord,
        ui: &'a Ui,
    ) -> Self {
        Ctx {
            host,
            settings,
            site,
            record,
            ui,
            outcome: Outcome::default(),
            destination_host: None,
            secrets: None,
            nomad: None,
            pds: None,
        }
    }

    /// The site's secrets: loaded from `pds.env`, or made in memory for a dry
    /// run of a new site (they are never shown, so any value would do).
    pub fn secrets(&mut self) -> Result<&PdsSecrets> {
        if self.secrets.is_none() {
            self.secrets = Some(match self.site.load_secrets()? {
                Some(s) => s,
                None => PdsSecrets::generate(),
            });
        }
        Ok(self.secrets.as_ref().expect("just set"))
    }

    /// The Nomad API through a tunnel, opened on first use.
    pub async fn nomad(&mut self) -> Result<&NomadApi> {
        if self.nomad.is_none() {
            let addr = self
                .host
                .forward(NOMAD_HTTP_PORT)
                .await
                .context("opening a tunnel to Nomad's HTTP API")?;
            self.nomad = Some(NomadApi::new(addr));
        }
        Ok(self.nomad.as_ref().expect("just set"))
    }

    /// The PDS's XRPC API through a tunnel to its loopback port.
    pub async fn pds(&mut self) -> Result<&Xrpc> {
        if self.pds.is_none() {
            let addr = self
                .host
                .forward(PDS_PORT)
                .await
                .context("opening a tunnel to the PDS")?;
            self.pds = Some(Xrpc::new(addr));
        }
        Ok(self.pds.as_ref().expect("just set"))
    }

    /// Runs a read-only probe and returns its stdout; failure to run it at all
    /// (connection lost) is an error, a non-zero exit is not.
    pub async fn probe(&self, script: &str) -> Result<crate::host::Output> {
        self.host.exec(&Cmd::sh(script)).await
    }

    async fn apply(&mut self, change: &Change) -> Result<()> {
        match &change.action {
            Action::Run(cmd) => {
                self.host.run(cmd).await?;
            }
            Action::Apt(cmd) => packages::run_apt(self, cmd).await?,
            Action::Write {
                path,
                contents,
                mode,
            } => self.host.write_file(path, contents.bytes(), mode).await?,
            Action::Upload { local, path, mode } => self.host.upload(local, path, mode).await?,
            Action::InstallConfig(install) => config_file::apply(self.host, install).await?,
            Action::InstallNomad(install) => nomad_install::apply(self, install).await?,
            Action::SaveEnvFile => secrets::apply(self)?,
            Action::WaitNomadReady { volumes } => {
                let (ui, host) = (self.ui, self.host);
                let vols: Vec<&str> = volumes.iter().map(String::as_str).collect();
                let nomad = self.nomad().await?;
                while_connected(
                    host,
                    nomad.wait_node_ready(&vols, Duration::from_secs(180), &mut |m| ui.progress(m)),
                )
                .await?
            }
            Action::SubmitJob(job) => {
                self.nomad().await?.register(job).await?;
            }
            Action::WaitJobHealthy { job, image } => {
                let host = self.host;
                while_connected(host, pds_job::wait_healthy(self, job, image)).await?;
            }
            Action::WaitPdsHealthy => {
                let host = self.host;
                while_connected(host, pds_job::wait_pds_health(self)).await?
            }
            Action::ClaimDataDir { site_id } => account::apply_claim(self, site_id).await?,
            Action::CreateAccount { handle, email } => {
                account::create_account(self, handle, email).await?
            }
            Action::RecordAccount { did } => account::record_account(self, did)?,
            Action::ConfirmEmail { handle } => account::confirm_email(self, handle).await?,
        }
        Ok(())
    }

    /// Refreshes the secrets after the secrets step wrote them.
    fn set_secrets(&mut self, secrets: PdsSecrets) {
        self.secrets = Some(secrets);
    }
}

/// Runs a long wait, failing as soon as the connection to the droplet is lost:
/// the waits take an API that does not answer for a service still starting,
/// and would otherwise poll a dead tunnel until their timeout.
async fn while_connected<T>(
    host: &dyn Host,
    wait: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let lost = async {
        while host.connected() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        result = wait => result,
        () = lost => Err(crate::err!(
            Ssh,
            "the connection to {} was lost; run the same command again when the droplet is reachable",
            host.describe()
        )),
    }
}

/// How a run went, step by step.
#[derive(Debug, Default, serde::Serialize)]
pub struct RunReport {
    pub steps: Vec<StepReport>,
}

#[derive(Debug, serde::Serialize)]
pub struct StepReport {
    pub step: StepId,
    pub changes: Vec<String>,
    pub notes: Vec<String>,
}

impl RunReport {
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| !s.changes.is_empty())
    }
}

/// Plans and applies every step in order. With `dry_run`, plans only: each step
/// is still planned against the droplet as it is, so later steps may show work
/// that earlier steps would make unnecessary.
pub async fn run(ctx: &mut Ctx<'_>, dry_run: bool) -> Result<RunReport> {
    let mut report = RunReport::default();
    let total = StepId::ALL.len();
    for (i, step) in StepId::ALL.into_iter().enumerate() {
        ctx.ui.step_started(i + 1, total, step);
        // Errors name their step as `--json` names it in the report.
        let in_step = |e: crate::error::Error| match serde_json::to_value(step) {
            Ok(serde_json::Value::String(id)) => e.with_step(id),
            _ => e.with_step(step.name()),
        };
        let plan = step
            .plan(ctx)
            .await
            .with_context(|| format!("{}: gathering facts", step.name()))
            .map_err(in_step)?;
        ctx.ui.show_plan(&plan, dry_run);
        if !plan.blockers.is_empty() {
            return Err(in_step(crate::err!(
                Blocked,
                "{} found problems; nothing was changed by this step:\n  - {}",
                step.name(),
                plan.blockers.join("\n  - ")
            )));
        }
        if !dry_run {
            for change in &plan.changes {
                ctx.ui.change_started(change);
                ctx.apply(change)
                    .await
                    .with_context(|| format!("{}: {}", step.name(), change.summary))
                    .map_err(in_step)?;
            }
        }
        ctx.ui.step_finished(step, &plan, dry_run);
        report.steps.push(StepReport {
            step,
            changes: plan.changes.iter().map(|c| c.summary.clone()).collect(),
            notes: plan.notes.clone(),
        });
    }
    Ok(report)
}
