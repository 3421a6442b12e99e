//! Docker: installed and running. `--docker-source docker` (default, the seed's
//! way) uses Docker's apt repository; `distro` the distribution's `docker.io`.
//! An engine that is already there is kept, whichever package it came from.

use anyhow::Result;

use super::{Action, Ctx, StepId, StepPlan};
use crate::host::Cmd;
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

pub fn install_script(source: DockerSource) -> String {
    match source {
        DockerSource::Distro => format!("set -e\n{APT} update\n{APT} install docker.io\n"),
        DockerSource::Docker => format!(
            r#"set -e
{APT} update
{APT} install ca-certificates curl
. /etc/os-release
install -m 0755 -d /etc/apt/keyrings
curl -fsSL --retry 3 "https://download.docker.com/linux/$ID/gpg" -o /etc/apt/keyrings/docker.asc
chmod a+r /etc/apt/keyrings/docker.asc
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/$ID $VERSION_CODENAME stable" > /etc/apt/sources.list.d/docker.list
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
        assert_eq!(plan.changes.len(), 2);
        assert!(plan.changes[0].summary.contains("Docker's apt repository"));
        settings.docker_source = DockerSource::Distro;
        let plan = super::plan(&Facts::fresh(), &settings);
        match &plan.changes[0].action {
            Action::Run(cmd) => assert!(cmd.script.contains("install docker.io")),
            other => panic!("unexpected {other:?}"),
        }
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
