//! The PDS as a Nomad job: the seed's pds.hcl as a typed model, submitted through
//! the SSH tunnel to Nomad's API only when Nomad says it would change something,
//! then watched until the allocation is healthy and `/xrpc/_health` answers.
//!
//! The secrets are not in the job (anyone who reaches Nomad's API can read a
//! job): the site's `pds.env` is copied to the droplet's PDS volume, root-only,
//! and the task sources it before the image's own command runs
//! (`nomad::job::pds_job_with_env_file`). pdsadmin and goat find it there too.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use crate::error::{bail, Context, ErrorKind, Result};

use super::account::{self, DataDir, SiteFacts};
use super::{Action, Ctx, StepId, StepPlan};
use crate::host::facts::Fact;
use crate::host::{Cmd, FileMode, Output, Script};
use crate::nomad::api::{JobFailed, StartFailure};
use crate::nomad::job::{pds_job_with_env_file, ImageCommand, Job};
use crate::pds::env::pds_environment;
use crate::secret::EnvValue;
use crate::settings::Settings;
use crate::state::env_file::{parse_env_file, render_env_file};
use crate::state::PdsSecrets;

pub const ID: StepId = StepId::new("pds_job", "pds job");

/// The site's `pds.env` on the droplet: `/pds/pds.env` in the PDS container.
pub const DROPLET_ENV_FILE: &str = "/srv/nomad/pds/pds.env";
/// Its mode and owner as `stat -c '%a %U %G'` prints them.
const DROPLET_ENV_MODE: &str = "600 root root";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The PDS image's entrypoint and command (the pds image step put it there);
    /// `None` when Docker does not have the image (a dry run, `pdsup plan`).
    pub image_command: Option<ImageCommand>,
    /// The site's image by its registry digest (`repo@sha256:…`), when it is
    /// given by tag and Docker knows the digest: the job runs that, so the
    /// site stays on the exact image it was first deployed with however the
    /// tag moves (site.toml records the pin, `pdsup upgrade` moves it).
    pub pinned_image: Option<String>,
    pub job_unchanged: bool,
    pub healthy: bool,
    /// The droplet's `pds.env`: its SHA-256 and `stat` mode, `None` when absent.
    pub droplet_env: Option<DropletEnv>,
    /// The PDS data dir and what site.toml says of the account, for
    /// [`account::claim_data_dir`].
    pub data: DataDir,
    pub site: SiteFacts,
    /// The site id to claim the data dir with when the site has none yet.
    pub new_site_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropletEnv {
    pub sha256: String,
    /// `600 root root`.
    pub mode: String,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts {
            data: DataDir::fresh(),
            new_site_id: account::new_site_id(),
            ..Facts::default()
        }
    }
}

/// The droplet's `pds.env`, compared by its hash: the secrets never travel back.
pub fn droplet_env(path: &str) -> Fact<Option<DropletEnv>> {
    Fact::new(
        Script::of(
            "[ -f {} ] || exit 0; stat -c '%a %U %G' {} && sha256sum < {}",
            &[path, path, path],
        ),
        parse_droplet_env,
    )
}

/// `600 root root` then `<hex>  -`; anything else is no usable file.
pub fn parse_droplet_env(out: &Output) -> Option<DropletEnv> {
    if !out.success() {
        return None;
    }
    let text = out.stdout_str();
    let mut lines = text.lines();
    let mode = lines.next()?.trim().to_string();
    let sha256 = lines.next()?.split_whitespace().next()?.to_string();
    (sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some(DropletEnv { sha256, mode })
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The official image's command, shown in a plan while the image is not on the
/// droplet yet; a real run reads it from the image (the pds image step runs first).
fn official_image_command() -> ImageCommand {
    ImageCommand {
        entrypoint: vec!["dumb-init".into(), "--".into()],
        cmd: vec![
            "node".into(),
            "--enable-source-maps".into(),
            "index.js".into(),
        ],
    }
}

/// The pds job: the PDS's environment without its secrets, which the task
/// reads from the droplet's `pds.env`.
pub fn job(settings: &Settings, secrets: &PdsSecrets, command: &ImageCommand) -> Result<Job> {
    let plain: Vec<(String, EnvValue)> = pds_environment(settings, secrets)?
        .into_iter()
        .filter(|(_, v)| matches!(v, EnvValue::Plain(_)))
        .collect();
    Ok(pds_job_with_env_file(&settings.pds_image, plain, command))
}

/// The settings the job is built from: the site's image by its digest when
/// it is pinned to one.
pub fn pinned<'a>(settings: &'a Settings, pinned_image: Option<&str>) -> Cow<'a, Settings> {
    match pinned_image {
        Some(image) if image != settings.pds_image => Cow::Owned(Settings {
            pds_image: image.to_string(),
            ..settings.clone()
        }),
        _ => Cow::Borrowed(settings),
    }
}

/// Whether an image reference is already by digest.
pub fn is_by_digest(image: &str) -> bool {
    image.contains('@')
}

/// The text of the site's `pds.env` (secrets in clear: never shown).
fn env_file_text(settings: &Settings, secrets: &PdsSecrets) -> Result<String> {
    Ok(render_env_file(&pds_environment(settings, secrets)?))
}

/// The same file with its secrets masked, for the plan.
fn env_file_shown(settings: &Settings, secrets: &PdsSecrets) -> Result<String> {
    let masked: Vec<(String, EnvValue)> = pds_environment(settings, secrets)?
        .into_iter()
        .map(|(k, v)| {
            let shown = EnvValue::plain(v.shown());
            (k, shown)
        })
        .collect();
    Ok(render_env_file(&masked))
}

/// The commands of the facts [`gather`] reads.
pub fn probes(settings: &Settings) -> Vec<Cmd> {
    vec![
        super::pds_image::image_command(&settings.pds_image).cmd,
        super::pds_image::image_digest(&settings.pds_image).cmd,
        droplet_env(DROPLET_ENV_FILE).cmd,
        account::data_dir_fact().cmd,
    ]
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let image_command = ctx
        .read(&super::pds_image::image_command(&ctx.settings.pds_image))
        .await?;
    let pinned_image = match &image_command {
        Some(_) if !is_by_digest(&ctx.settings.pds_image) => {
            ctx.read(&super::pds_image::image_digest(&ctx.settings.pds_image))
                .await?
        }
        _ => None,
    };
    let job_unchanged = match &image_command {
        Some(command) => {
            let settings = pinned(ctx.settings, pinned_image.as_deref());
            let job = job(&settings, ctx.secrets()?, command)?;
            super::proxy::job_unchanged(ctx, &job).await
        }
        None => false,
    };
    // A converged PDS is not waited for again: its version comes from this check.
    let healthy = job_unchanged
        && match pds_health(ctx).await {
            Ok(version) => {
                ctx.outcome.pds_version = Some(version);
                true
            }
            Err(_) => false,
        };
    Ok(Facts {
        image_command,
        pinned_image,
        job_unchanged,
        healthy,
        droplet_env: ctx.read(&droplet_env(DROPLET_ENV_FILE)).await?,
        data: account::gather_data_dir(ctx).await?,
        site: SiteFacts::of(&ctx.record),
        new_site_id: account::new_site_id(),
    })
}

pub fn plan(facts: &Facts, settings: &Settings, secrets: &PdsSecrets) -> Result<StepPlan> {
    let settings = &*pinned(settings, facts.pinned_image.as_deref());
    let mut plan = StepPlan::new(ID);
    // Before anything else: the PDS must never start on data that is not this site's.
    account::claim_data_dir(
        &mut plan,
        &facts.data,
        &facts.site,
        &facts.new_site_id,
        settings,
    );
    if !plan.blockers.is_empty() {
        return Ok(plan);
    }
    let wanted = sha256_hex(&env_file_text(settings, secrets)?);
    let env_current = facts
        .droplet_env
        .as_ref()
        .is_some_and(|e| e.sha256 == wanted && e.mode == DROPLET_ENV_MODE);
    if !env_current {
        plan.change(
            format!(
                "write {DROPLET_ENV_FILE} (root, 0600): the site's pds.env, for the PDS task, pdsadmin and goat"
            ),
            Action::WriteDropletEnvFile,
        )
        .detail(env_file_shown(settings, secrets)?);
    }
    if !facts.job_unchanged {
        let command = match &facts.image_command {
            Some(command) => command.clone(),
            None => {
                plan.notes.push(format!(
                    "{} is not on the droplet yet: the job shows the official image's command; \
                     the one it runs is read from the image",
                    settings.pds_image
                ));
                official_image_command()
            }
        };
        let job = job(settings, secrets, &command)?;
        let hcl = job.to_hcl(false);
        let pin = match is_by_digest(&settings.pds_image) {
            true => ", pinned by digest",
            false => "",
        };
        plan.change(
            format!("submit the pds job ({}{pin})", settings.pds_image),
            Action::SubmitJob(Box::new(job)),
        )
        .detail(hcl);
    }
    // The task reads pds.env when it starts. Whatever it holds besides the
    // secrets (which never change) is also in the job's env, so a file that
    // changes comes with a job that changes, and a new task reads it.
    if !facts.job_unchanged || !facts.healthy {
        plan.change(
            "wait for the PDS allocation to be healthy",
            Action::WaitJobHealthy {
                job: "pds".into(),
                image: settings.pds_image.clone(),
            },
        );
        plan.change("wait for /xrpc/_health", Action::WaitPdsHealthy);
    }
    Ok(plan)
}

/// Copies the site's `pds.env` to the droplet. Secrets change only by an
/// explicit rotation: the text must be the local file's, byte for byte, and
/// read back to the site's secrets, or nothing is written.
pub async fn write_droplet_env(ctx: &mut Ctx<'_>) -> Result<()> {
    let local = ctx.site.env_file();
    let Some(secrets) = ctx.site.load_secrets()? else {
        bail!(
            Internal,
            "{} has no secrets yet; the secrets step writes it first",
            local.display()
        );
    };
    let text = env_file_text(ctx.settings, &secrets)?;
    let reread = parse_env_file(&text)
        .map_err(crate::error::Error::from)
        .and_then(|env| PdsSecrets::from_env(&env));
    let same_as_local = std::fs::read_to_string(&local).is_ok_and(|l| l == text);
    if !same_as_local || !matches!(&reread, Ok(r) if *r == secrets) {
        bail!(
            Internal,
            "the droplet's {DROPLET_ENV_FILE} would not be {} with the site's secrets; nothing was written",
            local.display()
        );
    }
    ctx.host
        .write_file(DROPLET_ENV_FILE, text.as_bytes(), &FileMode::root(0o600))
        .await
}

async fn pds_health(ctx: &mut Ctx<'_>) -> Result<String> {
    ctx.pds().await?.health().await
}

/// Waits for a job's allocation to be healthy; an image that cannot be pulled
/// is named plainly.
pub async fn wait_healthy(ctx: &mut Ctx<'_>, job: &str, image: &str) -> Result<()> {
    wait_job(ctx, job, image, false).await
}

/// The PDS's wait: on the job's first start, until its allocation runs (then
/// `/xrpc/_health` is polled, which answers as soon as the PDS listens, while
/// Nomad would wait for its next check and `min_healthy_time` on top); after
/// that, for Nomad's verdict, as the old PDS may answer during the update.
async fn wait_started(ctx: &mut Ctx<'_>, job: &str, image: &str) -> Result<()> {
    wait_job(ctx, job, image, true).await
}

async fn wait_job(ctx: &mut Ctx<'_>, job: &str, image: &str, first_start_runs: bool) -> Result<()> {
    let ui = ctx.progress;
    let nomad = ctx.nomad().await?;
    let mut progress = |m: &str| ui.progress(m);
    let timeout = Duration::from_secs(300);
    let result = match first_start_runs {
        true => nomad.wait_job_started(job, timeout, &mut progress).await,
        false => nomad.wait_job_healthy(job, timeout, &mut progress).await,
    };
    result.map_err(|e| {
        let pull_failed = e
            .downcast_ref::<JobFailed>()
            .is_some_and(|f| f.cause == StartFailure::ImagePull);
        if pull_failed {
            let hint = if job == "io" {
                "IO is a closed preview: the droplet must be able to pull it (docker login), or use --proxy caddy"
            } else {
                "check the image name (--pds-image), the droplet's access to the registry, or load it with --pds-image-archive FILE"
            };
            e.context(format!("the image {image} could not be pulled on the droplet"))
                .with_hint(hint)
        } else {
            e.context(format!("job {job} did not become healthy"))
        }
    })
}

/// How often `/xrpc/_health` is asked while the PDS starts: a request through
/// the open tunnel is cheap, and the run goes on as soon as the PDS answers.
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// Polls `/xrpc/_health` through the tunnel until the PDS answers.
pub async fn wait_pds_health(ctx: &mut Ctx<'_>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last_err = None;
    while Instant::now() < deadline {
        match pds_health(ctx).await {
            Ok(version) => {
                ctx.outcome.pds_version = Some(version);
                return Ok(());
            }
            Err(e) => {
                if last_err.is_none() {
                    ctx.progress
                        .progress("waiting for the PDS to answer /xrpc/_health");
                }
                last_err = Some(e);
            }
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
    Err(last_err.unwrap_or_else(|| crate::err!("timed out")))
        .kind(ErrorKind::TimedOut)
        .context("the PDS did not answer /xrpc/_health within 3 minutes; see `docker logs` of the pds task on the droplet")
}

/// The PDS image and the pds Nomad job, healthy.
pub struct PdsJobStep;

#[async_trait::async_trait(?Send)]
impl super::Step for PdsJobStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts::fresh()
    }

    fn probes(&self, settings: &Settings) -> Vec<Cmd> {
        probes(settings)
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        gather(ctx).await
    }

    fn plan(&self, facts: &Facts, input: &super::PlanInput<'_>) -> Result<StepPlan> {
        plan(facts, input.settings, input.secrets)
    }

    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()> {
        match action {
            Action::ClaimDataDir { site_id } => account::apply_claim(ctx, site_id).await,
            Action::WriteDropletEnvFile => write_droplet_env(ctx).await,
            Action::WaitJobHealthy { job, image } => {
                let host = ctx.host;
                super::ctx::while_connected(host, wait_started(ctx, job, image)).await
            }
            other => ctx.apply(other).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir this site has claimed.
    fn claimed() -> Facts {
        Facts {
            data: DataDir {
                site_id: Some("s1".into()),
                empty: false,
            },
            site: SiteFacts {
                site_id: Some("s1".into()),
                ..SiteFacts::default()
            },
            ..Facts::fresh()
        }
    }

    #[test]
    fn the_pds_never_starts_on_data_that_is_not_this_sites() {
        let settings = Settings::example();
        let secrets = PdsSecrets::generate();
        let lost = Facts {
            site: SiteFacts {
                recorded_did: Some("did:plc:old".into()),
                site_id: Some("s1".into()),
                ..SiteFacts::default()
            },
            ..Facts::fresh()
        };
        let p = plan(&lost, &settings, &secrets).unwrap();
        assert!(p.is_unchanged(), "{:?}", p.changes);
        assert!(p.blockers[0].contains("did:plc:old"), "{:?}", p.blockers);
        let mut other = claimed();
        other.data.site_id = Some("s2".into());
        let p = plan(&other, &settings, &secrets).unwrap();
        assert!(p.is_unchanged() && p.blockers[0].contains("another site"));
    }

    /// The droplet's pds.env as this site would write it.
    fn current_env(settings: &Settings, secrets: &PdsSecrets) -> Option<DropletEnv> {
        Some(DropletEnv {
            sha256: sha256_hex(&env_file_text(settings, secrets).unwrap()),
            mode: DROPLET_ENV_MODE.into(),
        })
    }

    #[test]
    fn fresh_writes_the_env_file_submits_and_waits_and_converged_does_nothing() {
        let settings = Settings::example();
        let secrets = PdsSecrets::generate();
        let fresh = plan(&Facts::fresh(), &settings, &secrets).unwrap();
        let summaries: Vec<&str> = fresh.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(summaries.len(), 5, "{summaries:?}");
        assert!(summaries[0].starts_with("mark /srv/nomad/pds as this site's PDS data"));
        assert!(summaries[1].starts_with("write /srv/nomad/pds/pds.env (root, 0600)"));
        assert!(matches!(
            fresh.changes[1].action,
            Action::WriteDropletEnvFile
        ));
        assert!(summaries[2].starts_with("submit the pds job"));
        // The file's detail names the secrets, masked; the job holds none of them.
        let env_detail = fresh.changes[1].detail.as_deref().unwrap();
        assert!(
            env_detail.contains("PDS_JWT_SECRET=\"********\"")
                || env_detail.contains("PDS_JWT_SECRET=********"),
            "{env_detail}"
        );
        let job_detail = fresh.changes[2].detail.as_deref().unwrap();
        for secret in [
            &secrets.jwt_secret,
            &secrets.admin_password,
            &secrets.rotation_key_hex,
        ] {
            assert!(!env_detail.contains(secret.expose()), "plan shows a secret");
            assert!(!job_detail.contains(secret.expose()), "plan shows a secret");
        }
        assert!(!job_detail.contains("PDS_JWT_SECRET"), "{job_detail}");
        assert!(job_detail.contains("PDS_HOSTNAME"), "{job_detail}");
        assert!(
            fresh.notes[0].contains("not on the droplet yet"),
            "{:?}",
            fresh.notes
        );
        let Action::SubmitJob(job) = &fresh.changes[2].action else {
            panic!("not a job")
        };
        assert!(job.secret_values().is_empty());
        let body = job.to_api_json().to_string();
        for secret in [
            &secrets.jwt_secret,
            &secrets.admin_password,
            &secrets.rotation_key_hex,
        ] {
            assert!(!body.contains(secret.expose()), "the job holds a secret");
        }
        let converged = Facts {
            image_command: Some(official_image_command()),
            job_unchanged: true,
            healthy: true,
            droplet_env: current_env(&settings, &secrets),
            ..claimed()
        };
        assert!(plan(&converged, &settings, &secrets)
            .unwrap()
            .is_unchanged());
    }

    #[test]
    fn a_tag_docker_knows_the_digest_of_is_run_by_that_digest() {
        let settings = Settings::example();
        let secrets = PdsSecrets::generate();
        let digest = format!(
            "{}@sha256:{}",
            "ghcr.io/bluesky-social/pds",
            "ab".repeat(32)
        );
        let pinned = Facts {
            image_command: Some(official_image_command()),
            pinned_image: Some(digest.clone()),
            droplet_env: current_env(&settings, &secrets),
            ..claimed()
        };
        let p = plan(&pinned, &settings, &secrets).unwrap();
        let submit = p
            .changes
            .iter()
            .find(|c| c.summary.starts_with("submit the pds job"))
            .expect("a job to submit");
        assert_eq!(
            submit.summary,
            format!("submit the pds job ({digest}, pinned by digest)")
        );
        let Action::SubmitJob(job) = &submit.action else {
            panic!("not a job")
        };
        let body = job.to_api_json().to_string();
        assert!(body.contains(&digest), "{body}");
        assert!(!body.contains(&settings.pds_image), "{body}");
        // Without a digest (an image loaded from an archive), the tag is run.
        let by_tag = Facts {
            pinned_image: None,
            ..pinned
        };
        let p = plan(&by_tag, &settings, &secrets).unwrap();
        assert!(p
            .changes
            .iter()
            .any(|c| c.summary == format!("submit the pds job ({})", settings.pds_image)));
    }

    #[test]
    fn the_droplet_env_file_is_rewritten_only_when_it_differs() {
        let settings = Settings::example();
        let secrets = PdsSecrets::generate();
        let converged = Facts {
            image_command: Some(official_image_command()),
            job_unchanged: true,
            healthy: true,
            droplet_env: current_env(&settings, &secrets),
            ..claimed()
        };
        let mut loose = converged.clone();
        loose.droplet_env.as_mut().unwrap().mode = "644 root root".into();
        let mut edited = converged.clone();
        edited.droplet_env.as_mut().unwrap().sha256 = "0".repeat(64);
        let mut missing = converged.clone();
        missing.droplet_env = None;
        for facts in [loose, edited, missing] {
            let p = plan(&facts, &settings, &secrets).unwrap();
            let summaries: Vec<&str> = p.changes.iter().map(|c| c.summary.as_str()).collect();
            assert_eq!(summaries.len(), 1, "{summaries:?}");
            assert!(summaries[0].starts_with("write /srv/nomad/pds/pds.env"));
        }
    }

    #[test]
    fn droplet_env_parses_stat_and_sha256sum() {
        use crate::host::facts::tests::output;
        let hex = "a".repeat(64);
        let table: [(Option<u32>, String, Option<DropletEnv>); 5] = [
            (
                Some(0),
                format!("600 root root\n{hex}  -\n"),
                Some(DropletEnv {
                    sha256: hex.clone(),
                    mode: "600 root root".into(),
                }),
            ),
            (Some(0), String::new(), None),
            (Some(1), format!("600 root root\n{hex}  -\n"), None),
            (Some(0), "600 root root\n".into(), None),
            (Some(0), "600 root root\nnot-a-hash  -\n".into(), None),
        ];
        for (status, stdout, want) in table {
            assert_eq!(
                parse_droplet_env(&output(status, &stdout)),
                want,
                "{stdout:?}"
            );
        }
    }
}
