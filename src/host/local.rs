//! `LocalHost`: the droplet is this machine (`pdsup up --local`, e.g. from cloud-init).
//! Commands run through `sh -c` as root; a non-root caller goes through `sudo -n`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use crate::error::{Context, Result};
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{write_script, Cmd, FileMode, Host, Output};

pub struct LocalHost {
    use_sudo: bool,
}

impl LocalHost {
    pub fn new() -> Self {
        // SAFETY-free check: geteuid via `id -u` would spawn; /proc/self/status is enough.
        let is_root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
            })
            .unwrap_or(false);
        LocalHost { use_sudo: !is_root }
    }

    fn command(&self, script: &str) -> Command {
        let mut cmd = if self.use_sudo {
            let mut c = Command::new("sudo");
            c.args(["-n", "sh", "-c", script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

impl Default for LocalHost {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Host for LocalHost {
    async fn exec(&self, cmd: &Cmd) -> Result<Output> {
        log::debug!("local: {}", cmd.script);
        let mut child = self
            .command(&cmd.script)
            .spawn()
            .context("starting sh on this machine")?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = cmd.stdin.clone();
        let feed = tokio::spawn(async move {
            // A command that does not read stdin closes it early: not an error.
            let _ = stdin.write_all(&input).await;
        });
        let out = child.wait_with_output().await?;
        let _ = feed.await;
        Ok(Output {
            status: out.status.code().map(|c| c as u32),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn forward(&self, remote_port: u16) -> Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], remote_port)))
    }

    async fn upload(&self, local: &Path, path: &str, mode: &FileMode) -> Result<()> {
        let file =
            std::fs::File::open(local).with_context(|| format!("opening {}", local.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading {}", local.display()))?
            .len();
        let mut cmd = self.command(&write_script(path, mode, len));
        cmd.stdin(Stdio::from(file));
        let out = cmd.output().await?;
        if !out.status.success() {
            crate::bail!(
                RemoteCommand,
                "copying {} to {path} failed: {}",
                local.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "this machine".to_string()
    }
}
