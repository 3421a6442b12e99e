//! nomad.hcl: a secure single-node config when there is none, otherwise the
//! user's file patched in place (comments and layout kept) to add the host
//! volumes. Nomad restarts only when the file changed (or is not running), and
//! the step waits until the node is ready with the volumes fingerprinted.

use anyhow::Result;

use super::{Action, Contents, Ctx, StepId, StepPlan};
use crate::host::{quote, Cmd, FileMode};
use crate::nomad::config::{self, HostVolume, TaskInterface};
use crate::settings::{Proxy, Settings, IO_VOLUME_PATH, NOMAD_CONFIG_PATH, PDS_VOLUME_PATH};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub config: Option<String>,
    /// Host-volume directories that already exist.
    pub existing_dirs: Vec<String>,
    pub active: bool,
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

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let config = ctx
        .host
        .read_file(NOMAD_CONFIG_PATH)
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let mut script = String::from("systemctl is-active --quiet nomad && echo active; ");
    for v in wanted_volumes(ctx.settings) {
        script.push_str(&format!("[ -d {p} ] && echo dir={p}; ", p = quote(&v.path)));
    }
    script.push_str("true");
    let out = ctx.probe(&script).await?.stdout_str();
    Ok(Facts {
        config,
        existing_dirs: out
            .lines()
            .filter_map(|l| l.strip_prefix("dir="))
            .map(str::to_string)
            .collect(),
        active: out.lines().any(|l| l == "active"),
    })
}

pub fn plan(facts: &Facts, settings: &Settings) -> Result<StepPlan> {
    let mut plan = StepPlan::new(StepId::NomadConfig);
    let volumes = wanted_volumes(settings);
    let mut added = Vec::new();
    let (text, changed, paths) = match &facts.config {
        None => {
            let text = config::fresh_config(&volumes);
            let paths = volumes.iter().map(|v| v.path.clone()).collect::<Vec<_>>();
            (text, true, paths)
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
            let paths = patched.paths.iter().map(|(_, p)| p.clone()).collect();
            (patched.text, patched.changed, paths)
        }
    };
    for path in paths {
        if !facts.existing_dirs.contains(&path) {
            plan.change(
                format!("create the host volume directory {path}"),
                Action::Run(Cmd::sh(format!(
                    "mkdir -p {p} && chmod 700 {p}",
                    p = quote(&path)
                ))),
            );
        }
    }
    if changed {
        let what = if facts.config.is_some() {
            format!("add {} to", added.join(" and "))
        } else {
            "write".to_string()
        };
        plan.change(
            format!("{what} {NOMAD_CONFIG_PATH}"),
            Action::Write {
                path: NOMAD_CONFIG_PATH.into(),
                contents: Contents::Text(text.clone()),
                mode: FileMode::root(0o640),
            },
        )
        .detail(crate::ui::diff(
            facts.config.as_deref().unwrap_or(""),
            &text,
        ));
    }
    if changed || !facts.active {
        let verb = if facts.active { "restart" } else { "start" };
        plan.change(
            format!("{verb} Nomad"),
            Action::Run(Cmd::sh("systemctl restart nomad")),
        );
        plan.change(
            "wait for the Nomad node: ready, docker driver healthy, volumes fingerprinted",
            Action::WaitNomadReady {
                volumes: volumes.iter().map(|v| v.name.clone()).collect(),
            },
        );
    }
    Ok(plan)
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
                "create the host volume directory /srv/nomad/pds",
                "create the host volume directory /srv/nomad/io",
                "write /etc/nomad.d/nomad.hcl",
                "start Nomad",
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
        };
        assert!(plan(&facts, &settings).unwrap().is_unchanged());
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
        };
        let plan = plan(&facts, &settings).unwrap();
        let summaries: Vec<&str> = plan.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(
            summaries[0],
            "add host volumes and loopback task ports to /etc/nomad.d/nomad.hcl"
        );
        assert_eq!(summaries[1], "restart Nomad");
        assert!(plan.notes.iter().any(|n| n.contains("beyond loopback")));
        assert!(plan
            .notes
            .iter()
            .any(|n| n.contains("network_interface = \"lo\"")));
        match &plan.changes[0].action {
            Action::Write {
                contents: Contents::Text(text),
                ..
            } => {
                assert_eq!(config::task_interface(text), TaskInterface::Loopback);
                assert!(text.contains("host_volume \"pds\""));
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
        };
        assert!(plan(&facts, &settings).unwrap().is_unchanged());
    }

    #[test]
    fn task_ports_on_another_interface_block_the_run() {
        let facts = Facts {
            config: Some("client {\n  enabled = true\n  network_interface = \"eth0\"\n}\n".into()),
            existing_dirs: Vec::new(),
            active: true,
        };
        let plan = plan(&facts, &Settings::example()).unwrap();
        assert_eq!(plan.blockers.len(), 1, "{:?}", plan.blockers);
        assert!(plan.blockers[0].contains("network_interface = \"eth0\""));
    }
}
