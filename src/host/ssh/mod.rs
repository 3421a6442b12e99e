//! `SshHost`: the droplet over one SSH connection (russh), kept for the whole run.
//!
//! Connecting resolves the destination through `~/.ssh/config` ([`super::dest`]),
//! checks the host key against the site's pin file ([`super::known_hosts`]), and
//! logs in with, in order: the ssh-agent's keys, the key file from `-i` or the
//! config, then `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`. An encrypted key is
//! first offered by its public half; only when the server would accept it is
//! the passphrase needed (options, `PDSUP_SSH_PASSPHRASE`, or a prompt on a TTY).
//!
//! Every command is one session channel: `sh -c '<script>'` for root,
//! `sudo -n sh -c '<script>'` for any other login (checked once at connect).
//! Stdin goes through unchanged (no PTY is ever requested: a PTY would merge
//! stderr into stdout and rewrite bytes). A channel that closes without an exit
//! status yields `status: None`, which `Host::run` treats as failure.
//!
//! Invariant: `Cmd::stdin` and passphrases are never logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod auth;
mod connect;
mod exec;
mod tunnel;

use crate::error::{bail, Context, Result};
use async_trait::async_trait;
use russh::client;
use tokio::io::AsyncRead;
use tokio::net::TcpListener;

use self::auth::{key_candidates, Login};
use self::connect::{client_config, tcp_connect, Client};
use self::exec::drive;
use self::tunnel::tunnel;
use super::dest::{self, Destination, Target};
pub use super::error::{SshError, PASSPHRASE_ENV};
use super::known_hosts::PinPolicy;
use super::{quote, write_script, Cmd, FileMode, Host, Output};
use crate::secret::Secret;

/// How to connect. Built by the CLI from its flags and the site's state dir.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// `-i FILE`: tried after the agent, instead of the config's IdentityFile.
    pub identity_file: Option<PathBuf>,
    /// Passphrase for an encrypted key; `None` falls back to
    /// `PDSUP_SSH_PASSPHRASE`, then to a prompt when stdin is a terminal.
    pub passphrase: Option<Secret>,
    /// The site's pin file (`known_hosts` in pdsup's state dir).
    pub known_hosts: PathBuf,
    /// `--accept-new-host-key`: re-pin a host key that changed.
    pub accept_new_host_key: bool,
    /// `--dry-run`: check the host key against the pins, but never write them.
    pub pin_read_only: bool,
    /// `--ssh-config FILE`; `None` reads `~/.ssh/config` if it exists.
    pub ssh_config: Option<PathBuf>,
    /// For the TCP connection and the SSH handshake, each.
    pub connect_timeout: Duration,
}

/// What `connect` takes from the process rather than from options: the home
/// directory (`~/.ssh/…`), the ssh-agent socket, the passphrase variable and
/// whether a prompt is possible. [`SshHost::connect`] reads them from the
/// process; tests pass their own so that they never touch the real `~/.ssh`
/// and need not change process-global environment variables.
#[derive(Clone, Debug, Default)]
pub struct LocalEnv {
    pub home: Option<PathBuf>,
    /// `SSH_AUTH_SOCK`.
    pub agent_socket: Option<PathBuf>,
    /// `PDSUP_SSH_PASSPHRASE`.
    pub passphrase: Option<Secret>,
    /// Stdin is a terminal: a passphrase may be asked for.
    pub interactive: bool,
}

impl LocalEnv {
    pub fn from_process() -> Self {
        use std::io::IsTerminal;
        LocalEnv {
            home: dirs::home_dir(),
            agent_socket: std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            passphrase: std::env::var(PASSPHRASE_ENV)
                .ok()
                .filter(|p| !p.is_empty())
                .map(Secret::new),
            interactive: std::io::stdin().is_terminal(),
        }
    }
}

/// The droplet over SSH. Cheap to share by reference; one connection for all.
pub struct SshHost {
    session: Arc<client::Handle<Client>>,
    target: Target,
    use_sudo: bool,
    fingerprint: String,
    forwards: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl SshHost {
    /// Connects and logs in, reading the home dir, `SSH_AUTH_SOCK` and
    /// `PDSUP_SSH_PASSPHRASE` from this process.
    pub async fn connect(dest: &Destination, opts: &SshOptions) -> Result<SshHost> {
        Self::connect_with(dest, opts, &LocalEnv::from_process()).await
    }

    /// [`SshHost::connect`] with an explicit local environment.
    pub async fn connect_with(
        dest: &Destination,
        opts: &SshOptions,
        env: &LocalEnv,
    ) -> Result<SshHost> {
        let target = dest::resolve_in(dest, opts.ssh_config.as_deref(), env.home.as_deref())?;
        // Named key files are checked before the network: a typo fails fast.
        let keys = key_candidates(opts, &target, env)?;

        let stream = tcp_connect(&target, opts.connect_timeout).await?;
        let verdict = Arc::new(Mutex::new(None));
        let handler = Client {
            host: target.host.clone(),
            port: target.port,
            policy: PinPolicy {
                pin_file: opts.known_hosts.clone(),
                user_known_hosts: env
                    .home
                    .as_ref()
                    .map(|h| h.join(".ssh").join("known_hosts")),
                accept_new: opts.accept_new_host_key,
                read_only: opts.pin_read_only,
            },
            verdict: verdict.clone(),
        };
        let handshake = tokio::time::timeout(
            opts.connect_timeout,
            client::connect_stream(Arc::new(client_config()), stream, handler),
        )
        .await;
        let host_key = verdict.lock().expect("verdict lock").take();
        let (mut handle, fingerprint) = match (handshake, host_key) {
            (_, Some(Err(refused))) => return Err(refused.into()),
            (Ok(Ok(handle)), Some(Ok(fingerprint))) => (handle, fingerprint),
            (Ok(Ok(_)), None) => bail!(Internal, "russh connected without checking the host key"),
            (Ok(Err(e)), _) => {
                return Err(SshError::Handshake {
                    addr: target.address(),
                    reason: e.to_string(),
                }
                .into())
            }
            (Err(_), _) => {
                return Err(SshError::Handshake {
                    addr: target.address(),
                    reason: format!("no answer within {}s", opts.connect_timeout.as_secs()),
                }
                .into())
            }
        };

        Login {
            handle: &mut handle,
            target: &target,
            opts,
            env,
            rsa_hash: None,
            tried: Vec::new(),
            offered: Vec::new(),
        }
        .run(keys)
        .await?;

        let mut host = SshHost {
            session: Arc::new(handle),
            target,
            use_sudo: false,
            fingerprint,
            forwards: Mutex::new(Vec::new()),
        };
        host.use_sudo = host.needs_sudo().await?;
        log::info!(
            "connected to {} (host key {}{})",
            host.describe(),
            host.fingerprint,
            if host.use_sudo {
                ", commands run through sudo"
            } else {
                ""
            }
        );
        Ok(host)
    }

    /// The server's host key fingerprint, `SHA256:…` as OpenSSH prints it.
    pub fn host_key_fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The user logged in as (commands still run as root, through sudo if needed).
    pub fn login_user(&self) -> &str {
        &self.target.user
    }

    /// Root runs commands directly; anyone else needs `sudo -n` to work.
    /// A login as `root` is uid 0 without asking: that saves a converged run
    /// one of its two round trips (a session channel costs sshd a fork and a shell).
    async fn needs_sudo(&self) -> Result<bool> {
        if self.target.user == "root" {
            return Ok(false);
        }
        let id = self.exec_raw("id -u".to_string(), &[][..]).await?;
        if id.success() && id.stdout_str().trim() == "0" {
            return Ok(false);
        }
        let user = self.target.user.clone();
        let sudo = self.exec_raw("sudo -n true".to_string(), &[][..]).await?;
        if sudo.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&sudo.stderr);
        log::debug!(
            "{}: `sudo -n true` said: {}",
            self.target.host,
            stderr.trim()
        );
        if stderr.contains("password is required") {
            return Err(SshError::SudoNeedsPassword { user }.into());
        }
        Err(SshError::NoSudo { user }.into())
    }

    /// Runs `command` as given (no sudo wrapping), feeding it `stdin`.
    async fn exec_raw<R>(&self, command: String, stdin: R) -> Result<Output>
    where
        R: AsyncRead + Unpin + Send,
    {
        let channel = self
            .session
            .channel_open_session()
            .await
            .with_context(|| format!("opening an SSH session on {}", self.describe()))?;
        channel
            .exec(true, command)
            .await
            .with_context(|| format!("starting a command on {}", self.describe()))?;
        drive(channel, stdin, &self.target.host).await
    }
}

/// The command line sshd hands to the login shell for `script`.
pub fn remote_command(script: &str, sudo: bool) -> String {
    let sh = format!("sh -c {}", quote(script));
    if sudo {
        format!("sudo -n {sh}")
    } else {
        sh
    }
}

#[async_trait]
impl Host for SshHost {
    async fn exec(&self, cmd: &Cmd) -> Result<Output> {
        log::debug!("{}: $ {}", self.target.host, cmd.script);
        self.exec_raw(remote_command(&cmd.script, self.use_sudo), &cmd.stdin[..])
            .await
    }

    async fn forward(&self, remote_port: u16) -> Result<std::net::SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("opening a local port for the SSH tunnel")?;
        let local = listener.local_addr()?;
        let session = self.session.clone();
        let host = self.target.host.clone();
        log::debug!("{host}: tunnel {local} -> 127.0.0.1:{remote_port}");
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        log::warn!("{host}: tunnel {local}: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let session = session.clone();
                let host = host.clone();
                tokio::spawn(async move {
                    if let Err(e) = tunnel(&session, tcp, peer, remote_port).await {
                        // Usually nothing listens there yet (a service starting):
                        // the HTTP client sees the reset and reports it, so only
                        // -v shows each refused channel.
                        log::debug!("{host}: tunnel to 127.0.0.1:{remote_port}: {e:#}");
                    }
                });
            }
        });
        self.forwards
            .lock()
            .expect("forwards lock")
            .push(task.abort_handle());
        Ok(local)
    }

    async fn upload(&self, local: &Path, path: &str, mode: &FileMode) -> Result<()> {
        let file = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("opening {}", local.display()))?;
        let size = file
            .metadata()
            .await
            .with_context(|| format!("reading {}", local.display()))?
            .len();
        log::debug!(
            "{}: upload {} ({size} bytes) to {path}",
            self.target.host,
            local.display()
        );
        let command = remote_command(&write_script(path, mode, size), self.use_sudo);
        let out = self
            .exec_raw(command, file)
            .await
            .with_context(|| format!("copying {} to {path}", local.display()))?;
        if !out.success() {
            bail!(
                RemoteCommand,
                "copying {} to {path} on {} failed ({}):\n{}",
                local.display(),
                self.describe(),
                status_text(out.status),
                out.stderr_tail()
            );
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn connected(&self) -> bool {
        !self.session.is_closed()
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        for task in self.forwards.lock().expect("forwards lock").drain(..) {
            task.abort();
        }
    }
}

fn status_text(status: Option<u32>) -> String {
    status.map_or("no exit status".to_string(), |s| format!("exit status {s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `command` the way sshd does: through a login shell's `-c`.
    fn run_like_sshd(command: &str, stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn root_commands_run_the_script_unchanged() {
        let script = "set -e\nx='it'\\''s \"quoted\" $HOME'; printf '%s|' \"$x\" \"$#\"\nexit 7";
        let command = remote_command(script, false);
        assert!(command.starts_with("sh -c "), "{command}");
        let out = run_like_sshd(&command, b"");
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's \"quoted\" $HOME|0|"
        );
    }

    #[test]
    fn stdin_reaches_the_script() {
        let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let out = run_like_sshd(&remote_command("cat", false), &data);
        assert!(out.stdout == data);
    }

    #[test]
    fn non_root_commands_go_through_sudo_without_a_prompt() {
        let script = "echo 'a b' > /tmp/x";
        assert_eq!(
            remote_command(script, true),
            format!("sudo -n {}", remote_command(script, false))
        );
    }
}
