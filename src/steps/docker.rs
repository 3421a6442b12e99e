//! Docker: installed and running. `--docker-source docker` (default, the seed's
//! way) uses Docker's apt repository; `distro` the distribution's `docker.io`.
//! An engine that is already there is kept, whichever package it came from.

use anyhow::Result;

use super::packages::{self, DpkgFacts};
use super::{Action, Contents, Ctx, StepId, StepPlan};
use crate::host::{Cmd, FileMode};
use crate::settings::{DockerSource, Settings};

/// apt-get that waits for a fresh droplet's unattended-upgrades instead of failing.
pub const APT: &str =
    "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 -o Dpkg::Options::=--force-confold -y -q";

/// Packages that provide a Docker engine (the distribution's or Docker's).
const ENGINE_PACKAGES: [&str; 2] = ["docker.io", "docker-ce"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Every package's dpkg status: the engine's, and any package work an
    /// interrupted run (of pdsup or anything else) left half done.
    pub dpkg: DpkgFacts,
    pub active: bool,
    pub enabled: bool,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts::default()
    }

    /// An engine package is `install ok installed`.
    pub fn engine_installed(&self) -> bool {
        ENGINE_PACKAGES.iter().any(|p| self.dpkg.installed(p))
    }

    /// An engine package was being installed when its run was cut short: the
    /// repair finishes it, so it is not installed again (nor its rival package).
    pub fn engine_interrupted(&self) -> bool {
        ENGINE_PACKAGES.iter().any(|p| self.dpkg.interrupted(p))
    }
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let out = ctx
        .probe(&format!(
            "{}\n\
             systemctl is-active --quiet docker && echo service=active; \
             systemctl is-enabled --quiet docker 2>/dev/null && echo service=enabled; true",
            packages::status_probe(&[])
        ))
        .await?
        .stdout_str();
    Ok(Facts {
        dpkg: DpkgFacts::parse(&out),
        active: out.lines().any(|l| l == "service=active"),
        enabled: out.lines().any(|l| l == "service=enabled"),
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
    // Before any apt call of this run (the Docker step is the first to use apt).
    if let Some((summary, detail, script)) = packages::repair(&facts.dpkg) {
        plan.change(summary, Action::Apt(Cmd::sh(script)))
            .detail(detail);
    }
    let installed = facts.engine_installed() || facts.engine_interrupted();
    if !installed {
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
        plan.change(summary, Action::Apt(Cmd::sh(script.clone())))
            .detail(script);
    }
    if !facts.engine_installed() || !facts.active || !facts.enabled {
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
            Action::Apt(cmd) => assert!(cmd.script.contains("install docker.io")),
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

    fn with_packages(status: &str, active: bool) -> Facts {
        Facts {
            dpkg: DpkgFacts::parse(status),
            active,
            enabled: active,
        }
    }

    fn summaries(plan: &StepPlan) -> Vec<&str> {
        plan.changes.iter().map(|c| c.summary.as_str()).collect()
    }

    #[test]
    fn running_engine_is_left_alone_and_a_stopped_one_started() {
        for engine in ["docker.io", "docker-ce"] {
            let running = with_packages(&format!("status {engine} install ok installed\n"), true);
            assert!(plan(&running, &Settings::example()).is_unchanged());
            let stopped = Facts {
                active: false,
                ..running
            };
            let p = plan(&stopped, &Settings::example());
            assert_eq!(summaries(&p), ["enable and start the docker service"]);
        }
    }

    #[test]
    fn only_dpkg_decides_what_is_installed() {
        // Removed but its config left (`rc`), or known but never installed: install.
        for status in [
            "status docker.io deinstall ok config-files\n",
            "status docker-ce unknown ok not-installed\n",
        ] {
            let mut settings = Settings::example();
            settings.docker_source = DockerSource::Distro;
            let p = plan(&with_packages(status, false), &settings);
            assert_eq!(
                summaries(&p),
                [
                    "install docker.io from the distribution",
                    "enable and start the docker service"
                ],
                "{status}"
            );
            assert!(matches!(p.changes[0].action, Action::Apt(_)));
        }
    }

    #[test]
    fn interrupted_install_is_finished_before_anything_else() {
        // A kill during the install: docker.io unpacked (`iU`), dockerd on disk,
        // the service neither configured nor running.
        let killed = with_packages(
            "status docker.io install ok unpacked\nstatus containerd install ok half-configured\nstatus curl install ok installed\n",
            false,
        );
        for source in [DockerSource::Distro, DockerSource::Docker] {
            let mut settings = Settings::example();
            settings.docker_source = source;
            let p = plan(&killed, &settings);
            assert_eq!(p.changes.len(), 2, "{:?}", summaries(&p));
            assert_eq!(
                p.changes[0].summary,
                "finish interrupted package work (dpkg --configure -a, apt-get -f install): containerd (half-configured), docker.io (unpacked)"
            );
            match &p.changes[0].action {
                Action::Apt(cmd) => assert!(cmd
                    .script
                    .contains("dpkg --force-confdef --force-confold --configure -a")),
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(p.changes[1].summary, "enable and start the docker service");
        }
        // Half-done work of any other package is finished too, before this step's apt call.
        let other = with_packages("status caddy install ok half-configured\n", false);
        let p = plan(&other, &Settings::example());
        assert!(
            p.changes[0].summary.contains("caddy (half-configured)"),
            "{:?}",
            summaries(&p)
        );
        assert!(p
            .changes
            .iter()
            .any(|c| c.summary.contains("Docker's apt repository")));
        // Once repaired: nothing.
        let repaired = with_packages(
            "status docker.io install ok installed\nstatus containerd install ok installed\n",
            true,
        );
        assert!(plan(&repaired, &Settings::example()).is_unchanged());
    }
}
