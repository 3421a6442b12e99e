//! Steps: each one gathers facts from the droplet, turns them into a plan of
//! changes (a pure function, unit-tested with facts in and changes out), and the
//! runner applies the changes, then gathers the facts again to check that
//! nothing is left to do. The same plans drive `pdsup plan`, `--dry-run`, the
//! progress output and the tests.
//!
//! A step is a value implementing [`Step`], in a file of its own; a subcommand is
//! a list of steps (like [`UP`]) handed to the [`runner`]. Adding a step means
//! one file and one line in such a list.
//!
//! Steps are planned one at a time, just before they run, so a plan never goes
//! stale because of an earlier step's changes. `pdsup plan` without a droplet
//! plans every step against the facts of a fresh droplet instead ([`Step::fresh`]).

pub mod account;
pub mod adopt;
pub mod backup_schedule;
pub mod dns;
pub mod docker;
pub mod docker_logs;
pub mod exposure;
pub mod facts;
pub mod nomad_config;
pub mod nomad_install;
pub mod packages;
pub mod pds_image;
pub mod pds_job;
pub mod preflight;
pub mod proxy;
pub mod restore_data;
pub mod restore_snapshot;
pub mod secrets;

mod ctx;
pub mod runner;

use crate::error::Result;
use async_trait::async_trait;

pub use crate::plan::{Action, Change, Contents, StepId, StepPlan};
pub use ctx::{AccountOutcome, Ctx, Outcome};
pub use runner::{RunReport, StepReport};

use crate::host::Cmd;
use crate::settings::Settings;
use crate::state::PdsSecrets;

/// The steps of `pdsup up`, in the order they run.
pub const UP: &[&dyn AnyStep] = &[
    &preflight::PreflightStep,
    &exposure::ExposureStep,
    &packages::PackagesStep,
    &docker::DockerStep,
    &docker_logs::DockerLogsStep,
    &nomad_install::NomadInstallStep,
    &nomad_config::NomadConfigStep,
    &proxy::ProxyStep,
    &secrets::SecretsStep,
    &pds_image::PdsImageStep,
    &pds_job::PdsJobStep,
    &account::AccountStep,
    &dns::DnsStep,
];

/// What a plan may depend on besides the step's facts.
pub struct PlanInput<'a> {
    pub settings: &'a Settings,
    /// The site's secrets (made up for a dry run of a new site: never shown).
    pub secrets: &'a PdsSecrets,
    /// Where the site's `pds.env` is, for hints.
    pub env_file: &'a str,
}

/// One step of a run.
#[async_trait(?Send)]
pub trait Step: Sync {
    /// What the step needs to know about the droplet to plan.
    type Facts: Send + Sync;

    fn id(&self) -> StepId;

    /// The facts of a fresh droplet, for planning with no droplet to ask.
    fn fresh(&self) -> Self::Facts;

    /// The commands of the facts `gather` reads with [`Ctx::read`], so that the
    /// runner can ask for several steps' facts in one round trip. Only a matter
    /// of speed: a fact not listed is asked for when it is read.
    fn probes(&self, _settings: &Settings) -> Vec<Cmd> {
        Vec::new()
    }

    /// Asks the droplet (read-only).
    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Self::Facts>;

    /// The changes that take the droplet from `facts` to what `input` asks for.
    fn plan(&self, facts: &Self::Facts, input: &PlanInput<'_>) -> Result<StepPlan>;

    /// Carries out one change. The runner's actions ([`Ctx::apply`]) by default;
    /// a step with actions of its own handles those and passes the rest on.
    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()> {
        ctx.apply(action).await
    }

    /// After the changes: the facts gathered again must plan no change, or the
    /// run stops here rather than build on a step that did not take.
    async fn recheck(&self, ctx: &mut Ctx<'_>) -> Result<()> {
        let facts = self.gather(ctx).await?;
        let again = ctx.with_plan_input(|input| self.plan(&facts, input))?;
        if again.changes.is_empty() && again.blockers.is_empty() {
            return Ok(());
        }
        let left: Vec<&str> = again
            .changes
            .iter()
            .map(|c| c.summary.as_str())
            .chain(again.blockers.iter().map(String::as_str))
            .collect();
        crate::bail!(
            "after its changes, {} still finds work to do: {}; run the same command again, and report \
             a bug if this repeats",
            self.id().name(),
            left.join("; ")
        )
    }
}

/// A [`Step`] with its facts type hidden, so that steps of different kinds can
/// sit in one list. Implemented for every `Step`.
#[async_trait(?Send)]
pub trait AnyStep: Sync {
    fn id(&self) -> StepId;
    fn probes(&self, settings: &Settings) -> Vec<Cmd>;
    /// Gathers the facts from the droplet and plans against them.
    async fn plan_live(&self, ctx: &mut Ctx<'_>) -> Result<StepPlan>;
    /// Plans against a fresh droplet's facts (no droplet to ask).
    fn plan_fresh(&self, input: &PlanInput<'_>) -> Result<StepPlan>;
    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()>;
    async fn recheck(&self, ctx: &mut Ctx<'_>) -> Result<()>;
}

#[async_trait(?Send)]
impl<S: Step> AnyStep for S {
    fn id(&self) -> StepId {
        Step::id(self)
    }

    fn probes(&self, settings: &Settings) -> Vec<Cmd> {
        Step::probes(self, settings)
    }

    async fn plan_live(&self, ctx: &mut Ctx<'_>) -> Result<StepPlan> {
        let facts = self.gather(ctx).await?;
        ctx.with_plan_input(|input| self.plan(&facts, input))
    }

    fn plan_fresh(&self, input: &PlanInput<'_>) -> Result<StepPlan> {
        self.plan(&self.fresh(), input)
    }

    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()> {
        Step::apply(self, ctx, action).await
    }

    async fn recheck(&self, ctx: &mut Ctx<'_>) -> Result<()> {
        Step::recheck(self, ctx).await
    }
}
