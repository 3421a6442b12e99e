//! End-to-end: the real `pdsup` binary against droplets in a box (scripts/harness/).
//!
//! Each test plays an operator with a laptop of their own (a temp `HOME` and
//! `--state-dir`) and a fresh droplet, and checks what `pdsup up` leaves behind on
//! both sides: the PDS answering through the proxy, the account listed by
//! `com.atproto.sync.listRepos`, the local secrets, and what a second or resumed
//! run does and does not touch. Everything comes from the harness: the Debian
//! mirror (`--docker-source distro`) or the copy of Docker's apt repository
//! (`--docker-source docker`, docker-apt-mirror.sh), the Nomad test double installed through the
//! real download-and-verify path from the mirror (signed with the test key), the
//! PDS image archive, the PLC directory and Pebble.
//!
//! Prepare with `scripts/harness/up.sh` (which runs docker-apt-mirror.sh), `pds-image.sh` and `nomad-release.sh`;
//! these tests fail, never skip, when the harness is missing. Run with
//! `cargo test --test e2e -- --test-threads=2`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pdsup::error::ErrorKind;
use serde_json::Value;
use support::*;

const IO_IMAGE: &str = "agentio/io:latest";
/// Upper bound for one `pdsup up`; a hang fails the test instead of stalling it.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const SECRET_KEYS: [&str; 3] = [
    "PDS_JWT_SECRET",
    "PDS_ADMIN_PASSWORD",
    "PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX",
];

// ---------------------------------------------------------------------------------
// The operator's machine: a HOME and a state dir of its own
// ---------------------------------------------------------------------------------

struct Operator {
    /// `HOME` for pdsup: no ~/.ssh/config, keys or known_hosts of the real user.
    home: tempfile::TempDir,
    state: tempfile::TempDir,
    /// Where run logs go (stdout/stderr files), for polling and for messages.
    logs: tempfile::TempDir,
    runs: std::cell::Cell<usize>,
}

/// How one `pdsup` run ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    #[track_caller]
    fn assert_ok(&self, what: &str) -> &Self {
        assert!(self.status.success(), "{what} failed:\n{}", self.describe());
        self
    }

    #[track_caller]
    fn assert_failed(&self, what: &str, kind: ErrorKind) -> &Self {
        assert!(
            !self.status.success(),
            "{what} succeeded but must fail:\n{}",
            self.describe()
        );
        assert_eq!(
            self.status.code(),
            Some(i32::from(kind.exit_code())),
            "{what}: unexpected exit status (expected {kind}'s):\n{}",
            self.describe()
        );
        self
    }

    /// Asserts that stderr contains every one of `needles`.
    #[track_caller]
    fn assert_stderr_has(&self, what: &str, needles: &[&str]) -> &Self {
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "{what}: stderr does not mention {needle:?}:\n{}",
                self.describe()
            );
        }
        self
    }

    /// The one JSON document `--json` prints on stdout.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}",
                self.describe()
            )
        })
    }
}

/// A `pdsup` process that is still running (see [`Operator::spawn`]).
struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Running {
    fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the end (killing it after `RUN_TIMEOUT`).
    fn wait(mut self) -> Run {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for pdsup") {
                return Run {
                    status,
                    stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
                    stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
                };
            }
            if self.started.elapsed() > RUN_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "pdsup did not finish within {}s; its stderr so far:\n{}",
                    RUN_TIMEOUT.as_secs(),
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, like a laptop losing power or `kill -9`.
    fn kill(mut self) -> String {
        self.child.kill().expect("kill pdsup");
        self.child.wait().expect("reap pdsup");
        self.stderr_so_far()
    }
}

impl Operator {
    fn new() -> Self {
        Operator {
            home: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
            runs: std::cell::Cell::new(0),
        }
    }

    fn state_dir(&self) -> &Path {
        self.state.path()
    }

    fn site_dir(&self) -> PathBuf {
        self.state_dir().join("sites").join(HOSTNAME)
    }

    fn env_file(&self) -> PathBuf {
        self.site_dir().join("pds.env")
    }

    fn known_hosts(&self) -> PathBuf {
        self.site_dir().join("known_hosts")
    }

    /// `pdsup` with this operator's HOME and state dir and nothing from the test
    /// machine's environment that could change its behaviour.
    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pdsup"));
        cmd.env("HOME", self.home.path())
            .env("XDG_DATA_HOME", self.home.path().join(".local/share"))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("PDSUP_SSH_PASSPHRASE")
            .env_remove("PDSUP_STATE_DIR")
            .env_remove("PDSUP_HOSTNAME")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd.args(args);
        cmd
    }

    fn spawn_with(&self, args: &[String], env: &[(&str, &str)]) -> Running {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let stdout = self.logs.path().join(format!("run{n}.stdout"));
        let stderr = self.logs.path().join(format!("run{n}.stderr"));
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        eprintln!("$ pdsup {}", args.join(" "));
        let child = cmd
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("cannot run pdsup");
        Running {
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    fn spawn(&self, args: &[String]) -> Running {
        self.spawn_with(args, &[])
    }

    fn run(&self, args: &[String]) -> Run {
        let started = Instant::now();
        let run = self.spawn(args).wait();
        eprintln!("  ({:.0?}, {})", started.elapsed(), run.status);
        run
    }

    fn run_with(&self, args: &[String], env: &[(&str, &str)]) -> Run {
        self.spawn_with(args, env).wait()
    }

    /// `pdsup up DEST` with the harness's sources and this operator's state.
    fn up_args<S: AsRef<str>>(&self, dest: &str, extra: &[S]) -> Vec<String> {
        let mut args = vec!["up".to_string(), dest.to_string()];
        args.extend(self.site_args());
        args.extend(["-i".to_string(), ssh_key().display().to_string()]);
        args.extend(extra.iter().map(|s| s.as_ref().to_string()));
        args
    }

    /// Everything but DEST and the SSH key: the site and where things come from.
    fn site_args(&self) -> Vec<String> {
        let c = cache_dir();
        let mut args: Vec<String> =
            vec!["--state-dir".into(), self.state_dir().display().to_string()];
        args.extend(harness_sources(&c));
        args
    }

    /// The secrets of `pds.env`, by name.
    fn secrets(&self) -> BTreeMap<String, String> {
        let env = parse_env(&fs::read_to_string(self.env_file()).expect("read pds.env"));
        SECRET_KEYS
            .iter()
            .map(|k| {
                let v = env.get(*k).unwrap_or_else(|| panic!("pds.env has no {k}"));
                (k.to_string(), v.clone())
            })
            .collect()
    }

    /// Every file under the state dir, for "nothing was saved" checks.
    fn state_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.state_dir(), &mut out);
        out
    }
}

/// The fingerprint of [`docker_apt_key`].
const DOCKER_APT_KEY_FPR: &str = "5968A284C69DB5AABD29FA9DD0488F1CD634191D";

/// apt's sources and keys on the droplet, in enough detail to see any change
/// (directory listings with times, and the files' hashes).
fn apt_sources(d: &Droplet) -> String {
    d.ssh_ok(
        "root",
        "for dir in /etc/apt/sources.list.d /etc/apt/keyrings /etc/apt/trusted.gpg.d; do \
           ls -la --time-style=full-iso \"$dir\" 2>&1; \
           find \"$dir\" -type f -exec sha256sum {} + 2>&1; \
         done; sha256sum /etc/apt/sources.list 2>&1; \
         [ -e /var/tmp/pdsup-docker-apt ] && echo 'staging left behind'; true",
    )
}

/// No extra flags.
const NONE: &[&str] = &[];

// ---------------------------------------------------------------------------------
// Looking at a droplet
// ---------------------------------------------------------------------------------

/// A harness limitation, not pdsup's: droplets see /proc/sys read-only (no
/// --privileged), and trixie's Docker (26.x) refuses to start a bridged container
/// when it cannot disable IPv6 on the container's interface ("failed to disable IPv6
/// on container's interface eth0, set env var DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1").
/// Real droplets have a writable /proc/sys. A docker.service drop-in, there before
/// Docker is installed, as a provider image could have it.
fn allow_docker_without_ipv6(d: &Droplet) {
    d.ssh_ok(
        "root",
        "mkdir -p /etc/systemd/system/docker.service.d && \
         printf '[Service]\nEnvironment=DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1\n' \
           > /etc/systemd/system/docker.service.d/harness-ipv6.conf",
    );
}

fn root_dest(d: &Droplet) -> String {
    format!("root@127.0.0.1:{}", d.ssh_port)
}

/// What pdsup would have installed or written, if anything: empty on a droplet
/// that a failed run must have left alone.
fn traces_of_pdsup(d: &Droplet) -> String {
    d.ssh_ok(
        "root",
        "for p in /usr/bin/dockerd /usr/local/bin/nomad /etc/nomad.d /etc/systemd/system/nomad.service \
                  /srv/nomad /usr/bin/caddy /etc/caddy /usr/bin/unzip /var/tmp/pdsup-nomad; do \
           [ -e \"$p\" ] && echo \"$p exists\"; \
         done; \
         id nomad >/dev/null 2>&1 && echo 'user nomad exists'; true",
    )
}

#[track_caller]
fn assert_untouched(d: &Droplet, what: &str) {
    let traces = traces_of_pdsup(d);
    assert!(
        traces.trim().is_empty(),
        "{what}: the droplet was changed:\n{traces}"
    );
}

/// `systemctl show UNIT -p MainPID -p ActiveEnterTimestampMonotonic`: changes on
/// every (re)start.
fn service_identity(d: &Droplet, unit: &str) -> String {
    d.ssh_ok(
        "root",
        &format!("systemctl show {unit} -p MainPID -p ActiveEnterTimestampMonotonic"),
    )
}

/// Nomad's view of a job, as `curl` on the droplet sees it.
fn nomad_job(d: &Droplet, job: &str) -> Value {
    let text = d.ssh_ok(
        "root",
        &format!("curl -fsS http://127.0.0.1:4646/v1/job/{job}"),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("job {job} JSON ({e}): {text}"))
}

fn nomad_allocs(d: &Droplet, job: &str) -> Vec<String> {
    let text = d.ssh_ok(
        "root",
        &format!("curl -fsS http://127.0.0.1:4646/v1/job/{job}/allocations"),
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["ID"].as_str().unwrap(),
                a["ClientStatus"].as_str().unwrap_or("?")
            )
        })
        .collect();
    ids.sort();
    ids
}

/// `listRepos` asked on the droplet itself, at the PDS's loopback port.
fn list_repos_on_droplet(d: &Droplet) -> Value {
    let text = d.ssh_ok(
        "root",
        "curl -fsS http://127.0.0.1:3000/xrpc/com.atproto.sync.listRepos",
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("listRepos JSON ({e}): {text}"))
}

#[track_caller]
fn assert_lists(repos: &Value, did: &str) {
    let dids: Vec<&str> = repos["repos"]
        .as_array()
        .unwrap_or_else(|| panic!("listRepos answered {repos}"))
        .iter()
        .filter_map(|r| r["did"].as_str())
        .collect();
    assert!(
        dids.contains(&did),
        "listRepos does not list {did}: {repos}"
    );
}

/// GET `https://NAME:<droplet's published 443><path>` from this machine, with
/// `NAME` resolved to loopback and only Pebble's current root trusted: a reply
/// proves Caddy serves a certificate it got through ACME for that name.
fn https_get(d: &Droplet, name: &str, path: &str) -> Result<String, String> {
    https_request(d, name, path, None)
}

/// [`https_get`], or a POST of `json` when given.
fn https_request(
    d: &Droplet,
    name: &str,
    path: &str,
    json: Option<&Value>,
) -> Result<String, String> {
    let mut curl = Command::new("curl");
    if let Some(body) = json {
        curl.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(body.to_string());
    }
    let out = curl
        .args([
            "-sS",
            "--fail-with-body",
            "--max-time",
            "30",
            "--noproxy",
            "*",
        ])
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", d.https_port))
        .arg("--cacert")
        .arg(pebble_root())
        .arg(format!("https://{name}:{}{path}", d.https_port))
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(describe(&out))
    }
}

/// [`https_get`], retried for a while: the first request for a name makes Caddy
/// obtain its certificate (on-demand TLS).
fn https_get_eventually(d: &Droplet, name: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match https_get(d, name, path) {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => {
                let journal = d.ssh("root", "journalctl -u caddy --no-pager -n 30");
                panic!(
                    "https://{name}{path} through Caddy failed:\n{e}\ncaddy's journal:\n{}",
                    stdout(&journal)
                )
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

/// Steps of a `--json` report with their changes.
fn step_changes(report: &Value) -> BTreeMap<String, Vec<String>> {
    report["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {report}"))
        .iter()
        .map(|s| {
            let changes = s["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            (s["step"].as_str().unwrap().to_string(), changes)
        })
        .collect()
}

/// The account of a successful `--json` run: checks it is a did:plc for the handle.
#[track_caller]
fn account_did(report: &Value) -> String {
    assert_eq!(report["ok"], true, "{report}");
    let did = report["account"]["did"]
        .as_str()
        .unwrap_or_else(|| panic!("no account DID in {report}"));
    assert!(
        did.starts_with("did:plc:") && did.len() > "did:plc:".len() + 20,
        "not a did:plc: {did:?}"
    );
    assert_eq!(report["account"]["handle"], FULL_HANDLE, "{report}");
    did.to_string()
}

#[track_caller]
fn assert_no_secrets(secrets: &BTreeMap<String, String>, text: &str, what: &str) {
    for (key, value) in secrets {
        assert!(value.len() >= 32, "{key} is suspiciously short");
        assert!(
            !text.contains(value.as_str()),
            "{what} shows the value of {key}"
        );
    }
}

// ---------------------------------------------------------------------------------
// 1. Fresh droplet → converged (Caddy + Pebble); a second run changes nothing
// ---------------------------------------------------------------------------------

#[test]
fn caddy_fresh_droplet_converges_and_a_second_run_changes_nothing() {
    require_e2e();
    let d = Droplet::start("bookworm");
    let op = Operator::new();
    // -vv: every log record, SSH packets and HTTP included, must still be free of secrets.
    // Docker the default way: from (a copy of) Docker's apt repository.
    let args = from_docker_repo(
        op.up_args(
            &root_dest(&d),
            &[caddy_args(), strings(&["--json", "-vv"])].concat(),
        ),
        "docker-apt",
    );

    // First run: everything from nothing.
    let first = op.run(&args);
    first.assert_ok("first pdsup up");
    let report = first.json();
    assert_eq!(report["changed"], true, "{report}");
    let did = account_did(&report);
    // Caddy's DNS: the hostname and the wildcard for handles under it (Caddy
    // gets their certificates on demand), at the droplet's own address.
    assert_eq!(
        report["dns_records"],
        serde_json::json!([
            { "kind": "A", "name": HOSTNAME, "value": d.ip },
            { "kind": "A", "name": format!("*.{HOSTNAME}"), "value": d.ip },
        ]),
        "{report}"
    );
    let password = report["account"]["password"]
        .as_str()
        .expect("the new account's password is shown once");
    assert!(password.len() >= 16, "short account password {password:?}");
    let steps = step_changes(&report);
    for step in [
        "packages",
        "docker_logs",
        "nomad",
        "nomad_config",
        "proxy",
        "secrets",
        "pds_image",
        "pds_job",
        "account",
    ] {
        assert!(
            !steps[step].is_empty(),
            "a fresh droplet needs {step} work: {report}"
        );
    }

    // Docker Engine came from the repository, checked against the trusted key, and
    // apt keeps that repository and key for the droplet's updates.
    let repo = format!("{}/docker-apt/linux/debian", mirror_url());
    assert!(
        steps["packages"].contains(&format!("check that {repo} bookworm is signed by that key")),
        "{:?}",
        steps["packages"]
    );
    assert_eq!(
        d.ssh_ok("root", "cat /etc/apt/sources.list.d/docker.list"),
        format!("deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] {repo} bookworm stable\n")
    );
    assert_eq!(
        d.ssh_ok("root", "cat /etc/apt/keyrings/docker.asc"),
        fs::read_to_string(docker_apt_key()).unwrap()
    );
    let packages = d.ssh_ok(
        "root",
        "dpkg-query -W -f='${Package} ${Status}\\n' docker-ce docker-ce-cli containerd.io docker.io 2>&1; \
         apt-cache policy docker-ce | grep -c docker-apt/linux/debian; \
         [ -e /var/tmp/pdsup-docker-apt ] && echo 'staging left behind'; true",
    );
    for pkg in ["docker-ce", "docker-ce-cli", "containerd.io"] {
        assert!(
            packages.contains(&format!("{pkg} install ok installed")),
            "{pkg} is not installed:\n{packages}"
        );
    }
    assert!(
        !packages.contains("docker.io install ok installed") && !packages.contains("staging"),
        "{packages}"
    );
    let apt_before = apt_sources(&d);

    // Docker rotates the logs of the containers it runs, the PDS's included.
    let daemon: Value =
        serde_json::from_str(&d.ssh_ok("root", "cat /etc/docker/daemon.json")).unwrap();
    assert_eq!(
        daemon,
        serde_json::json!({"log-driver": "json-file", "log-opts": {"max-size": "500m", "max-file": "4"}})
    );

    // The PDS, through Caddy with a certificate Pebble issued, for the hostname...
    let health = https_get_eventually(&d, HOSTNAME, "/xrpc/_health");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert!(
        health["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("0.4.")),
        "{health}"
    );
    let repos = https_get_eventually(&d, HOSTNAME, "/xrpc/com.atproto.sync.listRepos");
    assert_lists(&serde_json::from_str(&repos).unwrap(), &did);
    // ...and for the handle, whose certificate Caddy may get only because the
    // PDS's /tls-check says the account exists.
    let handle_did = https_get_eventually(&d, FULL_HANDLE, "/.well-known/atproto-did");
    assert_eq!(handle_did.trim(), did);
    assert!(
        https_get(&d, "nobody.pds.test", "/xrpc/_health").is_err(),
        "Caddy got a certificate for an unknown handle"
    );

    // Secrets: kept here only, 0600, three of them, never in the output.
    let mode = fs::metadata(op.env_file()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "pds.env mode is {mode:o}");
    let mode = fs::metadata(op.site_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the site's state dir mode is {mode:o}");
    let secrets = op.secrets();
    for (key, value) in &secrets {
        let want = if key.contains("ROTATION") { 64 } else { 32 };
        assert!(
            value.len() == want && value.chars().all(|c| c.is_ascii_hexdigit()),
            "{key}={value:?} is not {want} hex digits"
        );
    }
    assert_no_secrets(&secrets, &first.stdout, "the first run's JSON");
    assert_no_secrets(&secrets, &first.stderr, "the first run's -vv log");
    let env_before = fs::read(op.env_file()).unwrap();

    // Nomad's API does not give the secrets away: they are in the droplet's
    // root-only pds.env (the site's file, byte for byte), which the task and
    // pdsadmin source.
    let job = nomad_job(&d, "pds");
    assert_no_secrets(&secrets, &job.to_string(), "GET /v1/job/pds");
    assert_eq!(
        d.ssh_ok("root", "stat -c '%a %U %G' /srv/nomad/pds/pds.env")
            .trim(),
        "600 root root"
    );
    assert!(
        d.ssh_ok("root", "cat /srv/nomad/pds/pds.env").as_bytes() == env_before.as_slice(),
        "the droplet's pds.env is not the site's"
    );
    let pdsadmin_style = d.ssh_ok(
        "root",
        "bash -c 'set -euo pipefail; PDS_ENV_FILE=/srv/nomad/pds/pds.env; source \"${PDS_ENV_FILE}\"; \
         printf %s \"${PDS_ADMIN_PASSWORD}\"'",
    );
    assert!(
        pdsadmin_style == secrets["PDS_ADMIN_PASSWORD"],
        "a pdsadmin-style script did not read PDS_ADMIN_PASSWORD from the droplet's pds.env"
    );
    let in_task = d.ssh_ok(
        "root",
        "docker exec $(docker ps -q --filter name=pds- | head -n1) sh -c 'test -r /pds/pds.env && echo readable'",
    );
    assert_eq!(
        in_task.trim(),
        "readable",
        "the task does not see /pds/pds.env"
    );

    // The plan (with the job and its env in full) masks them too.
    let mut plan_args = vec!["plan".to_string()];
    plan_args.extend(op.site_args());
    plan_args.extend(caddy_args());
    let plan = op.run(&plan_args);
    plan.assert_ok("pdsup plan");
    assert!(
        plan.stdout.contains("PDS_JWT_SECRET") && plan.stdout.contains("********"),
        "{}",
        plan.describe()
    );
    assert_no_secrets(
        &secrets,
        &format!("{}{}", plan.stdout, plan.stderr),
        "pdsup plan",
    );

    // Second run: nothing to do, and nothing restarted or re-submitted.
    let nomad_before = service_identity(&d, "nomad");
    let caddy_before = service_identity(&d, "caddy");
    let job_before = nomad_job(&d, "pds");
    let allocs_before = nomad_allocs(&d, "pds");
    let containers_before = d.ssh_ok("root", "docker ps -q --no-trunc | sort");

    let second = op.run(&args);
    second.assert_ok("second pdsup up");
    let report = second.json();
    assert_eq!(report["changed"], false, "{report}");
    for (step, changes) in step_changes(&report) {
        assert!(changes.is_empty(), "second run changed {step}: {changes:?}");
    }
    assert_eq!(account_did(&report), did);
    assert!(
        report["account"]["password"].is_null(),
        "a re-run must not show a password: {report}"
    );
    assert!(
        report["pds_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("0.4.")),
        "a converged run still reports the PDS version: {report}"
    );
    assert_no_secrets(
        &secrets,
        &format!("{}{}", second.stdout, second.stderr),
        "the second run",
    );

    assert_eq!(
        service_identity(&d, "nomad"),
        nomad_before,
        "Nomad was restarted"
    );
    assert_eq!(
        service_identity(&d, "caddy"),
        caddy_before,
        "Caddy was restarted"
    );
    let job_after = nomad_job(&d, "pds");
    for field in ["Version", "JobModifyIndex", "ModifyIndex"] {
        assert_eq!(
            job_after[field], job_before[field],
            "the pds job was re-submitted ({field})"
        );
    }
    assert_eq!(
        nomad_allocs(&d, "pds"),
        allocs_before,
        "the pds allocation was replaced"
    );
    assert_eq!(
        d.ssh_ok("root", "docker ps -q --no-trunc | sort"),
        containers_before,
        "containers changed"
    );
    assert_eq!(
        fs::read(op.env_file()).unwrap(),
        env_before,
        "pds.env changed"
    );
    assert_lists(&list_repos_on_droplet(&d), &did);
    assert_eq!(
        apt_sources(&d),
        apt_before,
        "the second run touched apt's sources"
    );

    // The password shown once logs in, through Caddy.
    let session = https_request(
        &d,
        HOSTNAME,
        "/xrpc/com.atproto.server.createSession",
        Some(&serde_json::json!({"identifier": FULL_HANDLE, "password": password})),
    )
    .unwrap_or_else(|e| panic!("createSession with the shown password failed:\n{e}"));
    let session: Value = serde_json::from_str(&session).unwrap();
    assert_eq!(session["did"], did.as_str(), "{session}");
    assert!(session["accessJwt"].is_string(), "{session}");

    // --confirm-email later: only that changes, once.
    let confirm = [args.clone(), strings(&["--confirm-email"])].concat();
    let run = op.run(&confirm);
    run.assert_ok("pdsup up --confirm-email");
    let report = run.json();
    for (step, changes) in step_changes(&report) {
        let want: &[&str] = if step == "account" {
            &["mark alice.pds.test's email as confirmed"]
        } else {
            &[]
        };
        assert_eq!(changes, want, "--confirm-email changed {step}: {report}");
    }
    let confirmed = d.ssh_ok(
        "root",
        &format!(
            "sqlite3 /srv/nomad/pds/account.sqlite \"select emailConfirmedAt from account where did = '{did}'\""
        ),
    );
    assert!(
        confirmed.trim().starts_with("20"),
        "emailConfirmedAt is {confirmed:?}"
    );
    let run = op.run(&confirm);
    run.assert_ok("pdsup up --confirm-email, again");
    assert_eq!(run.json()["changed"], false, "{}", run.stdout);
    assert_eq!(
        service_identity(&d, "nomad"),
        nomad_before,
        "Nomad was restarted"
    );
}

/// Nomad's API answering on the droplet's public address (a stand-in listener on
/// 4646, as on a droplet whose nomad.hcl binds 0.0.0.0) stops the run before
/// anything changes, and says how to close it or accept it.
#[test]
fn an_exposed_nomad_api_stops_the_run_before_anything_changes() {
    require_e2e();
    let d = Droplet::start("bookworm");
    let op = Operator::new();
    let listening = d.ssh_ok(
        "root",
        "systemd-run --quiet --unit=stand-in-nomad-api systemd-socket-activate -l 4646 sleep infinity; \
         for i in $(seq 50); do ss -Hltn 'sport = :4646' | grep -q . && break; sleep 0.1; done; \
         ss -Hltn 'sport = :4646'",
    );
    assert!(
        listening.contains("4646"),
        "no stand-in listener: {listening}"
    );
    let run = op.run(&op.up_args(&root_dest(&d), &caddy_args()));
    run.assert_failed("an exposed Nomad API", ErrorKind::Blocked)
        .assert_stderr_has(
            "an exposed Nomad API",
            &[
                "Nomad's HTTP API (port 4646) answers on the droplet's public address",
                "--allow-exposed-api",
            ],
        );
    assert_untouched(&d, "a run stopped by an exposed Nomad API");
}

// ---------------------------------------------------------------------------------
// 2. A run killed while Nomad is being installed is finished by the next one
// ---------------------------------------------------------------------------------

#[test]
fn a_run_killed_during_the_nomad_install_is_finished_by_the_next_run() {
    require_e2e();
    let d = Droplet::start("trixie");
    allow_docker_without_ipv6(&d);
    let op = Operator::new();

    // A repository signed by a key other than the trusted one is refused, and apt's
    // sources and keys stay as they were.
    let apt_before = apt_sources(&d);
    let refused = op.run(&from_docker_repo(
        op.up_args(&root_dest(&d), &caddy_args()),
        "docker-apt-other-key",
    ));
    refused.assert_failed(
        "a repository signed by another key",
        ErrorKind::RemoteCommand,
    );
    refused.assert_stderr_has(
        "the refusal",
        &[
            &format!(
                "refused {}/docker-apt-other-key/linux/debian trixie: it is not signed by the key {DOCKER_APT_KEY_FPR}",
                mirror_url()
            ),
            "Nothing was changed",
            "--docker-apt-key",
        ],
    );
    assert_eq!(
        apt_sources(&d),
        apt_before,
        "a refused repository changed apt's sources"
    );
    assert_untouched(&d, "a refused repository");

    // Docker's default path, on trixie, from the repository signed by the trusted key.
    let args = from_docker_repo(op.up_args(&root_dest(&d), &caddy_args()), "docker-apt");

    // Killed while apt installs everything in one transaction and the PDS image
    // archive streams to the droplet beside it.
    let log = kill_when(
        &op,
        &args,
        "→ install docker-ce docker-ce-cli containerd.io (docker)",
        Duration::from_millis(300),
    );
    assert!(
        log.contains("meanwhile upload the PDS image archive"),
        "the archive was not uploaded alongside apt:\n{log}"
    );
    // A copy cut short is never left in place, nor renamed to the staging name.
    std::thread::sleep(Duration::from_secs(3));
    let archive = fs::metadata(cache_dir().join("pds-image.tar"))
        .unwrap()
        .len();
    let staged = d.ssh_ok(
        "root",
        "ls -a /var/tmp | grep '^\\.pdsup\\.' || true; \
         [ -e /var/tmp/pdsup-pds-image.tar ] && echo staged=$(stat -c %s /var/tmp/pdsup-pds-image.tar) || true",
    );
    for line in staged.lines() {
        assert_eq!(
            line.trim(),
            format!("staged={archive}"),
            "a partial upload is left on the droplet:\n{staged}"
        );
    }

    // The next run finishes the package work and is killed in its turn while
    // the Nomad release is being fetched and installed.
    let log = kill_when(&op, &args, "→ install Nomad", Duration::ZERO);
    assert!(!log.contains("nomad.hcl: "), "killed too late:\n{log}");
    assert_eq!(
        d.ssh_ok("root", "systemctl is-active docker || true")
            .trim(),
        "active",
        "Docker should be done before Nomad"
    );
    assert!(
        !d.ssh_ok("root", "[ -e /etc/nomad.d/nomad.hcl ] && echo yes || true")
            .contains("yes"),
        "nomad.hcl written before the kill"
    );

    // Killing pdsup cuts its SSH connection, not a command already running on
    // the droplet: when the kill lands during the last install command (the
    // checksum, unzip and rename, in one script), that command finishes there.
    // Either way the next run must end with Nomad 1.10.5 installed once.
    let finished_on_the_droplet = d
        .ssh_ok(
            "root",
            "/usr/local/bin/nomad version 2>/dev/null | head -n1 || true",
        )
        .contains("1.10.5");
    eprintln!("the cut install finished on the droplet: {finished_on_the_droplet}");

    let mut resume_args = args.clone();
    resume_args.push("--json".into());
    let resumed = op.run(&resume_args);
    resumed.assert_ok("the run after two kills");
    let report = resumed.json();
    let steps = step_changes(&report);
    for step in ["packages", "docker"] {
        assert!(
            steps[step].is_empty(),
            "{step} was finished before the second kill: {:?}",
            steps[step]
        );
    }
    assert_eq!(
        steps["nomad"].iter().any(|c| c == "install Nomad 1.10.5"),
        !finished_on_the_droplet,
        "the resumed run installs Nomad exactly when the cut one did not: {report}"
    );
    // The archive the second run staged beside apt is loaded, not uploaded again.
    assert!(
        steps["pds_image"]
            .iter()
            .any(|c| c.starts_with("load it into Docker"))
            && !steps["pds_image"].iter().any(|c| c.starts_with("upload")),
        "{:?}",
        steps["pds_image"]
    );
    let did = account_did(&report);
    assert!(
        report["account"]["password"].is_string(),
        "the account is created by the resumed run"
    );
    assert_lists(&list_repos_on_droplet(&d), &did);
    let repos = https_get_eventually(&d, HOSTNAME, "/xrpc/com.atproto.sync.listRepos");
    assert_lists(&serde_json::from_str(&repos).unwrap(), &did);
    assert_eq!(
        d.ssh_ok(
            "root",
            "/usr/local/bin/nomad version | head -n1 | cut -d' ' -f1,2"
        )
        .trim(),
        "Nomad v1.10.5"
    );
    assert!(
        !d.ssh_ok("root", "[ -e /var/tmp/pdsup-nomad ] && echo left || true")
            .contains("left"),
        "the Nomad staging directory was left behind"
    );
}

// ---------------------------------------------------------------------------------
// 3. A non-root sudo user; a user whose sudo wants a password; a changed host key
// ---------------------------------------------------------------------------------

#[test]
fn sudo_users_and_a_changed_host_key() {
    require_e2e();
    let d = Droplet::start("bookworm");
    let op = Operator::new();

    // pwuser logs in, but sudo wants a password: refused before any change.
    let pw = op.run(&op.up_args(&format!("pwuser@127.0.0.1:{}", d.ssh_port), &caddy_args()));
    pw.assert_failed("pdsup up as pwuser", ErrorKind::Ssh)
        .assert_stderr_has("pwuser", &["pwuser", "password", "sudo -n", "NOPASSWD"]);
    assert_untouched(&d, "pdsup up as pwuser");
    assert!(
        !op.env_file().exists(),
        "secrets were generated for a run that could not start"
    );

    // This droplet already has the seed's Droplet Superpowers nomad.hcl (Nomad's
    // packaged config plus IO's host volume), but not IO's directory: pdsup
    // patches the file and creates every declared volume's directory, IO's too,
    // although it deploys Caddy (Nomad does not start while one is missing).
    let out = d.ssh_with_stdin(
        "root",
        "mkdir -p /etc/nomad.d && cat > /etc/nomad.d/nomad.hcl && rm -rf /srv/nomad/io",
        SUPERPOWERS_NOMAD_HCL.as_bytes(),
    );
    assert!(out.status.success(), "{}", describe(&out));

    // deploy has passwordless sudo: the whole setup works through it.
    let deploy_args = op.up_args(
        &format!("deploy@127.0.0.1:{}", d.ssh_port),
        &[caddy_args(), strings(&["--json"])].concat(),
    );
    let run = op.run(&deploy_args);
    run.assert_ok("pdsup up as deploy");
    let report = run.json();
    let did = account_did(&report);
    assert_lists(&list_repos_on_droplet(&d), &did);

    // The Superpowers config is kept, line for line, with what the PDS needs added.
    let hcl = d.ssh_ok("root", "cat /etc/nomad.d/nomad.hcl");
    for line in SUPERPOWERS_NOMAD_HCL.lines() {
        assert!(
            hcl.contains(line),
            "the patched nomad.hcl lost {line:?}:\n{hcl}"
        );
    }
    for wanted in ["network_interface = \"lo\"", "host_volume \"pds\" {"] {
        assert!(
            hcl.contains(wanted),
            "no {wanted} in the patched nomad.hcl:\n{hcl}"
        );
    }
    assert_eq!(
        d.ssh_ok("root", "stat -c %F /srv/nomad/io"),
        "directory\n",
        "IO's declared host volume directory was not created"
    );
    let nomad_changes = &step_changes(&report)["nomad_config"];
    assert!(
        nomad_changes.contains(&"create the host volume directory /srv/nomad/io (io)".to_string()),
        "{nomad_changes:?}"
    );
    let notes = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "nomad_config")
        .map(|s| s["notes"].to_string())
        .unwrap_or_default();
    assert!(
        notes.contains("beyond loopback"),
        "no warning about the exposed API: {notes}"
    );
    // The PDS answers on the droplet's loopback only, never on its address.
    let listeners = d.ssh_ok("root", "ss -Hltn 'sport = :3000'");
    assert!(
        !listeners.trim().is_empty() && listeners.lines().all(|l| l.contains("127.0.0.1:3000")),
        "the PDS port is not on loopback only:\n{listeners}"
    );
    let direct = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--noproxy", "*"])
        .arg(format!("http://{}:3000/xrpc/_health", d.ip))
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "the PDS answers on the droplet's address, past the proxy:\n{}",
        describe(&direct)
    );
    assert_eq!(
        d.ssh_ok(
            "root",
            "stat -c '%U:%G %a' /etc/nomad.d/nomad.hcl /etc/caddy/Caddyfile"
        ),
        "root:root 640\nroot:root 644\n",
        "files written through sudo belong to root"
    );
    let health = https_get_eventually(&d, HOSTNAME, "/xrpc/_health");
    assert!(health.contains("\"version\""), "{health}");

    // The droplet is rebuilt behind the same address: new host keys.
    let pinned_before = fs::read_to_string(op.known_hosts()).unwrap();
    let old_key = d.host_key();
    assert!(
        pinned_before.contains(&old_key),
        "the first contact did not pin {old_key}:\n{pinned_before}"
    );
    d.ssh_ok(
        "root",
        "rm -f /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null; systemctl restart ssh",
    );
    let new_key = wait_for_new_host_key(&d, &old_key);
    let marker = d.ssh_ok("root", "touch /root/.e2e-marker; sleep 1; echo ok");
    assert_eq!(marker.trim(), "ok");
    let job_before = nomad_job(&d, "pds");

    let refused = op.run(&deploy_args);
    refused
        .assert_failed(
            "pdsup up against a changed host key",
            ErrorKind::HostKeyChanged,
        )
        .assert_stderr_has(
            "host key refusal",
            &["host key", "--accept-new-host-key", "SHA256:"],
        );
    assert_eq!(
        fs::read_to_string(op.known_hosts()).unwrap(),
        pinned_before,
        "the pin changed without consent"
    );
    let changed = d.ssh_ok(
        "root",
        "find /etc /usr/local /usr/bin /var/tmp -newer /root/.e2e-marker 2>/dev/null | grep -v '^/etc/ssh' || true",
    );
    assert!(
        changed.trim().is_empty(),
        "files changed on the droplet despite the refusal:\n{changed}"
    );
    assert_eq!(
        nomad_job(&d, "pds")["JobModifyIndex"],
        job_before["JobModifyIndex"]
    );

    // Accepting the new key deliberately: the run goes through (nothing to change).
    // Nomad now runs on the Superpowers config, whose API listens on every
    // address: that stops a run unless accepted, and accepting it is noted.
    let mut accept = deploy_args.clone();
    accept.push("--accept-new-host-key".into());
    accept.push("--allow-exposed-api".into());
    let run = op.run(&accept);
    run.assert_ok("pdsup up --accept-new-host-key");
    let report = run.json();
    assert_eq!(account_did(&report), did);
    assert_eq!(report["changed"], false, "{report}");
    let exposure = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "exposure")
        .unwrap_or_else(|| panic!("no exposure step in {report}"));
    assert!(
        exposure["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("Nomad's HTTP API (port 4646) answers on the droplet's public address")),
        "{exposure}"
    );
    let pinned_after = fs::read_to_string(op.known_hosts()).unwrap();
    assert!(
        pinned_after.contains(&new_key),
        "the new key is not pinned:\n{pinned_after}"
    );
    assert!(
        !pinned_after.contains(&old_key),
        "the old key is still pinned:\n{pinned_after}"
    );

    // Nomad's API still answers beyond loopback (the user's choice, accepted).
    let accepted = [deploy_args.clone(), strings(&["--allow-exposed-api"])].concat();
    caddy_failing_on_a_new_caddyfile_keeps_the_old_one(&d, &op, &accepted);
}

/// Caddy does not come up on the Caddyfile pdsup writes: the previous file is
/// put back, Caddy runs on it again (the site keeps serving), and the error
/// quotes Caddy's journal. To provoke it, the operator has hand-edited the
/// Caddyfile, and a drop-in makes Caddy's start fail on any Caddyfile without
/// that edit: pdsup's rewrite passes `caddy validate` but does not start.
fn caddy_failing_on_a_new_caddyfile_keeps_the_old_one(
    d: &Droplet,
    op: &Operator,
    deploy_args: &[String],
) {
    const REFUSAL: &str = "e2e: caddy refuses a Caddyfile without the hand edit";
    let dropin = "/etc/systemd/system/caddy.service.d/e2e-hand-edit.conf";
    let dropin_text = format!(
        "[Service]\nExecStartPre=/bin/sh -c 'grep -q \"^# hand edit\" /etc/caddy/Caddyfile || {{ echo \"{REFUSAL}\" >&2; exit 1; }}'\n"
    );
    let out = d.ssh_with_stdin(
        "root",
        &format!(
            "set -e; mkdir -p /etc/systemd/system/caddy.service.d; cat > {dropin}; \
             printf '# hand edit\\n' >> /etc/caddy/Caddyfile; systemctl daemon-reload; systemctl restart caddy"
        ),
        dropin_text.as_bytes(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let hand_edited = d.ssh_ok("root", "cat /etc/caddy/Caddyfile");

    let run = op.run(deploy_args);
    run.assert_failed(
        "pdsup up with Caddy refusing the new Caddyfile",
        ErrorKind::Unhealthy,
    )
    .assert_stderr_has(
        "the failed Caddy restart",
        &[REFUSAL, "runs on it again", "/etc/caddy/Caddyfile"],
    );
    // Only what Caddy logged from the failed restart on: not its earlier start.
    assert!(
        !run.stderr.contains("serving initial configuration"),
        "the quote reaches back before the failed restart:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("systemctl status"),
        "the error sends the user to systemctl instead of quoting the journal:\n{}",
        run.stderr
    );
    assert_eq!(
        d.ssh_ok("root", "cat /etc/caddy/Caddyfile"),
        hand_edited,
        "the previous Caddyfile was not put back"
    );
    assert_eq!(
        d.ssh_ok(
            "root",
            "systemctl is-active caddy; ls -a /etc/caddy | grep pdsup; true"
        ),
        "active\n",
        "Caddy is not running on the previous file, or pdsup left files behind"
    );
    let health = https_get_eventually(d, HOSTNAME, "/xrpc/_health");
    assert!(health.contains("\"version\""), "{health}");

    // Without the drop-in, the next run installs pdsup's Caddyfile.
    d.ssh_ok("root", &format!("rm -f {dropin}; systemctl daemon-reload"));
    op.run(deploy_args)
        .assert_ok("pdsup up after the drop-in is gone");
    assert!(!d
        .ssh_ok("root", "cat /etc/caddy/Caddyfile")
        .contains("# hand edit"));
}

/// Starts `pdsup` with `args`, waits until its progress shows `needle`, waits
/// `delay` more and SIGKILLs it; returns its stderr.
fn kill_when(op: &Operator, args: &[String], needle: &str, delay: Duration) -> String {
    let running = op.spawn(args);
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let log = running.stderr_so_far();
        if log.contains(needle) {
            break;
        }
        assert!(
            !log.contains("error:"),
            "the run failed before {needle:?}:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "no {needle:?} after {}s:\n{log}",
            RUN_TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(delay);
    let log = running.kill();
    eprintln!("killed pdsup after {needle:?}; its stderr:\n{log}");
    log
}

/// `/etc/nomad.d/nomad.hcl` as HashiCorp's nomad package installs it.
/// Droplet Superpowers' nomad.hcl: Nomad's packaged config with a heartbeat
/// grace and IO's host volume (see REFERENCE.md).
const SUPERPOWERS_NOMAD_HCL: &str = r#"# Full configuration options can be found at https://developer.hashicorp.com/nomad/docs/configuration

data_dir  = "/opt/nomad/data"
bind_addr = "0.0.0.0"

server {
  # license_path is required for Nomad Enterprise as of Nomad v1.1.1+
  #license_path = "/etc/nomad.d/license.hclic"
  enabled          = true
  bootstrap_expect = 1
  heartbeat_grace  = "1m"
}

client {
  enabled = true
  servers = ["127.0.0.1"]

  host_volume "io" {
    path      = "/srv/nomad/io"
    read_only = false
  }
}
"#;

/// Waits until sshd presents a host key other than `old` and returns it.
fn wait_for_new_host_key(d: &Droplet, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("ssh-keyscan")
            .args(["-t", "ed25519", "-p", &d.ssh_port.to_string(), "127.0.0.1"])
            .output()
            .unwrap();
        let key = stdout(&out)
            .lines()
            .find(|l| l.contains("ssh-ed25519"))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "));
        match key {
            Some(k) if k != old => return k,
            _ if Instant::now() > deadline => panic!("sshd did not come back with a new host key"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

// ---------------------------------------------------------------------------------
// 4. --local: pdsup run on the droplet itself logs to the journal
// ---------------------------------------------------------------------------------

#[test]
fn local_mode_on_the_droplet_logs_to_the_journal() {
    require_e2e();
    let d = Droplet::start("bookworm");
    // The binary and the files it needs, copied in as cloud-init would have them.
    let c = cache_dir();
    d.ssh_ok("root", "mkdir -p /root/pdsup-files/mirror");
    for (from, to) in [
        (
            PathBuf::from(env!("CARGO_BIN_EXE_pdsup")),
            "/usr/local/bin/pdsup",
        ),
        (c.join("pds-image.tar"), "/root/pdsup-files/pds-image.tar"),
        (
            c.join("mirror/test-release-key.asc"),
            "/root/pdsup-files/mirror/test-release-key.asc",
        ),
    ] {
        let out = Command::new("docker")
            .arg("cp")
            .arg(&from)
            .arg(format!("{}:{to}", d.name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker cp {}:\n{}",
            from.display(),
            describe(&out)
        );
    }
    let mut args = vec![
        "pdsup",
        "up",
        "--local",
        "--json",
        "--state-dir",
        "/root/pdsup-state",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(harness_sources(Path::new("/root/pdsup-files")));
    args.extend(["--proxy", "caddy"].map(String::from));
    let line = args
        .iter()
        .map(|a| shlex_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let started = Instant::now();
    let out = d.ssh("root", &format!("cd /root && {line}"));
    eprintln!("  pdsup up --local: {:.0?}", started.elapsed());
    assert!(
        out.status.success(),
        "pdsup up --local failed:\n{}",
        describe(&out)
    );
    let report: Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("--local --json output ({e}):\n{}", describe(&out)));
    let did = account_did(&report);
    assert_lists(&list_repos_on_droplet(&d), &did);

    // Run from cloud-init at every boot, say: the second time changes nothing.
    let again = d.ssh("root", &format!("cd /root && {line}"));
    assert!(
        again.status.success(),
        "second pdsup up --local failed:\n{}",
        describe(&again)
    );
    let report: Value = serde_json::from_str(stdout(&again).trim())
        .unwrap_or_else(|e| panic!("--local --json output ({e}):\n{}", describe(&again)));
    assert_eq!(report["changed"], false, "{report}");
    assert_eq!(account_did(&report), did);

    let journal = d.ssh_ok("root", "journalctl -t pdsup --no-pager -o cat");
    let first_step = format!("[1/{}] preflight", pdsup::steps::UP.len());
    for line in [
        first_step.as_str(),
        "install Nomad 1.10.5",
        "submit the pds job",
        "create the account alice.pds.test",
    ] {
        assert!(
            journal.contains(line),
            "journalctl -t pdsup has no line {line:?}:\n{journal}"
        );
    }
    let mode = d.ssh_ok(
        "root",
        "stat -c %a /root/pdsup-state/sites/pds.test/pds.env",
    );
    assert_eq!(mode.trim(), "600");
    let env = d.ssh_ok("root", "cat /root/pdsup-state/sites/pds.test/pds.env");
    let secrets = parse_env(&env);
    for key in SECRET_KEYS {
        let value = secrets
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the droplet's pds.env"));
        assert!(!journal.contains(value.as_str()), "the journal shows {key}");
    }
}

fn shlex_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

// ---------------------------------------------------------------------------------
// 5. IO (the default proxy): job and ingress land; the closed image is named
// ---------------------------------------------------------------------------------

#[test]
fn io_proxy_lands_its_job_and_ingress_and_names_the_image_it_cannot_pull() {
    require_e2e();
    let d = Droplet::start("bookworm");
    let op = Operator::new();

    // Nomad from a local release zip (offline installs): SHA256SUMS and its .sig
    // sit beside it. A zip that is not the signed one is refused, never installed.
    let release = mirror_dir().join("nomad/1.10.5");
    let zip = release.join("nomad_1.10.5_linux_amd64.zip");
    let tampered = tempfile::tempdir().expect("tempdir");
    for name in ["nomad_1.10.5_SHA256SUMS", "nomad_1.10.5_SHA256SUMS.sig"] {
        fs::copy(release.join(name), tampered.path().join(name)).expect("copy release file");
    }
    let mut bytes = fs::read(&zip).expect("read the release zip");
    bytes.push(0);
    let bad_zip = tampered.path().join("nomad_1.10.5_linux_amd64.zip");
    fs::write(&bad_zip, bytes).expect("write the tampered zip");
    let bad = op.run(&op.up_args(&root_dest(&d), &["--nomad-zip", bad_zip.to_str().unwrap()]));
    bad.assert_failed("pdsup up with a tampered --nomad-zip", ErrorKind::BadInput)
        .assert_stderr_has(
            "the checksum refusal",
            &["does not match the signed SHA256SUMS"],
        );
    assert!(
        !d.ssh("root", "test -e /usr/local/bin/nomad")
            .status
            .success(),
        "a tampered Nomad zip was installed"
    );

    let run = op.run(&op.up_args(&root_dest(&d), &["--nomad-zip", zip.to_str().unwrap()]));
    run.assert_failed(
        "pdsup up with IO (its image cannot be pulled here)",
        ErrorKind::Unhealthy,
    )
    .assert_stderr_has(
        "the IO failure",
        &[
            &format!("the image {IO_IMAGE} could not be pulled"),
            "--proxy caddy",
        ],
    );

    // IO's current syntax by default (`ingress`, since July 2026), not the seed's `host`.
    let ingress = d.ssh_ok("root", "cat /srv/nomad/io/pds.hcl");
    assert!(
        ingress
            .contains("ingress \"pds.test\" {\n  name    = \"pds\"\n  backend = \"nomad:pds\"\n}"),
        "IO's ingress block is missing from /srv/nomad/io/pds.hcl:\n{ingress}"
    );
    assert!(
        !ingress.contains("host \""),
        "the seed's host block is in /srv/nomad/io/pds.hcl by default:\n{ingress}"
    );
    let job = nomad_job(&d, "io");
    let task = &job["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Driver"], "docker", "{job}");
    assert_eq!(task["Config"]["image"], IO_IMAGE, "{job}");
    assert_eq!(task["Config"]["network_mode"], "host", "{job}");
    let version = d.ssh_ok("root", "/usr/local/bin/nomad version");
    assert!(
        version.starts_with("Nomad v1.10.5"),
        "--nomad-zip did not install the release: {version}"
    );
    let hcl = d.ssh_ok("root", "cat /etc/nomad.d/nomad.hcl");
    assert!(
        hcl.contains("host_volume \"io\""),
        "no io host volume in nomad.hcl:\n{hcl}"
    );
    assert!(
        !op.env_file().exists(),
        "the run went past the proxy step although IO is not running"
    );

    // Running again must not skip the proxy because the job is already registered:
    // IO is still not running, and the run says so again, before the PDS.
    let job_before = nomad_job(&d, "io");
    let again = op.run(&op.up_args(&root_dest(&d), &["--json"]));
    again.assert_failed("the second IO run", ErrorKind::Unhealthy);
    let report = again.json();
    assert_eq!(report["ok"], false, "{report}");
    // The error says what kind it is, in which step, and what to do next.
    assert_eq!(report["kind"], "unhealthy", "{report}");
    assert_eq!(report["step"], "proxy", "{report}");
    assert_eq!(report["exit_code"], 9, "{report}");
    assert!(
        report["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("--proxy caddy")),
        "no hint in {report}"
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!("the image {IO_IMAGE} could not be pulled")),
        "the second run does not name the image: {report}"
    );
    assert!(
        !op.env_file().exists(),
        "the second run went past the proxy step although IO is not running"
    );
    assert_eq!(
        nomad_job(&d, "io")["JobModifyIndex"],
        job_before["JobModifyIndex"],
        "the unchanged IO job was submitted again"
    );

    // An older IO image reads the seed's `host` block: the choice is made once
    // and remembered in site.toml. IO's job is left as it was.
    let older = op.run(&op.up_args(&root_dest(&d), &["--io-ingress-syntax", "host"]));
    older.assert_failed(
        "the run with --io-ingress-syntax host",
        ErrorKind::Unhealthy,
    );
    let ingress = d.ssh_ok("root", "cat /srv/nomad/io/pds.hcl");
    assert!(
        ingress.contains("host \"pds.test\" {\n  name    = \"pds\"\n  backend = \"nomad:pds\"\n}")
            && !ingress.contains("ingress \""),
        "--io-ingress-syntax host did not write the seed's block:\n{ingress}"
    );
    let site_toml = fs::read_to_string(op.site_dir().join("site.toml")).unwrap();
    assert!(
        site_toml.contains("io_ingress_syntax = \"host\""),
        "the ingress syntax is not remembered:\n{site_toml}"
    );
    assert_eq!(
        nomad_job(&d, "io")["JobModifyIndex"],
        job_before["JobModifyIndex"],
        "a new ingress syntax submitted the IO job again"
    );

    // The DNS records for IO (a dry run goes past the proxy that cannot run
    // here): the hostname's address and the handle's TXT record, no wildcard,
    // since IO has a certificate for the hostname only. The address is the
    // droplet's own (DEST is a tunnel on this machine's loopback).
    let dry = op.run(&op.up_args(&root_dest(&d), &["--dry-run", "--json"]));
    dry.assert_ok("a dry run with IO");
    let report = dry.json();
    let proxy_changes = step_changes(&report)["proxy"].clone();
    assert!(
        !proxy_changes.iter().any(|c| c.contains("ingress")),
        "the remembered syntax was not used: {proxy_changes:?}"
    );
    assert_eq!(
        report["dns_records"],
        serde_json::json!([
            { "kind": "A", "name": "pds.test", "value": d.ip },
            { "kind": "TXT", "name": "_atproto.alice.pds.test", "value": "\"did=<the account's DID>\"" },
        ]),
        "{report}"
    );
}

// ---------------------------------------------------------------------------------
// 5b. What the droplet already runs is adopted, not replaced: a Caddyfile with a
//     site of the user's, then an `io` job of the user's
// ---------------------------------------------------------------------------------

/// The user's Caddyfile before pdsup: comments and a site of their own (plain
/// HTTP on a port of its own, so it needs no certificate), no global options.
const USERS_CADDYFILE: &str = "# Caddy on this droplet serves my own site too.\n\
:8081 {\n\trespond \"the user's other site\"\n}\n";

/// The user's own `io` job: other names, another mount point, an env of its
/// own, and a stand-in image (the PDS image re-tagged on the droplet) running
/// `sleep`, as IO's image cannot be pulled here. It mounts the `io` host volume.
const USERS_IO_IMAGE: &str = "registry.example/user/io:stand-in";

fn users_io_job() -> Value {
    serde_json::json!({ "Job": {
        "ID": "io", "Name": "io", "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{
            "Name": "proxy", "Count": 1,
            "Volumes": { "config": { "Name": "config", "Type": "host", "Source": "io", "ReadOnly": false } },
            "Tasks": [{
                "Name": "io", "Driver": "docker",
                "Config": { "image": USERS_IO_IMAGE, "command": "sleep", "args": ["1000000"] },
                "Env": { "IO_CONFIG_DIR": "/etc/io" },
                "VolumeMounts": [{ "Volume": "config", "Destination": "/etc/io", "ReadOnly": false }],
                "Resources": { "CPU": 100, "MemoryMB": 64 },
            }],
        }],
    }})
}

/// The notes of one step of a `--json` report, as one string.
fn step_notes(report: &Value, step: &str) -> String {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == step)
        .map(|s| s["notes"].to_string())
        .unwrap_or_default()
}

#[test]
fn what_the_droplet_runs_is_adopted_the_users_caddyfile_and_io_job_are_kept() {
    require_e2e();
    let d = Droplet::start("bookworm");
    let op = Operator::new();

    // A Droplet Superpowers nomad.hcl (with IO's host volume), and the
    // distribution's Caddy serving a site of the user's.
    let out = d.ssh_with_stdin(
        "root",
        "mkdir -p /etc/nomad.d /srv/nomad/io && cat > /etc/nomad.d/nomad.hcl",
        SUPERPOWERS_NOMAD_HCL.as_bytes(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    d.ssh_ok(
        "root",
        "DEBIAN_FRONTEND=noninteractive apt-get -qq update && \
         DEBIAN_FRONTEND=noninteractive apt-get -qq install -y caddy >/dev/null",
    );
    let out = d.ssh_with_stdin(
        "root",
        "cat > /etc/caddy/Caddyfile && systemctl restart caddy",
        USERS_CADDYFILE.as_bytes(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let users_site = "curl -fsS --max-time 10 http://127.0.0.1:8081/";
    assert_eq!(d.ssh_ok("root", users_site), "the user's other site");

    // Caddy: pdsup's site goes to a file of its own, imported by one line.
    // The Superpowers nomad.hcl binds 0.0.0.0: its API answers on the droplet's
    // address, which the exposure check refuses unless the user accepts it.
    let caddy = op.up_args(
        &root_dest(&d),
        &[caddy_args(), strings(&["--json", "--allow-exposed-api"])].concat(),
    );
    let run = op.run(&caddy);
    run.assert_ok("pdsup up with the user's Caddyfile");
    let report = run.json();
    let did = account_did(&report);
    let caddyfile = d.ssh_ok("root", "cat /etc/caddy/Caddyfile");
    assert_eq!(
        caddyfile,
        format!("import /etc/caddy/pdsup.caddy\n{USERS_CADDYFILE}"),
        "the user's Caddyfile changed beyond the one import line"
    );
    let site = d.ssh_ok("root", "cat /etc/caddy/pdsup.caddy");
    assert!(site.starts_with("# Managed by pdsup"), "{site}");
    let notes = step_notes(&report, "proxy");
    assert!(
        notes.contains("adopted your /etc/caddy/Caddyfile (not pdsup's)"),
        "{notes}"
    );
    assert_eq!(
        d.ssh_ok("root", users_site),
        "the user's other site",
        "the user's site stopped answering"
    );
    // The PDS through Caddy for the hostname and the handle; Caddy still asks
    // the PDS before a certificate, although the ask is not in the user's file.
    let health = https_get_eventually(&d, HOSTNAME, "/xrpc/_health");
    assert!(health.contains("\"version\""), "{health}");
    let handle_did = https_get_eventually(&d, FULL_HANDLE, "/.well-known/atproto-did");
    assert_eq!(handle_did.trim(), did);
    assert!(
        https_get(&d, "nobody.pds.test", "/xrpc/_health").is_err(),
        "Caddy got a certificate for an unknown handle"
    );
    assert_eq!(
        nomad_job(&d, "pds")["Meta"]["managed-by"],
        "pdsup",
        "pdsup's job does not carry its mark"
    );
    // Converged: a second run changes nothing, the Caddyfile included.
    let again = op.run(&caddy);
    again.assert_ok("the second run with the user's Caddyfile");
    let report = again.json();
    assert_eq!(report["changed"], false, "{report}");
    assert_eq!(d.ssh_ok("root", "cat /etc/caddy/Caddyfile"), caddyfile);

    // The droplet moves to IO, and the user runs an io job of their own.
    d.ssh_ok(
        "root",
        &format!("systemctl disable --now caddy >/dev/null 2>&1; docker tag ghcr.io/bluesky-social/pds:0.4 {USERS_IO_IMAGE}"),
    );
    let out = d.ssh_with_stdin(
        "root",
        "curl -fsS -X POST --data-binary @- http://127.0.0.1:4646/v1/jobs",
        users_io_job().to_string().as_bytes(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !nomad_allocs(&d, "io")
        .iter()
        .any(|a| a.ends_with(" running"))
    {
        assert!(
            Instant::now() < deadline,
            "the user's io job does not run: {:?}",
            nomad_allocs(&d, "io")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let job_before = nomad_job(&d, "io");
    let allocs_before = nomad_allocs(&d, "io");

    let io = op.up_args(
        &root_dest(&d),
        &["--proxy", "io", "--json", "--allow-exposed-api"],
    );
    let run = op.run(&io);
    run.assert_ok("pdsup up with the user's io job");
    let report = run.json();
    assert_eq!(account_did(&report), did);
    let notes = step_notes(&report, "proxy");
    assert!(
        notes.contains("adopted the io job you run (not pdsup's)"),
        "{notes}"
    );
    let job_after = nomad_job(&d, "io");
    for field in ["Version", "JobModifyIndex", "TaskGroups", "Meta"] {
        assert_eq!(
            job_after[field], job_before[field],
            "the user's io job was changed ({field})"
        );
    }
    assert_eq!(
        nomad_allocs(&d, "io"),
        allocs_before,
        "the user's io job was restarted"
    );
    let ingress = d.ssh_ok("root", "cat /srv/nomad/io/pds.hcl");
    assert!(ingress.contains("\"pds.test\""), "{ingress}");
    assert_lists(&list_repos_on_droplet(&d), &did);
    assert_eq!(
        d.ssh_ok("root", "cat /etc/caddy/Caddyfile"),
        caddyfile,
        "the IO run touched the user's Caddyfile"
    );
}

// ---------------------------------------------------------------------------------
// 6. Bad input: a specific error before anything changes
// ---------------------------------------------------------------------------------

#[test]
fn bad_input_is_refused_before_anything_changes() {
    require_e2e();
    let op = Operator::new();
    // A loopback port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed_dest = format!("root@127.0.0.1:{closed}");

    let with = |flag: &str, value: &str| -> Vec<String> {
        let mut args = op.up_args(&closed_dest, NONE);
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.to_string();
        args
    };
    let unreachable = format!("cannot reach 127.0.0.1:{closed}");
    let cases: Vec<(&str, Vec<String>, Vec<&str>, ErrorKind)> = vec![
        (
            "hostname",
            with("--hostname", "pds_test.example"),
            vec!["invalid hostname \"pds_test.example\""],
            ErrorKind::BadInput,
        ),
        (
            "handle",
            with("--handle", "al"),
            vec!["invalid handle \"al\"", "3 to 18 characters"],
            ErrorKind::BadInput,
        ),
        (
            "email",
            with("--email", "alice-at-example.com"),
            vec!["invalid email \"alice-at-example.com\""],
            ErrorKind::BadInput,
        ),
        (
            "DEST",
            op.up_args("root@127.0.0.1:70000", NONE),
            vec!["invalid destination `root@127.0.0.1:70000`", "port"],
            ErrorKind::BadInput,
        ),
        (
            "key file",
            with("-i", "/nonexistent/id_ed25519"),
            vec!["/nonexistent/id_ed25519", "cannot read the key file"],
            ErrorKind::BadInput,
        ),
        (
            "unreachable host",
            op.up_args(&closed_dest, NONE),
            vec![&unreachable],
            ErrorKind::Ssh,
        ),
    ];
    for (what, args, needles, kind) in &cases {
        let run = op.run(args);
        run.assert_failed(what, *kind)
            .assert_stderr_has(what, needles);
        assert!(
            op.state_files().is_empty(),
            "{what}: state was saved: {:?}",
            op.state_files()
        );
    }

    // A file that is not a key at all.
    let not_a_key = op.home.path().join("not-a-key");
    fs::write(&not_a_key, "hello\n").unwrap();
    let run = op.run(&with("-i", not_a_key.to_str().unwrap()));
    run.assert_failed("a key file that is no key", ErrorKind::Ssh)
        .assert_stderr_has("not a key", &[not_a_key.to_str().unwrap()]);
    assert!(
        !run.stderr.contains("cannot reach"),
        "the key should be refused before connecting:\n{}",
        run.describe()
    );

    // The rest needs a droplet that sees no change from any of it.
    let d = Droplet::start("bookworm");
    let dest = root_dest(&d);

    // A dry run saves nothing locally either: no host key pin, no site.toml,
    // not even the site's directory.
    let run = op.run(&op.up_args(&dest, &["--dry-run"]));
    run.assert_ok("a dry run against a fresh droplet");
    assert!(
        op.state_files().is_empty() && !op.site_dir().exists(),
        "a dry run wrote state: {:?}",
        op.state_files()
    );
    assert_untouched(&d, "a dry run");

    // Wrong passphrase for an encrypted copy of the test key.
    let encrypted = op.home.path().join("id_encrypted");
    fs::copy(ssh_key(), &encrypted).unwrap();
    fs::set_permissions(&encrypted, fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "right passphrase", "-f"])
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -p:\n{}", describe(&out));
    let mut args = op.up_args(&dest, NONE);
    let i = args.iter().position(|a| a == "-i").unwrap();
    args[i + 1] = encrypted.display().to_string();
    let run = op.run_with(&args, &[("PDSUP_SSH_PASSPHRASE", "wrong")]);
    run.assert_failed("wrong passphrase", ErrorKind::Ssh)
        .assert_stderr_has(
            "wrong passphrase",
            &["wrong passphrase", "PDSUP_SSH_PASSPHRASE"],
        );
    assert!(!run.stderr.contains("right passphrase"));
    let state_before: Vec<(PathBuf, Vec<u8>)> = op
        .state_files()
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    let run = op.run_with(
        &[&args[..], &["--dry-run".to_string()]].concat(),
        &[("PDSUP_SSH_PASSPHRASE", "right passphrase")],
    );
    run.assert_ok("the right passphrase (dry run)");
    let state_after: Vec<(PathBuf, Vec<u8>)> = op
        .state_files()
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    assert_eq!(state_after, state_before, "a dry run changed the state dir");
    assert_untouched(&d, "wrong passphrase, then a dry run");

    // An OS pdsup does not support.
    d.ssh_ok(
        "root",
        "cp /etc/os-release /root/os-release.orig && \
         sed 's/^VERSION_ID=.*/VERSION_ID=\"11\"/; s/^PRETTY_NAME=.*/PRETTY_NAME=\"Debian GNU\\/Linux 11 (bullseye)\"/' /root/os-release.orig > /etc/os-release.new && \
         rm -f /etc/os-release && mv /etc/os-release.new /etc/os-release",
    );
    let run = op.run(&op.up_args(&dest, NONE));
    run.assert_failed("Debian 11", ErrorKind::Blocked)
        .assert_stderr_has(
            "Debian 11",
            &["unsupported OS", "debian 11", "Debian 12/13"],
        );
    assert_untouched(&d, "unsupported OS");
    assert!(
        !op.env_file().exists(),
        "secrets were generated for an unsupported droplet"
    );
    d.ssh_ok("root", "cp /root/os-release.orig /etc/os-release");

    // Port 80 held by another web server.
    let out = Command::new("docker")
        .args(["cp", "/bin/busybox"])
        .arg(format!("{}:/root/busybox", d.name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker cp busybox:\n{}",
        describe(&out)
    );
    d.ssh_ok("root", "mkdir -p /root/www && /root/busybox httpd -p 80 -h /root/www && sleep 0.5 && ss -Hltn 'sport = :80' | grep -q .");
    for proxy in [&["--proxy", "caddy"][..], NONE] {
        let run = op.run(&op.up_args(&dest, proxy));
        run.assert_failed("port 80 taken", ErrorKind::Blocked)
            .assert_stderr_has(
                "port 80 taken",
                &["port 80 is held by \"busybox\"", "preflight"],
            );
        assert_untouched(&d, "port 80 taken");
    }

    // A time zone the droplet's tz database does not have (the seed's "PDT"),
    // last: site.toml now remembers it (port 80 is still taken too).
    let run = op.run(&op.up_args(&dest, &["--timezone", "PDT"]));
    run.assert_failed("--timezone PDT", ErrorKind::Blocked)
        .assert_stderr_has(
            "--timezone PDT",
            &[
                "--timezone \"PDT\"",
                "/usr/share/zoneinfo/PDT",
                "America/Los_Angeles",
            ],
        );
    assert_untouched(&d, "an unknown time zone");
    assert!(
        !op.env_file().exists(),
        "secrets were generated for an unknown time zone"
    );
}

// ---------------------------------------------------------------------------------
// 7. Package work cut short is finished; a held dpkg lock is waited for, by name
// ---------------------------------------------------------------------------------

/// Takes the dpkg frontend lock the way apt and dpkg do (an `fcntl` write lock,
/// which `flock(1)` would not take), holds it for ARGV[0] seconds, and exits.
const HOLD_DPKG_LOCK: &str = r#"use Fcntl;
open(my $lock, '>>', '/var/lib/dpkg/lock-frontend') or die "open: $!";
# struct flock on 64-bit Linux: type, whence, pad, start, len, pid, pad.
my $flock = pack('s s x4 q q l x4', F_WRLCK, 0, 0, 0, 0);
fcntl($lock, F_SETLKW, $flock) or die "lock: $!";
sleep($ARGV[0]);
"#;

#[test]
fn interrupted_package_work_is_finished_and_the_dpkg_lock_holder_is_named() {
    require_e2e();
    let d = Droplet::start("bookworm");
    let op = Operator::new();

    // A kill in the middle of `apt-get install docker.io`, made deterministic:
    // the debs of docker.io and its dependencies unpacked, none configured. A
    // few cannot even be unpacked (python3 pre-depends on an unconfigured
    // python3-minimal), as after a kill before apt got to them.
    d.ssh_ok(
        "root",
        "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; \
         apt-get install -y -qq --download-only docker.io >/dev/null; \
         dpkg --unpack /var/cache/apt/archives/*.deb >/dev/null 2>&1 || true",
    );
    assert_eq!(
        d.ssh_ok("root", "dpkg-query -W -f='${db:Status-Abbrev}' docker.io")
            .trim(),
        "iU",
        "docker.io should be unpacked, not configured"
    );
    assert!(
        d.ssh("root", "command -v dockerd").status.success(),
        "dockerd should be on disk already (what `command -v` took for installed)"
    );

    // unattended-upgrades holding the dpkg lock, as on a fresh droplet: a
    // program of that name takes the lock apt and dpkg wait for.
    let out = d.ssh_with_stdin(
        "root",
        "cat > /root/hold-dpkg-lock.pl",
        HOLD_DPKG_LOCK.as_bytes(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    // A transient service, so that it outlives the SSH session that starts it.
    let pid = d
        .ssh_ok(
            "root",
            "cp /usr/bin/perl /usr/local/sbin/unattended-upgrade && \
             systemd-run --quiet --unit=hold-dpkg-lock \
               /usr/local/sbin/unattended-upgrade /root/hold-dpkg-lock.pl 25 && \
             systemctl show -p MainPID --value hold-dpkg-lock",
        )
        .trim()
        .to_string();
    let inode = d
        .ssh_ok("root", "stat -c %i /var/lib/dpkg/lock-frontend")
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d
        .ssh_ok("root", "cat /proc/locks")
        .lines()
        .any(|l| l.contains(&format!(" {pid} ")) && l.ends_with(&format!(":{inode} 0 EOF")))
    {
        assert!(
            Instant::now() < deadline,
            "the lock holder did not take the lock: {}",
            d.ssh_ok(
                "root",
                "journalctl -u hold-dpkg-lock --no-pager; cat /proc/locks"
            )
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // apt itself respects that lock (the point of holding it).
    let apt = d.ssh(
        "root",
        "apt-get -o DPkg::Lock::Timeout=0 -y remove pdsup-no-such-package 2>&1",
    );
    assert!(
        !apt.status.success() && stdout(&apt).contains("Could not get lock"),
        "apt did not wait for the held lock:\n{}",
        describe(&apt)
    );

    let args = op.up_args(&root_dest(&d), &caddy_args());
    let run = op.run(&args);
    run.assert_ok("pdsup up on a droplet with docker.io half installed");
    run.assert_stderr_has(
        "the repair",
        &[
            "→ finish interrupted package work",
            // Named in preflight's note and while the repair waits for it.
            &format!("the dpkg lock is held by unattended-upgr (pid {pid})"),
            &format!("waiting for the dpkg lock held by unattended-upgr (pid {pid})"),
        ],
    );
    assert_eq!(
        d.ssh_ok("root", "dpkg-query -W -f='${db:Status-Abbrev}' docker.io")
            .trim(),
        "ii"
    );
    assert_eq!(
        d.ssh_ok("root", "dpkg --audit").trim(),
        "",
        "dpkg still has unfinished work"
    );
    let repos = list_repos_on_droplet(&d);
    let listed = repos["repos"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 1, "one account on the PDS: {repos}");

    let mut again = args.clone();
    again.push("--json".into());
    let second = op.run(&again);
    second.assert_ok("the second run");
    let report = second.json();
    assert_eq!(report["changed"], false, "{report}");

    // An image archive docker cannot load: the error names the archive, and
    // the uploaded copy does not stay behind in /var/tmp.
    let corrupt = op.home.path().join("corrupt-pds-image.tar");
    fs::write(&corrupt, b"this is no docker save tarball\n").unwrap();
    let mut bad = args.clone();
    let i = bad.iter().position(|a| a == "--pds-image-archive").unwrap();
    bad[i + 1] = corrupt.display().to_string();
    bad.extend(strings(&["--pds-image", "example/never-loaded:1"]));
    let run = op.run(&bad);
    run.assert_failed("a corrupt image archive", ErrorKind::RemoteCommand)
        .assert_stderr_has(
            "a corrupt image archive",
            &[&format!("docker could not load {}", corrupt.display())],
        );
    let left = d.ssh_ok("root", "ls -A /var/tmp");
    assert!(
        !left.contains("pdsup"),
        "the archive was left in /var/tmp:\n{left}"
    );
}
