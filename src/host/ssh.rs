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

use crate::error::{bail, err, Context, Result};
use async_trait::async_trait;
use russh::client::{self, AuthResult};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};

use super::dest::{self, Destination, Target};
use super::known_hosts::{self, PinPolicy};
use super::{quote, write_script, Cmd, FileMode, Host, Output};
use crate::secret::Secret;

/// The environment variable that holds the passphrase of an encrypted key.
pub const PASSPHRASE_ENV: &str = "PDSUP_SSH_PASSPHRASE";

/// Bytes per write on a channel (russh's maximum packet size is 32 KiB).
const CHUNK: usize = 32 * 1024;

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

/// Connection and login failures, each saying what to do next. They reach the
/// caller inside `crate::error::Error`; `err.downcast_ref::<SshError>()` finds them.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "cannot reach {addr} over SSH: check the address and port, that the droplet is running, \
         and that no firewall (the provider's or the droplet's) blocks that port"
    )]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },

    #[error(
        "connected to {addr}, but the SSH handshake failed ({reason}); is an SSH server \
         listening on that port?"
    )]
    Handshake { addr: String, reason: String },

    #[error(
        "the SSH host key of {host} is not the key pinned for this site (it changed)\n  \
         pinned:  {known_fingerprint} (in {})\n  \
         offered: {offered_fingerprint}\n\
         This is expected if the droplet was rebuilt or reinstalled, or if this address now \
         belongs to another machine, but it can also mean that \
         someone is intercepting the connection (a man-in-the-middle attack). Compare the offered \
         fingerprint with the droplet's own (in the provider's web console: \
         `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`); if they match, run again with \
         --accept-new-host-key to pin the new key deliberately",
        pin_file.display()
    )]
    HostKeyChanged {
        host: String,
        known_fingerprint: String,
        offered_fingerprint: String,
        pin_file: PathBuf,
    },

    #[error(
        "cannot use the host key pin file {}: {reason}; correct that line, or restore the file \
         from your backup (it is an OpenSSH known_hosts file holding the site's host key)",
        path.display()
    )]
    PinFile { path: PathBuf, reason: String },

    #[error(
        "{user}@{host} accepted none of the keys tried ({}); add your public key to \
         ~{user}/.ssh/authorized_keys on the droplet, choose the key with -i FILE or IdentityFile \
         in ~/.ssh/config, or load it into ssh-agent",
        tried_list(tried)
    )]
    AuthFailed {
        user: String,
        host: String,
        tried: Vec<String>,
    },

    #[error("cannot use the key {}: {reason}", path.display())]
    KeyUnreadable { path: PathBuf, reason: String },

    #[error(
        "wrong passphrase for the key {}; give the right one in {PASSPHRASE_ENV} (or at the \
         prompt), or load the key into ssh-agent",
        path.display()
    )]
    WrongPassphrase { path: PathBuf },

    #[error(
        "{user} cannot use sudo without a password, and pdsup runs sudo non-interactively \
         (sudo -n). Log in as root instead, or allow {user} passwordless sudo on the droplet: \
         `echo '{user} ALL=(ALL) NOPASSWD:ALL' | sudo tee /etc/sudoers.d/90-pdsup && \
         sudo chmod 0440 /etc/sudoers.d/90-pdsup`"
    )]
    SudoNeedsPassword { user: String },

    #[error(
        "{user} is not root and cannot use sudo (it is missing, or {user} is not in the sudoers); \
         log in as root, or install sudo and give {user} passwordless sudo (NOPASSWD)"
    )]
    NoSudo { user: String },
}

fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "none found: no ssh-agent (SSH_AUTH_SOCK), no -i, no IdentityFile, no ~/.ssh/id_ed25519, \
         id_ecdsa or id_rsa"
            .to_string()
    } else {
        tried.join("; ")
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
    async fn needs_sudo(&self) -> Result<bool> {
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

/// One forwarded TCP connection: a direct-tcpip channel, copied both ways
/// until both sides are done (each side's EOF is passed on to the other).
async fn tunnel(
    session: &client::Handle<Client>,
    mut tcp: TcpStream,
    peer: std::net::SocketAddr,
    remote_port: u16,
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let channel = session
        .channel_open_direct_tcpip(
            "127.0.0.1",
            u32::from(remote_port),
            peer.ip().to_string(),
            u32::from(peer.port()),
        )
        .await
        .context("the server refused to open the tunnel channel")?;
    let mut stream = channel.into_stream();
    // A reset here is ordinary (a client dropping a pooled connection).
    if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await {
        log::debug!("tunnel connection from {peer} ended: {e}");
    }
    Ok(())
}

/// Why feeding stdin stopped early.
enum FeedError {
    /// Reading the local source failed: the remote command must not see EOF.
    Local(std::io::Error),
    /// The channel went away (the command exited without reading everything).
    Channel(russh::Error),
}

/// Feeds `stdin` to the channel and collects its output until it closes.
async fn drive<R>(channel: Channel<client::Msg>, mut stdin: R, host: &str) -> Result<Output>
where
    R: AsyncRead + Unpin + Send,
{
    let (mut reader, writer) = channel.split();
    let writer = &writer;
    let feed = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = stdin.read(&mut buf).await.map_err(FeedError::Local)?;
            if n == 0 {
                break;
            }
            writer
                .data_bytes(buf[..n].to_vec())
                .await
                .map_err(FeedError::Channel)?;
        }
        writer.eof().await.map_err(FeedError::Channel)
    };
    tokio::pin!(feed);
    let mut feeding = true;
    let mut out = Output::default();
    let mut stdout_log = LineLog::new(host, "");
    let mut stderr_log = LineLog::new(host, "stderr: ");
    let mut ended_by = None;
    loop {
        tokio::select! {
            fed = &mut feed, if feeding => {
                feeding = false;
                match fed {
                    Ok(()) => {}
                    Err(FeedError::Channel(e)) => {
                        log::debug!("{host}: the command did not read all of its stdin: {e}");
                    }
                    Err(FeedError::Local(e)) => {
                        // No EOF: stop the command before it can use a truncated input.
                        let _ = writer.signal(Sig::TERM).await;
                        let _ = writer.close().await;
                        return Err(err!(e).context("reading the input for the remote command"));
                    }
                }
            }
            msg = reader.wait() => match msg {
                None | Some(ChannelMsg::Close) => break,
                Some(ChannelMsg::Data { data }) => {
                    stdout_log.push(&data);
                    out.stdout.extend_from_slice(&data);
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    stderr_log.push(&data);
                    out.stderr.extend_from_slice(&data);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => out.status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, error_message, .. }) => {
                    ended_by = Some(format!("killed by signal {signal_name:?} {error_message}"));
                }
                Some(ChannelMsg::Failure) => {
                    ended_by = Some("the server refused to run the command".to_string());
                }
                Some(_) => {}
            }
        }
    }
    stdout_log.flush();
    stderr_log.flush();
    if out.status.is_none() {
        let why = ended_by.unwrap_or_else(|| "the channel closed without an exit status".into());
        log::debug!("{host}: {why}");
        // Said on stderr so that `Host::run`'s error shows why there is no status.
        if !out.stderr.is_empty() && !out.stderr.ends_with(b"\n") {
            out.stderr.push(b'\n');
        }
        out.stderr
            .extend_from_slice(format!("[pdsup] {}\n", why.trim()).as_bytes());
    }
    Ok(out)
}

/// Streams remote output to `log::debug!`, one line at a time.
struct LineLog<'a> {
    host: &'a str,
    prefix: &'static str,
    partial: Vec<u8>,
}

impl<'a> LineLog<'a> {
    fn new(host: &'a str, prefix: &'static str) -> Self {
        LineLog {
            host,
            prefix,
            partial: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8]) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        for line in split_lines(&mut self.partial, data) {
            self.emit(&line);
        }
    }

    fn flush(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        log::debug!(
            "{}: {}{}",
            self.host,
            self.prefix,
            line.trim_end_matches('\r')
        );
    }
}

/// Appends `data` to `partial` and takes out every complete line (without its
/// newline). A long run without newlines (binary output) comes out in pieces.
fn split_lines(partial: &mut Vec<u8>, data: &[u8]) -> Vec<Vec<u8>> {
    const LONGEST: usize = 4096;
    partial.extend_from_slice(data);
    let mut lines = Vec::new();
    while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = partial.drain(..=nl).collect();
        line.pop();
        lines.push(line);
    }
    if partial.len() > LONGEST {
        lines.push(std::mem::take(partial));
    }
    lines
}

fn client_config() -> client::Config {
    client::Config {
        // A dead link is noticed after about a minute of silence; an idle but live
        // one (a long apt-get) is kept: there is no inactivity timeout.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    }
}

async fn tcp_connect(target: &Target, timeout: Duration) -> Result<TcpStream, SshError> {
    let addr = target.address();
    let unreachable = |source| SshError::Unreachable {
        addr: addr.clone(),
        source,
    };
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", timeout.as_secs()),
        )
    };
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| unreachable(timed_out()))?
    .map_err(unreachable)?
    .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    for sockaddr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(sockaddr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = timed_out(),
        }
        log::debug!("{sockaddr}: {last}");
    }
    Err(unreachable(last))
}

/// The russh event handler: only the host key check matters to us.
struct Client {
    host: String,
    port: u16,
    policy: PinPolicy,
    /// The first verdict, for `connect` to read: the fingerprint, or why not.
    verdict: Arc<Mutex<Option<Result<String, SshError>>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = key.public_key();
        let result = known_hosts::verify(&self.host, self.port, &key, &self.policy)
            .map(|_| known_hosts::fingerprint(&key));
        let accepted = result.is_ok();
        let mut verdict = self.verdict.lock().expect("verdict lock");
        // Re-keying checks the key again; keep the first answer for `connect`.
        if verdict.is_none() {
            *verdict = Some(result);
        }
        Ok(accepted)
    }
}

/// Where a key file came from: errors in files the user named are fatal,
/// problems with the default files only skip them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Named,
    Default,
}

enum KeyMaterial {
    Plain(Arc<PrivateKey>),
    /// Still locked. `public` comes from the OpenSSH file itself or `<file>.pub`.
    Encrypted {
        public: Option<PublicKey>,
        text: String,
    },
}

struct KeyCandidate {
    path: PathBuf,
    origin: Origin,
    material: KeyMaterial,
}

fn key_candidates(
    opts: &SshOptions,
    target: &Target,
    env: &LocalEnv,
) -> Result<Vec<KeyCandidate>, SshError> {
    let mut paths: Vec<(PathBuf, Origin)> = Vec::new();
    match &opts.identity_file {
        Some(file) => paths.push((file.clone(), Origin::Named)),
        None => {
            for file in &target.identity_files {
                // Like OpenSSH, a configured IdentityFile that does not exist is skipped.
                if file.exists() {
                    paths.push((file.clone(), Origin::Named));
                } else {
                    log::debug!("IdentityFile {} does not exist; skipped", file.display());
                }
            }
        }
    }
    if let Some(home) = &env.home {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let file = home.join(".ssh").join(name);
            if file.exists() {
                paths.push((file, Origin::Default));
            }
        }
    }
    let mut out: Vec<KeyCandidate> = Vec::new();
    for (path, origin) in paths {
        if out.iter().any(|k| k.path == path) {
            continue;
        }
        match load_key(&path) {
            Ok(material) => out.push(KeyCandidate {
                path,
                origin,
                material,
            }),
            Err(reason) if origin == Origin::Named => {
                return Err(SshError::KeyUnreadable { path, reason })
            }
            Err(reason) => log::warn!("skipping the key {}: {reason}", path.display()),
        }
    }
    Ok(out)
}

/// Reads a private key without decrypting it.
fn load_key(path: &Path) -> Result<KeyMaterial, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    if PublicKey::from_openssh(text.trim()).is_ok() {
        return Err("this is a public key; give the private key (the file without .pub)".into());
    }
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let key = PrivateKey::from_openssh(&text)
            .map_err(|e| format!("not a valid OpenSSH private key ({e})"))?;
        return Ok(if key.is_encrypted() {
            KeyMaterial::Encrypted {
                public: Some(key.public_key().clone()),
                text,
            }
        } else {
            KeyMaterial::Plain(Arc::new(key))
        });
    }
    if text.contains("ENCRYPTED") {
        // PEM (PKCS#1/PKCS#8) with a passphrase: the public half is only in `.pub`.
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let public = PublicKey::read_openssh_file(Path::new(&pub_path)).ok();
        return Ok(KeyMaterial::Encrypted { public, text });
    }
    russh::keys::decode_secret_key(&text, None)
        .map(|k| KeyMaterial::Plain(Arc::new(k)))
        .map_err(|e| format!("not a private key pdsup can read ({e})"))
}

/// A signer that never signs: asking it to sign means the server accepted the
/// public key (SSH_MSG_USERAUTH_PK_OK), which is all a probe wants to know.
struct Probe;

#[derive(Debug)]
enum ProbeAnswer {
    Accepted,
    Disconnected,
}

impl From<russh::SendError> for ProbeAnswer {
    fn from(_: russh::SendError) -> Self {
        ProbeAnswer::Disconnected
    }
}

impl russh::Signer for Probe {
    type Error = ProbeAnswer;

    #[allow(clippy::manual_async_fn)]
    fn auth_sign(
        &mut self,
        _key: &AgentIdentity,
        _hash_alg: Option<HashAlg>,
        _to_sign: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, Self::Error>> + Send {
        async { Err(ProbeAnswer::Accepted) }
    }
}

/// Public key authentication, one key after another.
struct Login<'a> {
    handle: &'a mut client::Handle<Client>,
    target: &'a Target,
    opts: &'a SshOptions,
    env: &'a LocalEnv,
    rsa_hash: Option<Option<HashAlg>>,
    /// For the error message: what was offered and what happened.
    tried: Vec<String>,
    /// Keys already offered (the agent often holds the default key files).
    offered: Vec<PublicKey>,
}

impl Login<'_> {
    async fn run(mut self, keys: Vec<KeyCandidate>) -> Result<(), SshError> {
        if self.try_agent().await? {
            return Ok(());
        }
        for key in keys {
            if self.try_key(key).await? {
                return Ok(());
            }
        }
        Err(SshError::AuthFailed {
            user: self.target.user.clone(),
            host: self.target.address(),
            tried: self.tried,
        })
    }

    fn user(&self) -> String {
        self.target.user.clone()
    }

    fn lost(&self) -> SshError {
        let mut tried = self.tried.clone();
        tried.push("then the server closed the connection".to_string());
        SshError::AuthFailed {
            user: self.target.user.clone(),
            host: self.target.address(),
            tried,
        }
    }

    /// RSA signs with rsa-sha2-512/256, never SHA-1 `ssh-rsa` (OpenSSH >= 8.8 refuses it).
    async fn hash_for(&mut self, key: &PublicKey) -> Option<HashAlg> {
        if !key.algorithm().is_rsa() {
            return None;
        }
        if self.rsa_hash.is_none() {
            let best = self
                .handle
                .best_supported_rsa_hash()
                .await
                .ok()
                .flatten()
                .flatten();
            self.rsa_hash = Some(best.or(Some(HashAlg::Sha256)));
        }
        self.rsa_hash.flatten()
    }

    fn already_offered(&mut self, key: &PublicKey) -> bool {
        if self.offered.iter().any(|k| k.key_data() == key.key_data()) {
            return true;
        }
        self.offered.push(key.clone());
        false
    }

    async fn try_agent(&mut self) -> Result<bool, SshError> {
        let Some(socket) = self.env.agent_socket.clone() else {
            return Ok(false);
        };
        let mut agent = match AgentClient::connect_uds(&socket).await {
            Ok(agent) => agent,
            Err(e) => {
                log::warn!("cannot reach ssh-agent at {}: {e}", socket.display());
                return Ok(false);
            }
        };
        let identities = match agent.request_identities().await {
            Ok(ids) => ids,
            Err(e) => {
                log::warn!("ssh-agent at {}: cannot list keys: {e}", socket.display());
                return Ok(false);
            }
        };
        for identity in identities {
            let key = identity.public_key().into_owned();
            if self.already_offered(&key) {
                continue;
            }
            let label = format!(
                "agent key {} {}",
                known_hosts::fingerprint(&key),
                identity.comment()
            );
            let hash = self.hash_for(&key).await;
            match self
                .handle
                .authenticate_publickey_with(self.user(), key, hash, &mut agent)
                .await
            {
                Ok(AuthResult::Success) => {
                    log::debug!("logged in with {label}");
                    return Ok(true);
                }
                Ok(AuthResult::Failure { .. }) => self.tried.push(label.trim_end().to_string()),
                Err(e) => {
                    log::debug!("{label}: {e}");
                    self.tried.push(format!(
                        "{} (the agent did not sign: {e})",
                        label.trim_end()
                    ));
                }
            }
            if self.handle.is_closed() {
                return Err(self.lost());
            }
        }
        Ok(false)
    }

    async fn try_key(&mut self, key: KeyCandidate) -> Result<bool, SshError> {
        let path = key.path.clone();
        let public_was_known = !matches!(key.material, KeyMaterial::Encrypted { public: None, .. });
        let private = match key.material {
            KeyMaterial::Plain(private) => {
                if self.already_offered(private.public_key()) {
                    return Ok(false);
                }
                private
            }
            KeyMaterial::Encrypted { public, text } => {
                if let Some(public) = &public {
                    if self.already_offered(public) {
                        return Ok(false);
                    }
                    if !self.probe(public).await? {
                        self.tried.push(format!(
                            "{} ({})",
                            path.display(),
                            known_hosts::fingerprint(public)
                        ));
                        return Ok(false);
                    }
                }
                match self.unlock(&path, text).await? {
                    Some(private) => private,
                    None if key.origin == Origin::Named || public.is_some() => {
                        return Err(SshError::KeyUnreadable {
                            path,
                            reason: format!(
                                "it is encrypted and no passphrase is available: set \
                                 {PASSPHRASE_ENV}, run pdsup in a terminal to be asked, or load \
                                 the key into ssh-agent"
                            ),
                        });
                    }
                    None => {
                        self.tried
                            .push(format!("{} (encrypted, no passphrase)", path.display()));
                        return Ok(false);
                    }
                }
            }
        };
        let public = private.public_key().clone();
        // An encrypted PEM key without `.pub` shows its public half only now.
        if !public_was_known && self.already_offered(&public) {
            return Ok(false);
        }
        let hash = self.hash_for(&public).await;
        let label = format!("{} ({})", path.display(), known_hosts::fingerprint(&public));
        match self
            .handle
            .authenticate_publickey(self.user(), PrivateKeyWithHashAlg::new(private, hash))
            .await
        {
            Ok(AuthResult::Success) => {
                log::debug!("logged in with {label}");
                Ok(true)
            }
            Ok(AuthResult::Failure { .. }) if !self.handle.is_closed() => {
                self.tried.push(label);
                Ok(false)
            }
            Ok(AuthResult::Failure { .. }) | Err(_) => {
                self.tried.push(label);
                Err(self.lost())
            }
        }
    }

    /// Would the server accept this public key? Asks without a signature.
    async fn probe(&mut self, public: &PublicKey) -> Result<bool, SshError> {
        let hash = self.hash_for(public).await;
        match self
            .handle
            .authenticate_publickey_with(self.user(), public.clone(), hash, &mut Probe)
            .await
        {
            Err(ProbeAnswer::Accepted) => Ok(true),
            Ok(_) if !self.handle.is_closed() => Ok(false),
            Ok(_) | Err(ProbeAnswer::Disconnected) => Err(self.lost()),
        }
    }

    /// Decrypts a key; `None` when no passphrase can be had.
    async fn unlock(
        &mut self,
        path: &Path,
        text: String,
    ) -> Result<Option<Arc<PrivateKey>>, SshError> {
        let passphrase = match self.opts.passphrase.clone().or(self.env.passphrase.clone()) {
            Some(p) => p,
            None if self.env.interactive => {
                let prompt = format!("Passphrase for {}: ", path.display());
                match tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt)).await
                {
                    Ok(Ok(p)) => Secret::new(p),
                    _ => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        let decrypted = tokio::task::spawn_blocking(move || {
            russh::keys::decode_secret_key(&text, Some(passphrase.expose()))
        })
        .await;
        match decrypted {
            Ok(Ok(key)) => Ok(Some(Arc::new(key))),
            _ => Err(SshError::WrongPassphrase {
                path: path.to_path_buf(),
            }),
        }
    }
}

impl From<SshError> for crate::error::Error {
    fn from(e: SshError) -> Self {
        use crate::error::ErrorKind;
        let kind = match &e {
            SshError::HostKeyChanged { .. } => ErrorKind::HostKeyChanged,
            // A broken state file of the site, not a connection problem.
            SshError::PinFile { .. } => ErrorKind::Local,
            SshError::Unreachable { .. }
            | SshError::Handshake { .. }
            | SshError::AuthFailed { .. }
            | SshError::KeyUnreadable { .. }
            | SshError::WrongPassphrase { .. }
            | SshError::SudoNeedsPassword { .. }
            | SshError::NoSudo { .. } => ErrorKind::Ssh,
        };
        crate::error::Error::from_source(kind, e)
    }
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

    #[test]
    fn errors_say_what_to_do() {
        let changed = SshError::HostKeyChanged {
            host: "203.0.113.7".into(),
            known_fingerprint: "SHA256:old".into(),
            offered_fingerprint: "SHA256:new".into(),
            pin_file: PathBuf::from("/state/site/known_hosts"),
        }
        .to_string();
        for part in [
            "SHA256:old",
            "SHA256:new",
            "/state/site/known_hosts",
            "rebuilt",
            "man-in-the-middle",
            "--accept-new-host-key",
        ] {
            assert!(changed.contains(part), "{part}: {changed}");
        }
        let auth = SshError::AuthFailed {
            user: "admin".into(),
            host: "203.0.113.7:22".into(),
            tried: vec!["agent key SHA256:a".into(), "/k/id (SHA256:b)".into()],
        }
        .to_string();
        assert!(
            auth.contains("agent key SHA256:a; /k/id (SHA256:b)"),
            "{auth}"
        );
        assert!(auth.contains("~admin/.ssh/authorized_keys"), "{auth}");
        let sudo = SshError::SudoNeedsPassword { user: "bob".into() }.to_string();
        assert!(sudo.contains("bob ALL=(ALL) NOPASSWD:ALL"), "{sudo}");
        assert!(sudo.contains("as root"), "{sudo}");
        let no_sudo = SshError::NoSudo { user: "bob".into() }.to_string();
        assert!(no_sudo.contains("log in as root"), "{no_sudo}");
    }

    #[test]
    fn output_is_logged_line_by_line() {
        let mut partial = Vec::new();
        assert_eq!(split_lines(&mut partial, b"one\ntw"), vec![b"one".to_vec()]);
        assert_eq!(partial, b"tw");
        assert_eq!(
            split_lines(&mut partial, b"o\n\nthree"),
            vec![b"two".to_vec(), b"".to_vec()]
        );
        assert_eq!(partial, b"three");
        let blob = vec![b'x'; 5000];
        assert_eq!(split_lines(&mut partial, &blob).len(), 1);
        assert!(partial.is_empty());
    }
}
