//! Secrets: generated here on the first run (never on the droplet), kept in the
//! site's `pds.env` (0600) and reused on every later run, rebuilds included.

use crate::error::{bail, Result};

use super::{Action, Ctx, StepId, StepPlan};
use crate::pds::env::pds_environment;
use crate::settings::Settings;
use crate::state::env_file::{parse_env_file, render_env_file};
use crate::state::PdsSecrets;

pub const ID: StepId = StepId::new("secrets", "secrets");

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub path: String,
    /// The site's secrets, when `pds.env` has them.
    pub secrets: Option<PdsSecrets>,
    pub env_file: Option<String>,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts {
            path: "<state dir>/sites/<hostname>/pds.env".into(),
            secrets: None,
            env_file: None,
        }
    }
}

pub fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    Ok(Facts {
        path: ctx.site.env_file().display().to_string(),
        secrets: ctx.site.load_secrets()?,
        env_file: std::fs::read_to_string(ctx.site.env_file()).ok(),
    })
}

pub fn plan(facts: &Facts, settings: &Settings) -> Result<StepPlan> {
    let mut plan = StepPlan::new(ID);
    match &facts.secrets {
        None => {
            plan.change(
                format!(
                    "generate the PDS secrets (JWT secret, admin password, PLC rotation key) into {} (0600)",
                    facts.path
                ),
                Action::SaveEnvFile,
            );
        }
        Some(secrets) => {
            let wanted = render_env_file(&pds_environment(settings, secrets)?);
            if facts.env_file.as_deref() != Some(wanted.as_str()) {
                plan.change(
                    format!("update {} (secrets kept)", facts.path),
                    Action::SaveEnvFile,
                );
            }
        }
    }
    Ok(plan)
}

/// Writes `pds.env` with the existing secrets, or new ones for a new site.
pub fn apply(ctx: &mut Ctx<'_>) -> Result<()> {
    let secrets = match ctx.site.load_secrets()? {
        Some(existing) => existing,
        None => PdsSecrets::generate(),
    };
    let text = render_env_file(&pds_environment(ctx.settings, &secrets)?);
    // Secrets change only by an explicit rotation: the file about to be written
    // must read back to exactly these secrets, or nothing is written.
    let reread = parse_env_file(&text)
        .map_err(crate::error::Error::from)
        .and_then(|env| PdsSecrets::from_env(&env));
    if !matches!(&reread, Ok(r) if *r == secrets) {
        bail!(
            Internal,
            "the new {} would not hold the site's secrets unchanged; nothing was written",
            ctx.site.env_file().display()
        );
    }
    ctx.site.save_env_file(&text)?;
    ctx.set_secrets(secrets);
    Ok(())
}

/// The site's secrets, made here and kept in the local pds.env.
pub struct SecretsStep;

#[async_trait::async_trait(?Send)]
impl super::Step for SecretsStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts::fresh()
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        gather(ctx)
    }

    fn plan(&self, facts: &Facts, input: &super::PlanInput<'_>) -> Result<StepPlan> {
        plan(facts, input.settings)
    }

    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()> {
        match action {
            Action::SaveEnvFile => apply(ctx),
            other => ctx.apply(other).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_site_generates_and_existing_site_keeps() {
        let settings = Settings::example();
        let fresh = plan(&Facts::fresh(), &settings).unwrap();
        assert!(fresh.changes[0]
            .summary
            .starts_with("generate the PDS secrets"));
        let secrets = PdsSecrets::generate();
        let text = render_env_file(&pds_environment(&settings, &secrets).unwrap());
        let kept = Facts {
            path: "x".into(),
            secrets: Some(secrets),
            env_file: Some(text),
        };
        assert!(plan(&kept, &settings).unwrap().is_unchanged());
        let mut other = settings.clone();
        other.plc_url = "http://10.213.0.1:2582".into();
        let p = plan(&kept, &other).unwrap();
        assert_eq!(p.changes[0].summary, "update x (secrets kept)");
    }
}
