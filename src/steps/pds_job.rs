//! The PDS as a Nomad job: the seed's pds.hcl as a typed model, submitted through
//! the SSH tunnel to Nomad's API only when Nomad says it would change something,
//! then watched until the allocation is healthy and `/xrpc/_health` answers.
//! `--pds-image-archive FILE` loads an image tarball into the droplet's Docker
//! first (offline installs, private builds).

use std::time::{Duration, Instant};

use crate::error::{Context, ErrorKind, Result};

use super::account::{self, DataDir, SiteFacts};
use super::{Action, Ctx, StepId, StepPlan};
use crate::host::{fill, Cmd, FileMode, Script};
use crate::nomad::api::{JobFailed, StartFailure};
use crate::nomad::job::pds_job;
use crate::pds::env::pds_environment;
use crate::settings::Settings;
use crate::state::PdsSecrets;

pub const ID: StepId = StepId::new("pds_job", "pds job");

const IMAGE_STAGING: &str = "/var/tmp/pdsup-pds-image.tar";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub image_present: bool,
    pub job_unchanged: bool,
    pub healthy: bool,
    /// The PDS data dir and what site.toml says of the account, for
    /// [`account::claim_data_dir`].
    pub data: DataDir,
    pub site: SiteFacts,
    /// The site id to claim the data dir with when the site has none yet.
    pub new_site_id: String,
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

/// The commands of the facts [`gather`] reads.
pub fn probes(settings: &Settings) -> Vec<Cmd> {
    vec![
        super::facts::docker_image_present(&settings.pds_image).cmd,
        account::data_dir_fact().cmd,
    ]
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let image = &ctx.settings.pds_image;
    let image_present = ctx.read(&super::facts::docker_image_present(image)).await?;
    let env = pds_environment(ctx.settings, ctx.secrets()?)?;
    let job = pds_job(image, env);
    let job_unchanged = super::proxy::job_unchanged(ctx, &job).await;
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
        image_present,
        job_unchanged,
        healthy,
        data: account::gather_data_dir(ctx).await?,
        site: SiteFacts::of(&ctx.record),
        new_site_id: account::new_site_id(),
    })
}

pub fn plan(facts: &Facts, settings: &Settings, secrets: &PdsSecrets) -> Result<StepPlan> {
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
    if let (Some(archive), false) = (&settings.pds_image_archive, facts.image_present) {
        plan.change(
            format!("upload the PDS image archive {}", archive.display()),
            Action::Upload {
                local: archive.clone(),
                path: IMAGE_STAGING.into(),
                mode: FileMode::root(0o600),
            },
        );
        plan.change(
            format!("load it into Docker as {}", settings.pds_image),
            Action::Run(
                load_script(
                    IMAGE_STAGING,
                    &archive.display().to_string(),
                    &settings.pds_image,
                )
                .cmd(),
            ),
        );
    }
    if !facts.job_unchanged {
        let job = pds_job(&settings.pds_image, pds_environment(settings, secrets)?);
        let hcl = job.to_hcl(false);
        plan.change(
            format!("submit the pds job ({})", settings.pds_image),
            Action::SubmitJob(Box::new(job)),
        )
        .detail(hcl);
    }
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

/// Loads the uploaded archive and removes it whatever happens: a tarball the
/// size of an image must not stay in /var/tmp after a failed load (the next
/// run uploads it again anyway). A failure names the local archive.
fn load_script(staged: &str, archive: &str, image: &str) -> Script {
    let load_failed = format!("docker could not load {archive}: is it a `docker save` tarball?");
    let missing = format!(
        "{archive} was loaded but holds no image {image}: check --pds-image (the name it was saved under)"
    );
    Script::new()
        // The trap's action is a command of its own: the path is quoted in it,
        // and the action quoted as one word.
        .line("trap {} EXIT", &[&fill("rm -f {}", &[staged])])
        .line(
            "docker load -i {} || { echo {} >&2; exit 1; }",
            &[staged, &load_failed],
        )
        .line(
            "docker image inspect {} >/dev/null 2>&1 || { echo {} >&2; exit 1; }",
            &[image, &missing],
        )
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

    #[test]
    fn fresh_submits_and_waits_and_converged_does_nothing() {
        let settings = Settings::example();
        let secrets = PdsSecrets::generate();
        let fresh = plan(&Facts::fresh(), &settings, &secrets).unwrap();
        let summaries: Vec<&str> = fresh.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(summaries.len(), 4, "{summaries:?}");
        assert!(summaries[0].starts_with("mark /srv/nomad/pds as this site's PDS data"));
        assert!(summaries[1].starts_with("submit the pds job"));
        let detail = fresh.changes[1].detail.as_deref().unwrap();
        assert!(
            !detail.contains(secrets.jwt_secret.expose()),
            "plan shows a secret"
        );
        assert!(detail.contains("********"));
        let converged = Facts {
            image_present: true,
            job_unchanged: true,
            healthy: true,
            ..claimed()
        };
        assert!(plan(&converged, &settings, &secrets)
            .unwrap()
            .is_unchanged());
    }

    /// Runs the load script with a stand-in `docker` whose `load` succeeds or fails.
    fn run_load(load_ok: bool) -> (std::process::Output, tempfile::TempDir) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let bin = dir.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let docker = bin.join("docker");
        let load = if load_ok {
            "exit 0"
        } else {
            "echo 'invalid tar header' >&2; exit 1"
        };
        std::fs::write(
            &docker,
            format!("#!/bin/sh\ncase \"$1\" in load) {load};; image) exit 0;; esac\nexit 2\n"),
        )
        .unwrap();
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let staged = dir.join("pdsup-pds-image.tar");
        std::fs::write(&staged, b"not a tarball").unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(load_script(
                staged.to_str().unwrap(),
                "/home/me/pds.tar",
                "example/pds:1",
            ))
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        (out, tmp)
    }

    #[test]
    fn the_staged_archive_is_removed_whatever_the_load_does() {
        let (out, dir) = run_load(false);
        let staged = dir.path().join("pdsup-pds-image.tar");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("docker could not load /home/me/pds.tar"),
            "{stderr}"
        );
        assert!(!staged.exists(), "a failed load left {}", staged.display());
        let (out, dir) = run_load(true);
        let staged = dir.path().join("pdsup-pds-image.tar");
        assert!(out.status.success(), "{out:?}");
        assert!(!staged.exists(), "a load left {}", staged.display());
    }

    #[test]
    fn archive_is_uploaded_only_when_the_image_is_missing() {
        let mut settings = Settings::example();
        settings.pds_image_archive = Some("/tmp/pds.tar".into());
        let secrets = PdsSecrets::generate();
        let p = plan(&Facts::fresh(), &settings, &secrets).unwrap();
        assert!(p.changes[1]
            .summary
            .starts_with("upload the PDS image archive"));
        let present = Facts {
            image_present: true,
            job_unchanged: true,
            healthy: true,
            ..claimed()
        };
        assert!(plan(&present, &settings, &secrets).unwrap().is_unchanged());
    }
}
