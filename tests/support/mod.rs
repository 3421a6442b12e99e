//! Test support for the "droplet in a box" harness (scripts/harness/README.md).
//!
//! Integration tests include it with `mod support;`. One section per concern:
//!   1. paths and the harness check (`cache_dir`, `require_harness`, `require_services`)
//!   2. droplets (`Droplet`: boot, SSH, teardown on drop)
//!   3. host-side services (mirror, Pebble)
//!   4. small helpers on `std::process::Output`
//!   5. the site the end-to-end tiers set up (`harness_sources`, `caddy_args`, `require_e2e`)
//!
//! The PDS's XRPC API as the tiers use it (posts, blobs, records, commit signatures)
//! is in [`atproto`].
//!
//! Tests FAIL (panic) when the harness is missing; they never skip. Prepare the machine
//! with `scripts/harness/up.sh` (root).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod atproto;

// ---------------------------------------------------------------------------------
// 1. Paths and the harness check
// ---------------------------------------------------------------------------------

/// The droplet network's gateway: mirror, Pebble and PLC listen here.
pub const GATEWAY: &str = "10.213.0.1";
/// Docker network the droplets are attached to.
pub const NETWORK: &str = "pdsup-droplets";
/// Releases the harness builds images for.
pub const RELEASES: [&str; 2] = ["bookworm", "trixie"];

/// The repository root.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/harness/<name>`.
pub fn harness_script(name: &str) -> PathBuf {
    repo_dir().join("scripts/harness").join(name)
}

/// `${PDSUP_CACHE:-/var/cache/pdsup-test}`: images' build dirs, keys, logs, mirror.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PDSUP_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/pdsup-test"))
}

/// Private half of the test key pair authorized in every droplet (root, deploy, pwuser).
pub fn ssh_key() -> PathBuf {
    cache_dir().join("keys/id_ed25519")
}

fn harness_missing(what: &str, script: &str) -> ! {
    panic!(
        "droplet-in-a-box harness is not ready: {what}.\n\
         Run `{}` (as root; `scripts/harness/up.sh` prepares everything), then re-run the tests.",
        harness_script(script).display()
    )
}

/// Panics with the script to run when the Docker engine, the droplet network, the
/// droplet images (present and built from the current recipe) or the test key are
/// missing. Cheap; call it at the start of every harness test.
pub fn require_harness() {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(o) if o.status.success() => {}
        Ok(o) => harness_missing(
            &format!("the Docker engine does not answer ({})", stderr(&o).trim()),
            "engine.sh",
        ),
        Err(e) => harness_missing(&format!("cannot run `docker` ({e})"), "engine.sh"),
    }
    let net = Command::new("docker")
        .args(["network", "inspect", NETWORK])
        .output();
    if !net.map(|o| o.status.success()).unwrap_or(false) {
        harness_missing(&format!("docker network {NETWORK} is missing"), "engine.sh");
    }
    for release in RELEASES {
        let check = Command::new(harness_script("droplet-image.sh"))
            .args([release, "--check"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run droplet-image.sh: {e}"));
        if !check.status.success() {
            harness_missing(
                &format!("image pdsup-droplet:{release}: {}", stderr(&check).trim()),
                "droplet-image.sh",
            );
        }
    }
    if !ssh_key().is_file() {
        harness_missing(
            &format!("test key {} is missing", ssh_key().display()),
            "droplet-image.sh",
        );
    }
}

// ---------------------------------------------------------------------------------
// 2. Droplets
// ---------------------------------------------------------------------------------

/// A running droplet (systemd + sshd container on network pdsup-droplets), removed
/// with its volumes when dropped, also when the test panics. Set
/// `PDSUP_KEEP_DROPLETS=1` to keep it for debugging (`scripts/harness/droplet.sh gc`
/// removes leftovers).
#[derive(Debug, serde::Deserialize)]
pub struct Droplet {
    /// Container name, `pdsup-test-...`.
    pub name: String,
    /// Address on the droplet network (10.213.0.x); reachable from this machine.
    pub ip: String,
    /// Loopback ports (127.0.0.1) published for the droplet's 22, 80 and 443.
    pub ssh_port: u16,
    pub http_port: u16,
    pub https_port: u16,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A container name unique to this process and call, with the test's name in it.
fn unique_name() -> String {
    let thread = std::thread::current();
    let test: String = thread
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!(
        "pdsup-test-{}-{}-{n}",
        test.trim_matches('-'),
        std::process::id()
    )
}

impl Droplet {
    /// Boots a droplet of `release` ("bookworm" or "trixie") and waits until systemd
    /// runs and sshd accepts the test key.
    pub fn start(release: &str) -> Droplet {
        require_harness();
        let name = unique_name();
        let out = Command::new(harness_script("droplet.sh"))
            .args(["start", &name, release])
            .output()
            .expect("cannot run scripts/harness/droplet.sh");
        if !out.status.success() {
            panic!(
                "droplet.sh start {name} {release} failed:\n{}",
                describe(&out)
            );
        }
        // The script's progress lines (stderr) go to the test's captured output.
        eprint!("{}", stderr(&out));
        let line = stdout(&out);
        match serde_json::from_str(line.trim()) {
            Ok(droplet) => droplet,
            Err(e) => {
                let _ = Command::new(harness_script("droplet.sh"))
                    .args(["stop", &name])
                    .output();
                panic!("droplet.sh printed unexpected output ({e}): {line:?}")
            }
        }
    }

    /// `ssh` (OpenSSH client) to the droplet as `user`, with the test key, no host-key
    /// checking, BatchMode. Add the remote command (and stdin) yourself.
    pub fn ssh_command(&self, user: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(ssh_key())
            .args(["-p", &self.ssh_port.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` (a shell command line) over SSH as `user`.
    pub fn ssh(&self, user: &str, cmd: &str) -> Output {
        self.ssh_command(user)
            .arg(cmd)
            .output()
            .expect("cannot run ssh")
    }

    /// Like [`Droplet::ssh`], feeding `input` on the command's stdin.
    pub fn ssh_with_stdin(&self, user: &str, cmd: &str, input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .ssh_command(user)
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run ssh");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        // Write from a thread so a chatty command cannot deadlock us.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("ssh did not finish");
        writer.join().unwrap();
        out
    }

    /// Runs `cmd` over SSH as `user`, panics unless it exits 0; returns its stdout.
    pub fn ssh_ok(&self, user: &str, cmd: &str) -> String {
        let out = self.ssh(user, cmd);
        if !out.status.success() {
            panic!(
                "on {} as {user}: `{cmd}` failed:\n{}",
                self.name,
                describe(&out)
            );
        }
        stdout(&out)
    }

    /// Runs `cmd` through `docker exec` (as root, bypassing SSH): for setup and for
    /// inspecting a droplet whose sshd a test has broken.
    pub fn exec(&self, cmd: &str) -> Output {
        Command::new("docker")
            .args(["exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("cannot run docker exec")
    }

    /// The ed25519 host key sshd presents (`ssh-ed25519 AAAA...`), via ssh-keyscan.
    pub fn host_key(&self) -> String {
        let out = Command::new("ssh-keyscan")
            .args([
                "-t",
                "ed25519",
                "-p",
                &self.ssh_port.to_string(),
                "127.0.0.1",
            ])
            .output()
            .expect("cannot run ssh-keyscan");
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| !l.starts_with('#') && l.contains("ssh-ed25519"))
            .unwrap_or_else(|| {
                panic!(
                    "no ed25519 host key from {}:\n{}",
                    self.name,
                    describe(&out)
                )
            });
        // "[127.0.0.1]:PORT ssh-ed25519 AAAA..." -> "ssh-ed25519 AAAA..."
        line.split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Droplet {
    fn drop(&mut self) {
        if std::env::var("PDSUP_KEEP_DROPLETS").as_deref() == Ok("1") {
            eprintln!(
                "keeping droplet {} (ssh port {}): scripts/harness/droplet.sh ssh {} / stop {}",
                self.name, self.ssh_port, self.name, self.name
            );
            return;
        }
        let _ = Command::new(harness_script("droplet.sh"))
            .args(["stop", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------
// 3. Host-side services (scripts/harness/services.sh)
// ---------------------------------------------------------------------------------

/// Panics with the script to run unless mirror and Pebble (and PLC, once it exists)
/// are up (`services.sh status`).
pub fn require_services() {
    require_harness();
    let out = Command::new(harness_script("services.sh"))
        .arg("status")
        .output()
        .expect("cannot run services.sh");
    if !out.status.success() {
        harness_missing(
            &format!("a service is down:\n{}", stdout(&out)),
            "services.sh start",
        );
    }
}

/// Directory served by the mirror; files put here are at [`mirror_url`]`/<path>`.
pub fn mirror_dir() -> PathBuf {
    cache_dir().join("mirror")
}

/// Base URL of the mirror, for droplets and for this machine alike.
pub fn mirror_url() -> String {
    format!("http://{GATEWAY}:8080")
}

/// Pebble's ACME directory URL.
pub fn pebble_directory_url() -> String {
    format!("https://{GATEWAY}:14000/dir")
}

/// Pebble's own TLS certificate: trust it to talk to Pebble (e.g. Caddy's `acme_ca_root`).
pub fn pebble_cert() -> PathBuf {
    cache_dir().join("pebble/cert.pem")
}

/// The root CA that signs the certificates Pebble issues (new at every Pebble start).
pub fn pebble_root() -> PathBuf {
    cache_dir().join("pebble/root.pem")
}

/// An HTTPS client that trusts exactly the PEM certificates in `pems` (no system roots,
/// no proxy).
pub fn https_client_trusting(pems: &[&Path]) -> reqwest::Client {
    let certs: Vec<reqwest::Certificate> = pems
        .iter()
        .map(|p| {
            let pem = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            reqwest::Certificate::from_pem(&pem)
                .unwrap_or_else(|e| panic!("{} is not a PEM certificate: {e}", p.display()))
        })
        .collect();
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("build reqwest client")
}

// ---------------------------------------------------------------------------------
// 4. Output helpers
// ---------------------------------------------------------------------------------

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out).trim_end(),
        stderr(out).trim_end()
    )
}

/// The permission bits of a file on this machine (the state dir's secrets are 0600).
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ---------------------------------------------------------------------------------
// 5. The site the end-to-end tiers set up (tests/e2e.rs, tests/fault.rs)
// ---------------------------------------------------------------------------------

/// The site every end-to-end test sets up.
pub const HOSTNAME: &str = "pds.test";
pub const HANDLE: &str = "alice";
pub const FULL_HANDLE: &str = "alice.pds.test";
pub const EMAIL: &str = "alice@example.com";

/// Site flags and the harness's sources, with paths under `cache` (the harness
/// cache on this machine, or a copy of its files on a droplet for `--local`).
pub fn harness_sources(cache: &Path) -> Vec<String> {
    [
        "--hostname",
        HOSTNAME,
        "--email",
        EMAIL,
        "--handle",
        HANDLE,
        "--docker-source",
        "distro",
        "--nomad-release-url",
        &mirror_url(),
        "--nomad-release-key",
        &cache
            .join("mirror/test-release-key.asc")
            .display()
            .to_string(),
        "--pds-image-archive",
        &cache.join("pds-image.tar").display().to_string(),
        "--plc-url",
        &format!("http://{GATEWAY}:2582"),
        // The PDS asks its crawlers to index every new repo: keep that traffic
        // inside the test network (an empty list means no crawlers).
        "--pds-env",
        "PDS_CRAWLERS=",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The default Docker path, `--docker-source docker`, from the harness's copy of
/// Docker's repository (scripts/harness/docker-apt-mirror.sh): `tree` is
/// `docker-apt` (signed by the test mirror key) or `docker-apt-other-key` (signed by
/// another key), and pdsup is told to trust the test mirror key either way.
pub fn from_docker_repo(mut args: Vec<String>, tree: &str) -> Vec<String> {
    let source = args
        .iter()
        .position(|a| a == "--docker-source")
        .expect("the harness's sources name a Docker source");
    args[source + 1] = "docker".into();
    args.extend([
        "--docker-apt-url".to_string(),
        format!("{}/{tree}/linux", mirror_url()),
        "--docker-apt-key".to_string(),
        docker_apt_key().display().to_string(),
    ]);
    args
}

pub fn docker_apt_key() -> PathBuf {
    repo_dir().join("tests/fixtures/docker-apt/mirror-key.asc")
}

/// Caddy with real ACME against Pebble. `acme_ca_root` is the CA Caddy must trust
/// to talk to Pebble's directory: Pebble's own listen certificate.
pub fn caddy_args() -> Vec<String> {
    let root = pebble_cert().display().to_string();
    strings(&[
        "--proxy",
        "caddy",
        "--acme-ca",
        &pebble_directory_url(),
        "--acme-ca-root",
        &root,
    ])
}

/// `&str`s to owned arguments.
pub fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// `KEY=VALUE` lines of an env file (quotes dropped), comments skipped.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The harness must be complete: droplet images, services, the PDS image and the
/// Nomad release on the mirror.
pub fn require_e2e() {
    require_services();
    let c = cache_dir();
    for (path, script) in [
        (c.join("pds-image.tar"), "pds-image.sh"),
        (
            c.join("mirror/docker-apt/linux/debian/dists/bookworm/InRelease"),
            "docker-apt-mirror.sh",
        ),
        (
            c.join("mirror/docker-apt/linux/debian/dists/trixie/InRelease"),
            "docker-apt-mirror.sh",
        ),
        (
            c.join("mirror/docker-apt-other-key/linux/debian/dists/trixie/InRelease"),
            "docker-apt-mirror.sh",
        ),
        (c.join("mirror/test-release-key.asc"), "nomad-release.sh"),
        (
            c.join("mirror/nomad/1.10.5/nomad_1.10.5_linux_amd64.zip"),
            "nomad-release.sh",
        ),
        (
            c.join("mirror/nomad/1.10.5/nomad_1.10.5_SHA256SUMS.sig"),
            "nomad-release.sh",
        ),
    ] {
        assert!(
            path.is_file(),
            "droplet-in-a-box harness is not ready: {} is missing. Run `{}`, then re-run the tests.",
            path.display(),
            harness_script(script).display()
        );
    }
}
