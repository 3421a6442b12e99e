//! Docker: installed and running. `--docker-source docker` (default, the seed's
//! way) uses Docker's apt repository; `distro` the distribution's `docker.io`.
//! An engine that is already there is kept, whichever package it came from.

use anyhow::Result;

use super::{Action, Contents, Ctx, StepId, StepPlan};
use crate::host::{Cmd, FileMode};
use crate::settings::{DockerSource, Settings};

/// apt-get that waits for a fresh droplet's unattended-upgrades instead of failing.
pub const APT: &str =
    "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 -o Dpkg::Options::=--force-confold -y -q";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub installed: bool,
    pub active: bool,
    pub enabled: bool,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts::default()
    }
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let out = ctx
        .probe(
            "command -v dockerd >/dev/null && echo installed; \
             systemctl is-active --quiet docker && echo active; \
             systemctl is-enabled --quiet docker 2>/dev/null && echo enabled; true",
        )
        .await?
        .stdout_str();
    Ok(Facts {
        installed: out.lines().any(|l| l == "installed"),
        active: out.lines().any(|l| l == "active"),
        enabled: out.lines().any(|l| l == "enabled"),
    })
}

/// Docker's apt signing key, shipped in `assets/` so that nothing fetched at run
/// time decides what the droplet trusts (fingerprint checked in the tests).
pub const DOCKER_APT_KEY: &str = include_str!("../../assets/docker-apt-key.asc");
pub const DOCKER_APT_KEY_FINGERPRINT: &str = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88";
const DOCKER_APT_KEY_PATH: &str = "/etc/apt/keyrings/docker.asc";

pub fn install_script(source: DockerSource) -> String {
    match source {
        DockerSource::Distro => format!("set -e\n{APT} update\n{APT} install docker.io\n"),
        DockerSource::Docker => format!(
            r#"set -e
{APT} update
{APT} install ca-certificates
. /etc/os-release
echo "deb [arch=$(dpkg --print-architecture) signed-by={DOCKER_APT_KEY_PATH}] https://download.docker.com/linux/$ID $VERSION_CODENAME stable" > /etc/apt/sources.list.d/docker.list
{APT} update
{APT} install docker-ce docker-ce-cli containerd.io
"#
        ),
    }
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(StepId::Docker);
    if !facts.installed {
        let (summary, source) = match settings.docker_source {
            DockerSource::Docker => (
                "install Docker Engine from Docker's apt repository",
                DockerSource::Docker,
            ),
            DockerSource::Distro => (
                "install docker.io from the distribution",
                DockerSource::Distro,
            ),
        };
        if source == DockerSource::Docker {
            plan.change(
                format!("install Docker's apt signing key ({DOCKER_APT_KEY_FINGERPRINT}) at {DOCKER_APT_KEY_PATH}"),
                Action::Write {
                    path: DOCKER_APT_KEY_PATH.into(),
                    contents: Contents::Text(DOCKER_APT_KEY.to_string()),
                    mode: FileMode::root(0o644),
                },
            );
        }
        let script = install_script(source);
        plan.change(summary, Action::Run(Cmd::sh(script.clone())))
            .detail(script);
    }
    if !facts.installed || !facts.active || !facts.enabled {
        plan.change(
            "enable and start the docker service",
            Action::Run(Cmd::sh("systemctl enable --now docker")),
        );
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_droplet_installs_from_the_chosen_source() {
        let mut settings = Settings::example();
        let plan = plan(&Facts::fresh(), &settings);
        assert_eq!(plan.changes.len(), 3);
        assert!(plan.changes[0]
            .summary
            .contains("9DC858229FC7DD38854AE2D88D81803C0EBFCD88"));
        assert!(plan.changes[1].summary.contains("Docker's apt repository"));
        settings.docker_source = DockerSource::Distro;
        let plan = super::plan(&Facts::fresh(), &settings);
        match &plan.changes[0].action {
            Action::Run(cmd) => assert!(cmd.script.contains("install docker.io")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn shipped_docker_key_has_dockers_fingerprint() {
        use pgp::composed::{Deserializable, SignedPublicKey};
        use pgp::types::KeyDetails;
        let (key, _) = SignedPublicKey::from_string(DOCKER_APT_KEY).expect("armored key");
        assert_eq!(
            format!("{:X}", key.primary_key.fingerprint()),
            DOCKER_APT_KEY_FINGERPRINT
        );
    }

    #[test]
    fn running_engine_is_left_alone_and_a_stopped_one_started() {
        let running = Facts {
            installed: true,
            active: true,
            enabled: true,
        };
        assert!(plan(&running, &Settings::example()).is_unchanged());
        let stopped = Facts {
            active: false,
            ..running
        };
        let p = plan(&stopped, &Settings::example());
        assert_eq!(p.changes.len(), 1);
        assert!(p.changes[0].summary.contains("start"));
    }
}
