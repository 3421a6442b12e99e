//! The SSH transport against a real OpenSSH server: each test starts its own
//! throwaway `sshd` on 127.0.0.1 (config, host key and authorized_keys in a
//! tempdir; it runs as root, and logs in as root) and drives it through the
//! public API only.
//!
//! Tests never touch the real `~/.ssh` or process-global environment variables:
//! `SshHost::connect_with` takes a `LocalEnv` (home dir, agent socket,
//! passphrase variable) of the test's own.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdsup::host::dest::Destination;
use pdsup::host::ssh::{LocalEnv, SshError, SshHost, SshOptions};
use pdsup::host::{Cmd, FileMode, Host, Script};
use pdsup::secret::Secret;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd`, killed on drop.
struct Sshd {
    child: Child,
    log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `ssh-agent -D`, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's world: a server, its host keys, a client key it accepts, and an
/// empty home directory for the client side.
struct Fixture {
    dir: TempDir,
    port: u16,
    sshd: Option<Sshd>,
    /// An ed25519 key listed in authorized_keys.
    client_key: PathBuf,
    /// sshd's LogLevel. Above VERBOSE, sshd also copies its debug lines into
    /// the sessions' stderr, so only the tunnel test raises it.
    log_level: &'static str,
}

fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", "pdsup-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success(), "ssh-keygen -t {kind} failed");
}

/// `SHA256:…` of a public key file, as OpenSSH computes it.
fn openssh_fingerprint(pub_file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pub_file(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_log_level("VERBOSE")
    }

    fn with_log_level(log_level: &'static str) -> Fixture {
        // sshd's privilege separation needs this directory (root-owned, 0755).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home/.ssh")).unwrap();
        std::fs::write(dir.path().join("empty_ssh_config"), "").unwrap();
        keygen(&dir.path().join("host_a"), "ed25519", "");
        keygen(&dir.path().join("host_b"), "ed25519", "");
        let client_key = dir.path().join("id_test");
        keygen(&client_key, "ed25519", "");
        let mut fixture = Fixture {
            dir,
            port: 0,
            sshd: None,
            client_key: client_key.clone(),
            log_level,
        };
        fixture.authorize(&client_key);
        fixture.start("host_a");
        fixture
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn home(&self) -> PathBuf {
        self.path("home")
    }

    fn pin_file(&self) -> PathBuf {
        self.path("state/site/known_hosts")
    }

    fn authorize(&self, key: &Path) {
        let public = std::fs::read_to_string(pub_file(key)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("authorized_keys"))
            .unwrap();
        f.write_all(public.as_bytes()).unwrap();
    }

    /// Starts (or restarts, on the same port) sshd with the given host key.
    fn start(&mut self, host_key: &str) {
        self.sshd = None; // stops the previous one
        for _attempt in 0..5 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let config = format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PermitRootLogin yes\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AllowTcpForwarding yes\n\
                 LogLevel {log_level}\n",
                log_level = self.log_level,
                host_key = self.path(host_key).display(),
                pid = self.path("sshd.pid").display(),
                authorized = self.path("authorized_keys").display(),
            );
            let config_path = self.path("sshd_config");
            std::fs::write(&config_path, config).unwrap();
            let log = self.path(&format!("sshd-{host_key}.log"));
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("sshd starts");
            let mut sshd = Sshd { child, log };
            if wait_listening(&mut sshd) {
                self.port = port;
                self.sshd = Some(sshd);
                return;
            }
            let text = std::fs::read_to_string(&sshd.log).unwrap_or_default();
            assert!(
                text.contains("Bind to port") || text.contains("Address already in use"),
                "sshd did not start:\n{text}"
            );
            if self.port != 0 {
                // Same port wanted (host key change test): the old one may still be closing.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("sshd could not bind a port");
    }

    fn dest(&self) -> Destination {
        format!("root@127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn opts(&self) -> SshOptions {
        SshOptions {
            identity_file: Some(self.client_key.clone()),
            passphrase: None,
            known_hosts: self.pin_file(),
            accept_new_host_key: false,
            pin_read_only: false,
            ssh_config: Some(self.path("empty_ssh_config")),
            connect_timeout: Duration::from_secs(10),
        }
    }

    fn env(&self) -> LocalEnv {
        LocalEnv {
            home: Some(self.home()),
            agent_socket: None,
            passphrase: None,
            interactive: false,
        }
    }

    async fn connect(&self) -> SshHost {
        self.connect_opts(&self.opts(), &self.env())
            .await
            .unwrap_or_else(|e| panic!("connect: {e:#}\nsshd log:\n{}", self.sshd_log()))
    }

    async fn connect_opts(
        &self,
        opts: &SshOptions,
        env: &LocalEnv,
    ) -> pdsup::error::Result<SshHost> {
        SshHost::connect_with(&self.dest(), opts, env).await
    }

    fn sshd_log(&self) -> String {
        self.sshd
            .as_ref()
            .map(|s| std::fs::read_to_string(&s.log).unwrap_or_default())
            .unwrap_or_default()
    }

    fn start_agent(&self, keys: &[&Path]) -> Agent {
        let socket = self.path("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent starts");
        let agent = Agent { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        for key in keys {
            // SSH_AUTH_SOCK is set for ssh-add only, never for this process.
            let status = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "ssh-add {}", key.display());
        }
        agent
    }
}

/// Waits for "Server listening" in the log; false when sshd exited instead.
fn wait_listening(sshd: &mut Sshd) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&sshd.log).unwrap_or_default();
        if text.contains("Server listening on 127.0.0.1") {
            return true;
        }
        if sshd.child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "sshd never listened:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ssh_error(err: &pdsup::error::Error) -> &SshError {
    err.downcast_ref::<SshError>()
        .unwrap_or_else(|| panic!("not an SshError: {err:#}"))
}

/// The non-comment lines of a known_hosts file.
fn entries(known_hosts: &str) -> Vec<String> {
    known_hosts
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random bytes with plenty of NULs (xorshift64).
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    for i in (0..len).step_by(97) {
        out[i] = 0;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_login_runs_commands_and_pins_the_host_key() {
    let fx = Fixture::new();
    let host = fx.connect().await;
    assert_eq!(host.login_user(), "root");
    assert_eq!(host.describe(), format!("root@127.0.0.1:{}", fx.port));
    assert_eq!(
        host.host_key_fingerprint(),
        openssh_fingerprint(&pub_file(&fx.path("host_a")))
    );

    // Trust on first use: the key is pinned, OpenSSH style, mode 0600.
    let pins = std::fs::read_to_string(fx.pin_file()).unwrap();
    let host_a = std::fs::read_to_string(pub_file(&fx.path("host_a"))).unwrap();
    let host_a_blob = host_a.split_whitespace().nth(1).unwrap();
    assert_eq!(
        entries(&pins),
        vec![format!("[127.0.0.1]:{} ssh-ed25519 {host_a_blob}", fx.port)]
    );
    let mode = std::fs::metadata(fx.pin_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Exit codes, stdout and stderr.
    let out = host
        .exec(&Cmd::sh("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let ok = host.exec(&Cmd::sh("test \"$(id -u)\" = 0")).await.unwrap();
    assert_eq!(ok.status, Some(0));
    let err = host
        .run(&Cmd::sh("echo broken >&2; exit 3"))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("exit status 3") && text.contains("broken"),
        "{text}"
    );

    // Quoting survives the trip through the login shell.
    let out = host
        .exec(&Cmd::argv([
            "printf", "%s|", "a b", "it's", "$HOME", "\"q\"",
        ]))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "a b|it's|$HOME|\"q\"|");

    // A second connection finds the pin and says nothing new.
    let again = fx.connect().await;
    assert_eq!(again.host_key_fingerprint(), host.host_key_fingerprint());
    assert_eq!(std::fs::read_to_string(fx.pin_file()).unwrap(), pins);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_stops_unless_accepted_then_is_repinned() {
    let mut fx = Fixture::new();
    let first = fx.connect().await;
    drop(first);
    let fp_a = openssh_fingerprint(&pub_file(&fx.path("host_a")));
    let fp_b = openssh_fingerprint(&pub_file(&fx.path("host_b")));

    // Same address, another host key: a rebuilt droplet, or an attack.
    fx.start("host_b");
    let err = fx.connect_opts(&fx.opts(), &fx.env()).await.err().unwrap();
    match ssh_error(&err) {
        SshError::HostKeyChanged {
            host,
            known_fingerprint,
            offered_fingerprint,
            pin_file,
        } => {
            assert_eq!(host, &format!("[127.0.0.1]:{}", fx.port));
            assert_eq!(known_fingerprint, &fp_a);
            assert_eq!(offered_fingerprint, &fp_b);
            assert_eq!(pin_file, &fx.pin_file());
        }
        other => panic!("expected HostKeyChanged, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("--accept-new-host-key"), "{message}");
    assert!(message.contains("rebuilt"), "{message}");
    assert!(message.contains("man-in-the-middle"), "{message}");

    // Deliberately accepted: connects and re-pins.
    let mut opts = fx.opts();
    opts.accept_new_host_key = true;
    let host = fx.connect_opts(&opts, &fx.env()).await.unwrap();
    assert_eq!(host.host_key_fingerprint(), fp_b);
    let pins = std::fs::read_to_string(fx.pin_file()).unwrap();
    let blob = |name: &str| {
        std::fs::read_to_string(pub_file(&fx.path(name)))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        entries(&pins),
        vec![format!(
            "[127.0.0.1]:{} ssh-ed25519 {}",
            fx.port,
            blob("host_b")
        )]
    );
    assert!(!pins.contains(&blob("host_a")), "{pins}");

    // From now on the new key is the pinned one, without the flag.
    let again = fx.connect().await;
    assert_eq!(again.host_key_fingerprint(), fp_b);
}

/// Restarts sshd with `host_key` on a new port: the same site at a new address.
fn move_to_new_address(fx: &mut Fixture, host_key: &str) {
    fx.port = 0;
    fx.start(host_key);
}

/// OpenSSH's own client trusts the pin file as its known_hosts (strict checking).
fn openssh_accepts_pin_file(fx: &Fixture) {
    let out = Command::new("ssh")
        .args([
            "-F",
            "none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", fx.pin_file().display()))
        .arg("-i")
        .arg(&fx.client_key)
        .args(["-p", &fx.port.to_string(), "root@127.0.0.1", "true"])
        .output()
        .expect("ssh");
    assert!(
        out.status.success(),
        "ssh with the pin file as known_hosts:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_key_is_pinned_per_site_whatever_the_address() {
    let mut fx = Fixture::new();
    let fp_a = openssh_fingerprint(&pub_file(&fx.path("host_a")));
    let fp_b = openssh_fingerprint(&pub_file(&fx.path("host_b")));

    // A dry run's first contact checks the key but pins nothing.
    let mut dry = fx.opts();
    dry.pin_read_only = true;
    let host = fx.connect_opts(&dry, &fx.env()).await.unwrap();
    assert_eq!(host.host_key_fingerprint(), fp_a);
    drop(host);
    assert!(!fx.pin_file().exists(), "a dry run pinned the host key");
    assert!(
        !fx.pin_file().parent().unwrap().exists(),
        "a dry run created the site dir"
    );

    drop(fx.connect().await);
    let first_port = fx.port;

    // The site's key at a new address: trusted, and the address is noted.
    move_to_new_address(&mut fx, "host_a");
    assert_ne!(fx.port, first_port);
    drop(fx.connect().await);
    let pins = std::fs::read_to_string(fx.pin_file()).unwrap();
    let blob_a = std::fs::read_to_string(pub_file(&fx.path("host_a")))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        entries(&pins),
        vec![
            format!("[127.0.0.1]:{first_port} ssh-ed25519 {blob_a}"),
            format!("[127.0.0.1]:{} ssh-ed25519 {blob_a}", fx.port),
        ]
    );
    openssh_accepts_pin_file(&fx);

    // Another key at yet another address is not a first contact: it stops the
    // run with both fingerprints, and a dry run with the flag pins nothing.
    move_to_new_address(&mut fx, "host_b");
    let err = fx.connect_opts(&fx.opts(), &fx.env()).await.err().unwrap();
    match ssh_error(&err) {
        SshError::HostKeyChanged {
            known_fingerprint,
            offered_fingerprint,
            ..
        } => {
            assert_eq!(known_fingerprint, &fp_a);
            assert_eq!(offered_fingerprint, &fp_b);
        }
        other => panic!("expected HostKeyChanged, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&fp_a) && message.contains(&fp_b),
        "{message}"
    );
    let mut dry_accept = fx.opts();
    dry_accept.pin_read_only = true;
    dry_accept.accept_new_host_key = true;
    drop(fx.connect_opts(&dry_accept, &fx.env()).await.unwrap());
    assert_eq!(std::fs::read_to_string(fx.pin_file()).unwrap(), pins);

    // Accepted deliberately: the new key is the site's key, at every address.
    let mut accept = fx.opts();
    accept.accept_new_host_key = true;
    drop(fx.connect_opts(&accept, &fx.env()).await.unwrap());
    let pins = std::fs::read_to_string(fx.pin_file()).unwrap();
    assert_eq!(entries(&pins).len(), 1, "{pins}");
    assert!(!pins.contains(&blob_a), "{pins}");
    openssh_accepts_pin_file(&fx);
    move_to_new_address(&mut fx, "host_a");
    assert!(fx.connect_opts(&fx.opts(), &fx.env()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_key_in_users_known_hosts_stops_first_contact() {
    let fx = Fixture::new();
    let user_known_hosts = fx.home().join(".ssh/known_hosts");
    let host_b = std::fs::read_to_string(pub_file(&fx.path("host_b"))).unwrap();
    let host_b: Vec<&str> = host_b.split_whitespace().collect();
    std::fs::write(
        &user_known_hosts,
        format!("[127.0.0.1]:{} {} {}\n", fx.port, host_b[0], host_b[1]),
    )
    .unwrap();
    let err = fx.connect_opts(&fx.opts(), &fx.env()).await.err().unwrap();
    match ssh_error(&err) {
        SshError::HostKeyChanged { pin_file, .. } => assert_eq!(pin_file, &user_known_hosts),
        other => panic!("expected HostKeyChanged, got {other:?}"),
    }
    assert!(
        !fx.pin_file().exists(),
        "nothing may be pinned after a refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_protected_key() {
    let fx = Fixture::new();
    let key = fx.path("id_locked");
    keygen(&key, "ed25519", "correct horse");
    fx.authorize(&key);
    let mut opts = fx.opts();
    opts.identity_file = Some(key.clone());

    // Right passphrase in the options.
    opts.passphrase = Some(Secret::new("correct horse"));
    let host = fx.connect_opts(&opts, &fx.env()).await.unwrap();
    assert_eq!(host.exec(&Cmd::sh("true")).await.unwrap().status, Some(0));

    // Right passphrase from PDSUP_SSH_PASSPHRASE (LocalEnv stands for the process env).
    opts.passphrase = None;
    let mut env = fx.env();
    env.passphrase = Some(Secret::new("correct horse"));
    fx.connect_opts(&opts, &env).await.unwrap();

    // Wrong passphrase.
    opts.passphrase = Some(Secret::new("hunter2-typo"));
    let err = fx.connect_opts(&opts, &fx.env()).await.err().unwrap();
    match ssh_error(&err) {
        SshError::WrongPassphrase { path } => assert_eq!(path, &key),
        other => panic!("expected WrongPassphrase, got {other:?}"),
    }
    let shown = format!("{err:#} {err:?} {opts:?}");
    assert!(
        !shown.contains("hunter2"),
        "the passphrase is never shown: {shown}"
    );

    // No passphrase anywhere and no terminal to ask on.
    opts.passphrase = None;
    let err = fx.connect_opts(&opts, &fx.env()).await.err().unwrap();
    match ssh_error(&err) {
        SshError::KeyUnreadable { path, reason } => {
            assert_eq!(path, &key);
            assert!(reason.contains("PDSUP_SSH_PASSPHRASE"), "{reason}");
        }
        other => panic!("expected KeyUnreadable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_key_the_server_refuses_needs_no_passphrase() {
    // The public half is offered first: a wrong passphrase for a key the
    // server does not want is never even tried.
    let fx = Fixture::new();
    let key = fx.path("id_locked_unknown");
    keygen(&key, "ed25519", "secret");
    let mut opts = fx.opts();
    opts.identity_file = Some(key.clone());
    opts.passphrase = Some(Secret::new("wrong"));
    let err = fx.connect_opts(&opts, &fx.env()).await.err().unwrap();
    match ssh_error(&err) {
        SshError::AuthFailed { user, tried, .. } => {
            assert_eq!(user, "root");
            assert_eq!(tried.len(), 1, "{tried:?}");
            assert!(tried[0].contains(&key.display().to_string()), "{tried:?}");
        }
        other => panic!("expected AuthFailed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_key_signs_with_sha2() {
    // OpenSSH >= 8.8 refuses SHA-1 `ssh-rsa` signatures: this fails if used.
    let fx = Fixture::new();
    let key = fx.path("id_rsa_test");
    keygen(&key, "rsa", "");
    fx.authorize(&key);
    let mut opts = fx.opts();
    opts.identity_file = Some(key);
    let host = fx.connect_opts(&opts, &fx.env()).await.unwrap();
    assert_eq!(host.exec(&Cmd::sh("true")).await.unwrap().status, Some(0));
    assert!(
        fx.sshd_log().contains("Accepted publickey for root") && fx.sshd_log().contains("RSA"),
        "{}",
        fx.sshd_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_login() {
    let fx = Fixture::new();
    // A key that only the agent has: not on disk where pdsup looks.
    let key = fx.path("agent_only/id_agent");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    keygen(&key, "ed25519", "");
    fx.authorize(&key);
    let agent = fx.start_agent(&[&key]);
    std::fs::remove_file(&key).unwrap();

    let mut opts = fx.opts();
    opts.identity_file = None;
    let mut env = fx.env();

    // Without the agent nothing is found.
    let err = fx.connect_opts(&opts, &env).await.err().unwrap();
    match ssh_error(&err) {
        SshError::AuthFailed { tried, .. } => assert!(tried.is_empty(), "{tried:?}"),
        other => panic!("expected AuthFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("none found"), "{err}");

    env.agent_socket = Some(agent.socket.clone());
    let host = fx.connect_opts(&opts, &env).await.unwrap();
    assert_eq!(
        host.exec(&Cmd::sh("echo hi")).await.unwrap().stdout,
        b"hi\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_key_from_home_and_refused_keys_are_listed() {
    let fx = Fixture::new();
    let mut opts = fx.opts();
    opts.identity_file = None;

    // ~/.ssh/id_ecdsa exists but is not authorized: listed in the error.
    let stranger = fx.home().join(".ssh/id_ecdsa");
    keygen(&stranger, "ecdsa", "");
    let err = fx.connect_opts(&opts, &fx.env()).await.err().unwrap();
    match ssh_error(&err) {
        SshError::AuthFailed { user, host, tried } => {
            assert_eq!(user, "root");
            assert_eq!(host, &format!("127.0.0.1:{}", fx.port));
            assert_eq!(tried.len(), 1, "{tried:?}");
            assert!(tried[0].contains("id_ecdsa"), "{tried:?}");
        }
        other => panic!("expected AuthFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("authorized_keys"), "{err}");

    // ~/.ssh/id_ed25519 is authorized: found without -i.
    let key = fx.home().join(".ssh/id_ed25519");
    std::fs::copy(&fx.client_key, &key).unwrap();
    fx.connect_opts(&opts, &fx.env()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_key_file() {
    let fx = Fixture::new();
    let mut opts = fx.opts();
    let public = std::fs::read_to_string(pub_file(&fx.client_key)).unwrap();
    for (name, content, why) in [
        ("garbage", Some("this is not a key\n"), "not a private key"),
        ("missing", None, "No such file"),
        (
            "id_test_copy.pub",
            Some(public.as_str()),
            "this is a public key",
        ),
    ] {
        let path = fx.path(name);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        opts.identity_file = Some(path.clone());
        let err = fx.connect_opts(&opts, &fx.env()).await.err().unwrap();
        match ssh_error(&err) {
            SshError::KeyUnreadable { path: p, reason } => {
                assert_eq!(p, &path);
                assert!(reason.contains(why), "{name}: {reason}");
            }
            other => panic!("expected KeyUnreadable for {name}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_not_ssh() {
    let fx = Fixture::new();
    let closed = free_port();
    let dest: Destination = format!("root@127.0.0.1:{closed}").parse().unwrap();
    let err = SshHost::connect_with(&dest, &fx.opts(), &fx.env())
        .await
        .err()
        .unwrap();
    match ssh_error(&err) {
        SshError::Unreachable { addr, source } => {
            assert_eq!(addr, &format!("127.0.0.1:{closed}"));
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(err.to_string().contains("firewall"), "{err}");

    // Something that is not an SSH server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let dest: Destination = format!("root@127.0.0.1:{port}").parse().unwrap();
    let err = SshHost::connect_with(&dest, &fx.opts(), &fx.env())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(ssh_error(&err), SshError::Handshake { .. }),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_command_has_no_exit_status() {
    let fx = Fixture::new();
    let host = fx.connect().await;
    let out = host
        .exec(&Cmd::sh("echo before; kill -9 $$"))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"before\n");
    assert_eq!(
        out.status,
        None,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.success());
    // sshd reported the signal; the reason is kept on stderr for error messages.
    assert_eq!(out.stderr_tail(), "[pdsup] killed by signal KILL");
    let err = host.run(&Cmd::sh("kill -9 $$")).await.unwrap_err();
    assert!(format!("{err:#}").contains("no exit status"), "{err:#}");
    // The connection survives for the next command.
    assert_eq!(host.exec(&Cmd::sh("exit 0")).await.unwrap().status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_stdin_round_trip() {
    let fx = Fixture::new();
    let host = fx.connect().await;
    let data = noise(5 * 1024 * 1024);
    assert!(data.contains(&0) && data.contains(&b'\n') && data.contains(&b'\r'));

    let echoed = host
        .exec(&Cmd::sh("cat").with_stdin(data.clone()))
        .await
        .unwrap();
    assert_eq!(echoed.status, Some(0));
    assert_eq!(echoed.stdout.len(), data.len());
    assert!(echoed.stdout == data, "bytes changed in transit");

    let summed = host
        .exec(&Cmd::sh("sha256sum | cut -d' ' -f1").with_stdin(data.clone()))
        .await
        .unwrap();
    assert_eq!(summed.stdout_str().trim(), sha256_hex(&data));

    // A command that never reads its big stdin still finishes.
    let ignored = tokio::time::timeout(
        Duration::from_secs(30),
        host.exec(&Cmd::sh("exit 4").with_stdin(data)),
    )
    .await
    .expect("no deadlock on unread stdin")
    .unwrap();
    assert_eq!(ignored.status, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_streams_a_big_file_with_mode() {
    let fx = Fixture::new();
    let host = fx.connect().await;
    let local = fx.path("big.bin");
    let data = noise(50 * 1024 * 1024);
    std::fs::write(&local, &data).unwrap();
    let remote = fx.path("remote/sub/big.bin");
    let remote = remote.to_str().unwrap();

    host.upload(&local, remote, &FileMode::root(0o600))
        .await
        .unwrap();
    let stat = host
        .run(&Cmd::argv(["stat", "-c", "%a %U %s", remote]))
        .await
        .unwrap();
    assert_eq!(stat.stdout_str().trim(), format!("600 root {}", data.len()));
    let sum = host
        .run(&Script::of("sha256sum < {} | cut -d' ' -f1", &[remote]).cmd())
        .await
        .unwrap();
    assert_eq!(sum.stdout_str().trim(), sha256_hex(&data));

    // A missing local file is an error, and nothing is written.
    let err = host
        .upload(
            &fx.path("nope.bin"),
            &format!("{remote}.2"),
            &FileMode::root(0o600),
        )
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("nope.bin"), "{err:#}");
    assert!(!Path::new(&format!("{remote}.2")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_file_and_read_file_round_trip() {
    let fx = Fixture::new();
    let host = fx.connect().await;
    let path = fx.path("remote/etc/app.conf");
    let path = path.to_str().unwrap();
    let contents = b"line one\n\0binary\xff\r\nlast line without newline";
    host.write_file(path, contents, &FileMode::root(0o640))
        .await
        .unwrap();
    assert_eq!(
        host.read_file(path).await.unwrap().as_deref(),
        Some(&contents[..])
    );
    let stat = host
        .run(&Cmd::argv(["stat", "-c", "%a", path]))
        .await
        .unwrap();
    assert_eq!(stat.stdout_str().trim(), "640");
    let missing = fx.path("remote/etc/missing.conf");
    assert_eq!(
        host.read_file(missing.to_str().unwrap()).await.unwrap(),
        None
    );
}

/// A tiny keep-alive HTTP/1.1 server: answers every GET with its path, and
/// counts the connections it accepted.
async fn http_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let mut path = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if path.is_none() {
                        path = line.split_whitespace().nth(1).map(String::from);
                    } else if line.is_empty() {
                        let body = path.take().unwrap_or_default();
                        // A little delay keeps many requests in flight at once.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                            body.len()
                        );
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_carries_many_concurrent_http_requests() {
    // DEBUG1 logs each direct-tcpip channel.
    let fx = Fixture::with_log_level("DEBUG1");
    let host = fx.connect().await;
    let (server, connections) = http_server().await;
    let local = host.forward(server.port()).await.unwrap();
    assert!(local.ip().is_loopback());
    assert_ne!(local.port(), server.port());

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for round in 0..2 {
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..20 {
            let client = client.clone();
            let url = format!("http://{local}/r{round}/{i}");
            requests.spawn(async move {
                let response = client.get(&url).send().await?;
                let status = response.status();
                let body = response.text().await?;
                Ok::<_, reqwest::Error>((i, status, body))
            });
        }
        let mut seen = Vec::new();
        while let Some(result) = requests.join_next().await {
            let (i, status, body) = result.unwrap().unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, format!("/r{round}/{i}"));
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }
    // Every connection went through sshd: one direct-tcpip channel each, and
    // 20 requests in flight at once needed at least 20 of them.
    let log = fx.sshd_log();
    let channels = log
        .lines()
        .filter(|l| l.contains("server_request_direct_tcpip"))
        .count();
    assert!(connections.load(Ordering::SeqCst) >= 20, "{log}");
    assert_eq!(channels, connections.load(Ordering::SeqCst), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_config_alias() {
    let fx = Fixture::new();
    let config = fx.path("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host pds-test\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n",
            fx.port,
            fx.client_key.display()
        ),
    )
    .unwrap();
    let mut opts = fx.opts();
    opts.identity_file = None;
    opts.ssh_config = Some(config);
    let dest: Destination = "pds-test".parse().unwrap();
    let host = SshHost::connect_with(&dest, &opts, &fx.env())
        .await
        .unwrap();
    assert_eq!(host.describe(), format!("root@127.0.0.1:{}", fx.port));
    assert_eq!(host.login_user(), "root");
    let pins = std::fs::read_to_string(fx.pin_file()).unwrap();
    let pinned = entries(&pins);
    assert_eq!(pinned.len(), 1, "{pins}");
    assert!(
        pinned[0].starts_with(&format!("[127.0.0.1]:{} ", fx.port)),
        "{pins}"
    );

    // Without the config the alias means nothing.
    opts.ssh_config = Some(fx.path("empty_ssh_config"));
    let err = SshHost::connect_with(&dest, &opts, &fx.env())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(ssh_error(&err), SshError::Unreachable { .. }),
        "{err:#}"
    );
}
