//! nomad.hcl: a secure single-node config when there is none, otherwise the
//! user's file patched in place (comments and layout kept) to add the host
//! volumes. Nomad restarts only when the file changed (or is not running), and
//! the step waits until the node is ready with the volumes fingerprinted.

use crate::error::Result;

use super::{Action, Ctx, StepId, StepPlan};
use crate::host::config_file;
use crate::host::facts as host_facts;
use crate::host::{Cmd, FileMode, Script};
use crate::nomad::config::{self, HostVolume, TaskInterface};
use crate::settings::{Proxy, Settings, IO_VOLUME_PATH, NOMAD_CONFIG_PATH, PDS_VOLUME_PATH};

pub const ID: StepId = StepId::new("nomad_config", "nomad.hcl");

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub config: Option<String>,
    /// Host-volume directories that already exist.
    pub existing_dirs: Vec<String>,
    pub active: bool,
    /// A backup of nomad.hcl is left over: a run stopped between moving a new
    /// file into place and Nomad running on it.
    pub install_interrupted: bool,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts::default()
    }
}

pub fn wanted_volumes(settings: &Settings) -> Vec<HostVolume> {
    let mut volumes = vec![HostVolume {
        name: "pds".into(),
        path: PDS_VOLUME_PATH.into(),
        read_only: false,
    }];
    if settings.proxy == Proxy::Io {
        volumes.push(HostVolume {
            name: "io".into(),
            path: IO_VOLUME_PATH.into(),
            read_only: false,
        });
    }
    volumes
}

/// The commands of the facts [`gather`] reads (the directories of volumes
/// declared only in the droplet's nomad.hcl are asked for after reading it).
pub fn probes(settings: &Settings) -> Vec<Cmd> {
    let mut cmds = vec![
        host_facts::file_text(NOMAD_CONFIG_PATH).cmd,
        host_facts::unit_active("nomad").cmd,
        host_facts::exists(&config_file::backup_path(NOMAD_CONFIG_PATH)).cmd,
    ];
    cmds.extend(
        wanted_volumes(settings)
            .into_iter()
            .map(|v| host_facts::is_dir(&v.path).cmd),
    );
    cmds
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let config = ctx
        .read_checked(&host_facts::file_text(NOMAD_CONFIG_PATH))
        .await?;
    let mut dirs: Vec<String> = wanted_volumes(ctx.settings)
        .into_iter()
        .map(|v| v.path)
        .collect();
    if let Some(text) = &config {
        dirs.extend(
            config::declared_host_volumes(text)
                .into_iter()
                .map(|(_, p)| p),
        );
    }
    dirs.sort();
    dirs.dedup();
    let mut existing_dirs = Vec::new();
    for dir in dirs {
        if ctx.read(&host_facts::is_dir(&dir)).await? {
            existing_dirs.push(dir);
        }
    }
    Ok(Facts {
        config,
        existing_dirs,
        active: ctx.read(&host_facts::unit_active("nomad")).await?,
        install_interrupted: ctx
            .read(&host_facts::exists(&config_file::backup_path(
                NOMAD_CONFIG_PATH,
            )))
            .await?,
    })
}

pub fn plan(facts: &Facts, settings: &Settings) -> Result<StepPlan> {
    let mut plan = StepPlan::new(ID);
    let volumes = wanted_volumes(settings);
    let mut added = Vec::new();
    let (text, changed) = match &facts.config {
        None => {
            let text = config::fresh_config(&volumes);
            (text, true)
        }
        Some(existing) => {
            let mut patched = config::ensure_host_volumes(existing, &volumes)?;
            if patched.changed {
                added.push("host volumes");
            }
            // The PDS's port is static and pdsup and the proxy reach it on
            // 127.0.0.1: it must be allocated on loopback, as in a fresh config.
            match config::task_interface(&patched.text) {
                TaskInterface::Loopback => {}
                TaskInterface::Unset => {
                    let net = config::ensure_loopback_tasks(&patched.text)?;
                    if net.changed {
                        added.push("loopback task ports");
                        plan.notes.push(format!(
                            "{NOMAD_CONFIG_PATH} sets no client network_interface, so Nomad publishes task ports on the droplet's public address; pdsup sets network_interface = \"lo\" so that the PDS is reachable only through the proxy (ports of other jobs on this node move to loopback too)"
                        ));
                        patched.text = net.text;
                        patched.changed = true;
                    }
                }
                TaskInterface::Other(interface) => plan.blockers.push(format!(
                    "{NOMAD_CONFIG_PATH} sets network_interface = {interface:?} in client {{}}: Nomad would publish the PDS's port there, past the proxy, where neither the proxy nor pdsup reaches it on 127.0.0.1. Set network_interface = \"lo\" (or remove it: pdsup then sets it), then run pdsup again"
                )),
            }
            if !config::http_listens_on_loopback(&patched.text) {
                plan.notes.push(format!(
                    "{NOMAD_CONFIG_PATH} lets Nomad's HTTP API listen beyond loopback; without ACLs anyone who reaches port 4646 can run jobs. Consider `addresses {{ http = \"127.0.0.1\" }}`"
                ));
            }
            (patched.text, patched.changed)
        }
    };
    // Nomad refuses to start while the directory of any declared host volume is
    // missing, so every one of them is created, not only pdsup's.
    let mut seen = Vec::new();
    for (name, path) in config::declared_host_volumes(&text) {
        if seen.contains(&path) || facts.existing_dirs.contains(&path) {
            continue;
        }
        seen.push(path.clone());
        if !path.starts_with('/') {
            plan.notes.push(format!(
                "{NOMAD_CONFIG_PATH} declares host_volume {name:?} at {path:?}, which is not an absolute path: pdsup does not create it, and Nomad may refuse to start"
            ));
            continue;
        }
        let script = if volumes.iter().any(|v| v.name == name) {
            Script::of("mkdir -p {} && chmod 700 {}", &[&path, &path])
        } else {
            Script::of("mkdir -p {}", &[&path])
        };
        plan.change(
            format!("create the host volume directory {path} ({name})"),
            Action::Run(script.cmd()),
        );
    }
    let unit = "nomad".to_string();
    if changed || facts.install_interrupted {
        let verb = if facts.active { "restart" } else { "start" };
        let summary = if !changed {
            format!("install {NOMAD_CONFIG_PATH} again and {verb} Nomad (a run stopped before Nomad ran on it)")
        } else if facts.config.is_some() {
            format!(
                "add {} to {NOMAD_CONFIG_PATH} and {verb} Nomad",
                added.join(" and ")
            )
        } else {
            format!("write {NOMAD_CONFIG_PATH} and {verb} Nomad")
        };
        let install = config_file::Install {
            unit,
            file: Some(config_file::NewFile {
                path: NOMAD_CONFIG_PATH.into(),
                contents: text.clone(),
                mode: FileMode::root(0o640),
                // Parsed here: it is the text hcl-edit produced (or pdsup's own).
                validate: None,
            }),
        };
        let detail = format!(
            "{}\n{}",
            crate::plan::diff(facts.config.as_deref().unwrap_or(""), &text),
            install.describe()
        );
        plan.change(summary, Action::InstallConfig(install))
            .detail(detail);
    } else if !facts.active {
        let install = config_file::Install { unit, file: None };
        let detail = install.describe();
        plan.change("start Nomad", Action::InstallConfig(install))
            .detail(detail);
    }
    if changed || facts.install_interrupted || !facts.active {
        plan.change(
            "wait for the Nomad node: ready, docker driver healthy, volumes fingerprinted",
            Action::WaitNomadReady {
                volumes: volumes.iter().map(|v| v.name.clone()).collect(),
            },
        );
    }
    Ok(plan)
}

/// nomad.hcl with the host volumes, and Nomad running on it.
pub struct NomadConfigStep;

#[async_trait::async_trait(?Send)]
impl super::Step for NomadConfigStep {
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
        plan(facts, input.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_droplet_writes_config_and_starts_nomad() {
        let plan = plan(&Facts::fresh(), &Settings::example()).unwrap();
        let summaries: Vec<&str> = plan.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(
            summaries,
            vec![
                "create the host volume directory /srv/nomad/pds (pds)",
                "create the host volume directory /srv/nomad/io (io)",
                "write /etc/nomad.d/nomad.hcl and start Nomad",
                "wait for the Nomad node: ready, docker driver healthy, volumes fingerprinted",
            ]
        );
    }

    #[test]
    fn converged_config_does_not_restart_nomad() {
        let settings = Settings::example();
        let text = config::fresh_config(&wanted_volumes(&settings));
        let facts = Facts {
            config: Some(text),
            existing_dirs: vec![PDS_VOLUME_PATH.into(), IO_VOLUME_PATH.into()],
            active: true,
            install_interrupted: false,
        };
        assert!(plan(&facts, &settings).unwrap().is_unchanged());
        // A run stopped after moving nomad.hcl in, before Nomad ran on it: the
        // install is redone, so Nomad restarts on the file.
        let interrupted = Facts {
            install_interrupted: true,
            ..facts
        };
        let p = plan(&interrupted, &settings).unwrap();
        let summaries: Vec<&str> = p.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(
            summaries,
            [
                "install /etc/nomad.d/nomad.hcl again and restart Nomad (a run stopped before Nomad ran on it)",
                "wait for the Nomad node: ready, docker driver healthy, volumes fingerprinted"
            ]
        );
    }

    #[test]
    fn existing_config_without_volume_is_patched_and_nomad_restarted() {
        let mut settings = Settings::example();
        settings.proxy = Proxy::Caddy;
        let facts = Facts {
            config: Some(
                "data_dir = \"/opt/nomad/data\"\n\nclient {\n  enabled = true\n}\n".into(),
            ),
            existing_dirs: vec![PDS_VOLUME_PATH.into()],
            active: true,
            install_interrupted: false,
        };
        let plan = plan(&facts, &settings).unwrap();
        let summaries: Vec<&str> = plan.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(
            summaries,
            [
                "add host volumes and loopback task ports to /etc/nomad.d/nomad.hcl and restart Nomad",
                "wait for the Nomad node: ready, docker driver healthy, volumes fingerprinted"
            ]
        );
        assert!(plan.notes.iter().any(|n| n.contains("beyond loopback")));
        assert!(plan
            .notes
            .iter()
            .any(|n| n.contains("network_interface = \"lo\"")));
        match &plan.changes[0].action {
            Action::InstallConfig(config_file::Install {
                unit,
                file: Some(file),
            }) => {
                assert_eq!(unit, "nomad");
                assert_eq!(file.path, NOMAD_CONFIG_PATH);
                assert_eq!(
                    config::task_interface(&file.contents),
                    TaskInterface::Loopback
                );
                assert!(file.contents.contains("host_volume \"pds\""));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn existing_config_with_volumes_and_loopback_is_left_alone() {
        let mut settings = Settings::example();
        settings.proxy = Proxy::Caddy;
        let text = "client {\n  enabled = true\n  network_interface = \"lo\"\n\n  host_volume \"pds\" {\n    path = \"/srv/nomad/pds\"\n  }\n}\n";
        let facts = Facts {
            config: Some(text.into()),
            existing_dirs: vec![PDS_VOLUME_PATH.into()],
            active: true,
            install_interrupted: false,
        };
        assert!(plan(&facts, &settings).unwrap().is_unchanged());
    }

    /// A Droplet Superpowers nomad.hcl declares `io` while pdsup deploys Caddy:
    /// Nomad does not start until /srv/nomad/io exists, so pdsup creates it too.
    #[test]
    fn every_declared_host_volume_directory_is_created() {
        let mut settings = Settings::example();
        settings.proxy = Proxy::Caddy;
        let superpowers = "data_dir  = \"/opt/nomad/data\"\nbind_addr = \"0.0.0.0\"\n\nserver {\n  enabled          = true\n  bootstrap_expect = 1\n}\n\nclient {\n  enabled = true\n  servers = [\"127.0.0.1\"]\n  host_volume \"io\" {\n    path      = \"/srv/nomad/io\"\n    read_only = false\n  }\n  host_volume \"scratch\" {\n    path = \"scratch\"\n  }\n}\n";
        let facts = Facts {
            config: Some(superpowers.into()),
            existing_dirs: Vec::new(),
            active: true,
            install_interrupted: false,
        };
        let plan = plan(&facts, &settings).unwrap();
        let runs: Vec<(&str, &str)> = plan
            .changes
            .iter()
            .filter_map(|c| match &c.action {
                Action::Run(cmd) => Some((c.summary.as_str(), cmd.script.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            runs,
            [
                (
                    "create the host volume directory /srv/nomad/io (io)",
                    "mkdir -p /srv/nomad/io"
                ),
                (
                    "create the host volume directory /srv/nomad/pds (pds)",
                    "mkdir -p /srv/nomad/pds && chmod 700 /srv/nomad/pds"
                ),
            ]
        );
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("\"scratch\"") && n.contains("not an absolute path")),
            "{:?}",
            plan.notes
        );
        // With the directories there, nothing is created again.
        let facts = Facts {
            existing_dirs: vec![IO_VOLUME_PATH.into(), PDS_VOLUME_PATH.into()],
            ..facts
        };
        let plan = super::plan(&facts, &settings).unwrap();
        assert!(plan
            .changes
            .iter()
            .all(|c| !matches!(c.action, Action::Run(_))));
    }

    #[test]
    fn task_ports_on_another_interface_block_the_run() {
        let facts = Facts {
            config: Some("client {\n  enabled = true\n  network_interface = \"eth0\"\n}\n".into()),
            existing_dirs: Vec::new(),
            active: true,
            install_interrupted: false,
        };
        let plan = plan(&facts, &Settings::example()).unwrap();
        assert_eq!(plan.blockers.len(), 1, "{:?}", plan.blockers);
        assert!(plan.blockers[0].contains("network_interface = \"eth0\""));
    }
}
