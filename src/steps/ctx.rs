//! `Ctx`: everything a step may touch while gathering and applying, and the
//! actions every step shares (commands, files, Nomad jobs, waits).

use std::time::Duration;

use crate::error::{Context, Result};

use super::{packages, pds_job, PlanInput};
use crate::host::facts::{Fact, FactCache};
use crate::host::{config_file, Cmd, Host};
use crate::nomad::api::NomadApi;
use crate::pds::xrpc::Xrpc;
use crate::plan::{Action, Progress};
use crate::secret::Secret;
use crate::settings::{Settings, NOMAD_HTTP_PORT, PDS_PORT};
use crate::state::{PdsSecrets, SiteDir, SiteRecord};

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
    pub dns_records: Vec<super::dns::Record>,
    pub pds_version: Option<String>,
}

/// Everything a step may touch while planning and applying.
pub struct Ctx<'a> {
    pub host: &'a dyn Host,
    pub settings: &'a Settings,
    pub site: &'a SiteDir,
    pub record: SiteRecord,
    pub progress: &'a dyn Progress,
    pub outcome: Outcome,
    /// The DEST the user gave, for the DNS step's guess of the public address.
    pub destination_host: Option<String>,
    secrets: Option<PdsSecrets>,
    nomad: Option<NomadApi>,
    pds: Option<Xrpc>,
    /// One HTTP client for both tunnels: building one loads the system's CA
    /// roots, which a run should do once.
    http: Option<reqwest::Client>,
    /// Facts fetched ahead, several steps' in one round trip.
    facts: FactCache,
}

impl<'a> Ctx<'a> {
    pub fn new(
        host: &'a dyn Host,
        settings: &'a Settings,
        site: &'a SiteDir,
        record: SiteRecord,
        progress: &'a dyn Progress,
    ) -> Self {
        Ctx {
            host,
            settings,
            site,
            record,
            progress,
            outcome: Outcome::default(),
            destination_host: None,
            secrets: None,
            nomad: None,
            pds: None,
            http: None,
            facts: FactCache::default(),
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

    /// Refreshes the secrets after the secrets step wrote them.
    pub fn set_secrets(&mut self, secrets: PdsSecrets) {
        self.secrets = Some(secrets);
    }

    /// Calls `plan` with what plans may read besides their facts.
    pub fn with_plan_input<T>(
        &mut self,
        plan: impl FnOnce(&PlanInput<'_>) -> Result<T>,
    ) -> Result<T> {
        let env_file = self.site.env_file().display().to_string();
        let settings = self.settings;
        let secrets = self.secrets()?;
        plan(&PlanInput {
            settings,
            secrets,
            env_file: &env_file,
        })
    }

    /// Asks the droplet, in one round trip, whichever of `cmds` (facts' commands)
    /// it has not answered since the last change.
    pub async fn prefetch(&self, cmds: &[Cmd]) -> Result<()> {
        self.facts.prefetch(self.host, cmds).await
    }

    /// A fact, answered ahead by [`Ctx::prefetch`] or asked now.
    pub async fn read<T>(&self, fact: &Fact<T>) -> Result<T> {
        self.facts.read(self.host, fact).await
    }

    /// A fact whose command must succeed (see [`Fact::read_checked`]).
    pub async fn read_checked<T>(&self, fact: &Fact<T>) -> Result<T> {
        self.facts.read_checked(self.host, fact).await
    }

    /// Forgets the answers: the droplet is about to change.
    pub fn forget_facts(&self) {
        self.facts.forget();
    }

    fn http_client(&mut self) -> reqwest::Client {
        self.http
            .get_or_insert_with(crate::nomad::api::plain_http_client)
            .clone()
    }

    /// The Nomad API through a tunnel, opened on first use.
    pub async fn nomad(&mut self) -> Result<&NomadApi> {
        if self.nomad.is_none() {
            let addr = self
                .host
                .forward(NOMAD_HTTP_PORT)
                .await
                .context("opening a tunnel to Nomad's HTTP API")?;
            self.nomad = Some(NomadApi::with_client(addr, self.http_client()));
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
            self.pds = Some(Xrpc::with_client(addr, self.http_client()));
        }
        Ok(self.pds.as_ref().expect("just set"))
    }

    /// Carries out the actions every step shares. A step's own actions reach
    /// here only by mistake, which is a bug in that step.
    pub async fn apply(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::Run(_) | Action::Apt(_) | Action::Write { .. } | Action::Upload { .. } => {
                self.apply_on_host(action).await?
            }
            Action::Together(actions) => {
                // `&self` only: the actions share the connection, each on a channel of its own.
                let this = &*self;
                let all = actions.iter().map(|a| this.apply_on_host(a));
                futures::future::try_join_all(all).await?;
            }
            Action::InstallConfig(install) => config_file::apply(self.host, install).await?,
            Action::WaitNomadReady { volumes } => {
                let (progress, host) = (self.progress, self.host);
                let vols: Vec<&str> = volumes.iter().map(String::as_str).collect();
                let nomad = self.nomad().await?;
                while_connected(
                    host,
                    nomad.wait_node_ready(&vols, Duration::from_secs(180), &mut |m| {
                        progress.progress(m)
                    }),
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
            other => crate::bail!(Internal, "bug: no step carried out {other:?}"),
        }
        Ok(())
    }
}

impl Ctx<'_> {
    /// The actions that only need the droplet (no API, no local state), which
    /// may therefore run side by side ([`Action::Together`]).
    async fn apply_on_host(&self, action: &Action) -> Result<()> {
        match action {
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
            other => crate::bail!(Internal, "bug: {other:?} cannot run alongside other work"),
        }
        Ok(())
    }
}

/// Runs a long wait, failing as soon as the connection to the droplet is lost:
/// the waits take an API that does not answer for a service still starting,
/// and would otherwise poll a dead tunnel until their timeout.
pub(super) async fn while_connected<T>(
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
