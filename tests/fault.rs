//! Fault injection: `pdsup up` is killed at every change boundary of a fresh run
//! and its SSH connection is cut in the middle of long changes, all on one
//! droplet; then a normal run must converge with exactly one account and the
//! secrets of the run that made them, and the run after it must change nothing.
//!
//! **The walk.** Run k is SIGKILLed as soon as its first change has completed:
//! when the progress line (`  → <change>`, one per change, on stderr) of its
//! second change appears. Every run plans afresh against the droplet, so run k+1
//! starts at the change run k was killed at, and the runs step through every
//! boundary of a fresh run in turn. Some changes come as a group that is planned
//! whole again until its last one is done (Docker's repository: stage its key,
//! check the repository, install): when a run starts with the same change as the
//! run before, it is killed one change deeper, so the boundaries inside the group
//! are walked too. A run with one change left finishes. The
//! change a run was killed at may be done in the instant before the kill, or made
//! unnecessary by it (`systemctl restart` is quick, Docker's package starts its
//! service): the next run then starts one change later, and the test lists the
//! boundaries it did kill at.
//!
//! **The cuts.** All runs reach the droplet through a TCP proxy in this test. When
//! one of a run's first two changes is a long one not cut yet (the one apt
//! transaction with the PDS image upload beside it, twice, `docker load`, the
//! wait for the job's health, account creation), the test cuts every connection of the proxy in the
//! middle of that change instead of killing the run. The walk then carries on
//! from what the cut left.
//!
//! **After the walk**, a normal run must converge and the next change nothing.
//! Then the state a kill just after `createAccount` was sent leaves (an intent in
//! `site.toml`, no DID) must be finished by recording the account, and a droplet
//! whose PDS data is gone must stop every run, whether `site.toml` has the DID or
//! only the intent, before the PDS starts on the empty data dir.
//!
//! The test prints its kill points, its cuts and its time (`--nocapture`).
//!
//! **What it cannot reach.**
//! - A SIGKILL lands between changes, never inside one: a kill inside a change is
//!   the cut's job, and cuts are timed (a delay after the change's line), so
//!   where exactly in the change they land varies from run to run. In account
//!   creation in particular, the cut may fall before or after the PDS got the
//!   `createAccount` request: the test accepts either, and the run after it
//!   says which (it creates the account, or records the one the PDS made).
//! - After the last change of a fresh run (account creation; the dns step only
//!   prints records) there is no next line to kill at: the cut during account
//!   creation and the intent check after the walk stand in for that point.
//! - The instant between "the next change's line appeared" and the SIGKILL is a
//!   few milliseconds of that change; what it did in that time varies.
//! - Changes a fresh bookworm run with `--proxy caddy` and Docker's repository
//!   (the default path, from the harness's signed copy) does not make: the
//!   distribution's docker.io, the IO proxy, `--confirm-email`, a Nomad upgrade,
//!   edits of existing config files.
//! - Kills inside pdsup's local writes (`site.toml`, `pds.env`): they are atomic
//!   renames, unit-tested in src/state.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Upper bound for one run; a hang (after a cut, say) fails the test.
const RUN_TIMEOUT: Duration = Duration::from_secs(420);
/// Walk runs before the test gives up on a run that makes no progress.
const MAX_RUNS: usize = 80;
/// How deep into a run the walk kills before a repeated first change counts as
/// no progress.
const MAX_DEPTH: usize = 6;
const SECRET_KEYS: [&str; 3] = [
    "PDS_JWT_SECRET",
    "PDS_ADMIN_PASSWORD",
    "PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX",
];
/// The progress line of a change (src/ui: plain mode, one per change).
const CHANGE_LINE: &str = "  → ";

/// Long changes to cut the connection in the middle of: the start of the
/// change's summary, and how long after its line the cut comes.
/// The packages step's transaction is cut twice: early, while `apt-get update`
/// runs and the PDS image archive streams beside it, then in the install.
const CUT_POINTS: [(&str, Duration); 5] = [
    (
        "install docker-ce docker-ce-cli containerd.io (docker)",
        Duration::from_millis(400),
    ),
    (
        "install docker-ce docker-ce-cli containerd.io (docker)",
        Duration::from_secs(6),
    ),
    ("load it into Docker as", Duration::from_millis(1500)),
    (
        "wait for the PDS allocation to be healthy",
        Duration::from_millis(800),
    ),
    ("create the account", Duration::from_millis(250)),
];

// ---------------------------------------------------------------------------------
// A TCP proxy whose connections can be cut
// ---------------------------------------------------------------------------------

/// Forwards `127.0.0.1:<port>` to the droplet's SSH port; [`CutProxy::cut`] drops
/// every open connection at once, like a network that goes away.
struct CutProxy {
    port: u16,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl CutProxy {
    fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let registry = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut open = registry.lock().unwrap();
                    open.retain(|s: &TcpStream| s.peer_addr().is_ok());
                    open.push(client.try_clone().unwrap());
                    open.push(upstream.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pipe(upstream, client);
            }
        });
        CutProxy { port, open }
    }

    /// Closes every connection open now; later ones go through again.
    fn cut(&self) -> usize {
        let mut open = self.open.lock().unwrap();
        for stream in open.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let n = open.len() / 2;
        open.clear();
        n
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

// ---------------------------------------------------------------------------------
// The operator: a HOME and a state dir of its own, runs logged to files
// ---------------------------------------------------------------------------------

struct Operator {
    home: tempfile::TempDir,
    state: tempfile::TempDir,
    logs: tempfile::TempDir,
    runs: usize,
}

struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

/// How a run ended.
struct Exit {
    /// `None` when the test killed it.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Running {
    fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Summaries of the changes it has started, in order.
    fn changes_so_far(&self) -> Vec<String> {
        changes(&self.stderr_so_far())
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for pdsup")
    }

    fn ended(self, status: Option<ExitStatus>) -> Exit {
        Exit {
            status,
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }

    fn wait(mut self) -> Exit {
        loop {
            if let Some(status) = self.exited() {
                return self.ended(Some(status));
            }
            self.check_time();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(mut self) -> Exit {
        self.child.kill().expect("kill pdsup");
        self.child.wait().expect("reap pdsup");
        self.ended(None)
    }

    fn check_time(&mut self) {
        if self.started.elapsed() > RUN_TIMEOUT {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "pdsup did not finish within {}s; its stderr:\n{}",
                RUN_TIMEOUT.as_secs(),
                self.stderr_so_far()
            );
        }
    }
}

/// How a run of the walk ended.
enum Ended {
    /// It finished by itself.
    Finished(Exit),
    /// The test cut its connections during `CUT_POINTS[.0]` (`.1` of them).
    Cut(usize, usize, Exit),
    /// The test killed it when its second change started.
    Killed(Exit),
}

impl Exit {
    /// Its status and first error line, for the list of cuts.
    fn outcome(&self) -> String {
        let status = self.status.map_or("killed".to_string(), |s| s.to_string());
        match self.stderr.lines().find(|l| l.starts_with("error")) {
            Some(error) => format!("{status} — {error}"),
            None => status,
        }
    }

    fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status
                .map_or("killed by the test".to_string(), |s| s.to_string()),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.describe()))
    }
}

/// The summaries of the `  → ` lines in a run's stderr.
fn changes(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(CHANGE_LINE))
        .map(str::to_string)
        .collect()
}

impl Operator {
    fn new() -> Self {
        Operator {
            home: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
            runs: 0,
        }
    }

    fn site_dir(&self) -> PathBuf {
        self.state.path().join("sites").join(HOSTNAME)
    }

    /// `pdsup up` through the proxy, with the harness's sources (plain progress:
    /// stderr is a file).
    fn up_args(&self, proxy: &CutProxy, extra: &[&str]) -> Vec<String> {
        let mut args = strings(&["up", &format!("root@127.0.0.1:{}", proxy.port)]);
        args.extend(strings(&[
            "--state-dir",
            &self.state.path().display().to_string(),
        ]));
        args.extend(from_docker_repo(
            harness_sources(&cache_dir()),
            "docker-apt",
        ));
        args.extend(caddy_args());
        args.extend(strings(&["-i", &ssh_key().display().to_string()]));
        args.extend(strings(extra));
        args
    }

    fn spawn(&mut self, args: &[String]) -> Running {
        self.runs += 1;
        let stdout = self.logs.path().join(format!("run{}.stdout", self.runs));
        let stderr = self.logs.path().join(format!("run{}.stderr", self.runs));
        let child = Command::new(env!("CARGO_BIN_EXE_pdsup"))
            .env("HOME", self.home.path())
            .env("XDG_DATA_HOME", self.home.path().join(".local/share"))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("PDSUP_SSH_PASSPHRASE")
            .env_remove("PDSUP_STATE_DIR")
            .env_remove("PDSUP_HOSTNAME")
            .env_remove("RUST_LOG")
            .args(args)
            .stdin(Stdio::null())
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

    /// `pds.env`'s secret lines, exactly as written; `None` before it exists.
    fn secret_lines(&self) -> Option<BTreeMap<String, String>> {
        let text = fs::read_to_string(self.site_dir().join("pds.env")).ok()?;
        Some(
            text.lines()
                .filter_map(|l| {
                    let key = l.split_once('=')?.0.trim();
                    SECRET_KEYS
                        .contains(&key)
                        .then(|| (key.to_string(), l.to_string()))
                })
                .collect(),
        )
    }

    fn site_toml(&self) -> toml::Table {
        let text = fs::read_to_string(self.site_dir().join("site.toml")).expect("read site.toml");
        toml::from_str(&text).expect("site.toml parses")
    }

    fn save_site_toml(&self, site: &toml::Table) {
        fs::write(
            self.site_dir().join("site.toml"),
            toml::to_string(site).unwrap(),
        )
        .expect("write site.toml");
    }
}

/// `site` as a run cut off just after `createAccount` was sent leaves it: an
/// intent, no DID.
fn as_if_cut_after_create_account(site: &toml::Table) -> toml::Table {
    let mut site = site.clone();
    site.remove("account_did");
    let mut intent = toml::Table::new();
    intent.insert("handle".into(), FULL_HANDLE.into());
    intent.insert("email".into(), EMAIL.into());
    site.insert("account_intent".into(), intent.into());
    site
}

// ---------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------

#[test]
fn every_change_boundary_and_cut_of_a_fresh_run_converges_to_one_identity() {
    require_e2e();
    let started = Instant::now();
    let d = Droplet::start("bookworm");
    let proxy = CutProxy::start(SocketAddr::from(([127, 0, 0, 1], d.ssh_port)));
    let mut op = Operator::new();
    let args = op.up_args(&proxy, &[]);
    eprintln!("$ pdsup {}", args.join(" "));

    let mut kill_points: Vec<String> = Vec::new();
    let mut cuts: Vec<String> = Vec::new();
    let mut cut_done = [false; CUT_POINTS.len()];
    let mut secrets: Option<BTreeMap<String, String>> = None;
    // How many changes a run may finish before it is killed: 1, deeper when
    // runs keep starting with the same change (see the module doc).
    let mut depth = 1;
    let mut last_first: Option<String> = None;
    // The cut the last run made, to note what the run after it did.
    let mut after_cut: Option<usize> = None;

    let check_secrets = |op: &Operator,
                         secrets: &mut Option<BTreeMap<String, String>>,
                         after: &str| {
        match (op.secret_lines(), &*secrets) {
            (Some(now), None) => {
                assert_eq!(
                    now.len(),
                    SECRET_KEYS.len(),
                    "pds.env lacks a secret: {now:?}"
                );
                *secrets = Some(now);
            }
            (Some(now), Some(first)) => {
                assert!(
                    &now == first,
                    "the secrets in pds.env changed after {after}"
                )
            }
            (None, Some(_)) => panic!("pds.env disappeared after {after}"),
            (None, None) => {}
        }
    };

    loop {
        assert!(
            op.runs < MAX_RUNS,
            "{MAX_RUNS} runs and the walk has not ended"
        );
        let mut run = op.spawn(&args);
        let ended = loop {
            if let Some(status) = run.exited() {
                break Ended::Finished(run.ended(Some(status)));
            }
            let seen = run.changes_so_far();
            // A long change among the first depth + 1, still to be cut: cut it.
            let target = seen.iter().take(depth + 1).find_map(|c| {
                (0..CUT_POINTS.len()).find(|i| c.starts_with(CUT_POINTS[*i].0) && !cut_done[*i])
            });
            if let Some(i) = target {
                std::thread::sleep(CUT_POINTS[i].1);
                let connections = proxy.cut();
                break Ended::Cut(i, connections, run.wait());
            }
            if seen.len() > depth {
                break Ended::Killed(run.kill());
            }
            run.check_time();
            std::thread::sleep(Duration::from_millis(10));
        };
        match ended {
            Ended::Finished(ended) => {
                // Finished by itself: the last boundary is behind us.
                assert!(
                    ended.ok(),
                    "run {} after the kill points {kill_points:#?}\nand cuts {cuts:#?}\nfailed:\n{}",
                    op.runs,
                    ended.describe()
                );
                let done = changes(&ended.stderr);
                if let (Some(i), Some(first)) = (after_cut.take(), done.first()) {
                    cuts[i].push_str(&format!("; the next run began with {first:?}"));
                }
                eprintln!("run {}: finished ({} change(s))", op.runs, done.len());
                check_secrets(&op, &mut secrets, "the last walk run");
                break;
            }
            Ended::Cut(i, connections, ended) => {
                let (prefix, delay) = CUT_POINTS[i];
                cut_done[i] = true;
                let what = format!(
                    "{prefix} (+{delay:?}, {connections} connection(s) cut): {}",
                    ended.outcome()
                );
                eprintln!("run {}: cut during {what}", op.runs);
                check_secrets(&op, &mut secrets, &format!("the cut during {prefix:?}"));
                cuts.push(what);
                after_cut = Some(cuts.len() - 1);
            }
            Ended::Killed(ended) => {
                let done = changes(&ended.stderr);
                if let Some(i) = after_cut.take() {
                    cuts[i].push_str(&format!("; the next run began with {:?}", done[0]));
                }
                let point = format!("{} | then {}", done[depth - 1], done[depth]);
                eprintln!("run {}: killed after {:?}", op.runs, done[depth - 1]);
                check_secrets(&op, &mut secrets, &point);
                // A change that is done is not planned again, but a group of
                // changes whose first leaves no fact behind (Docker's repository:
                // stage the key, check, install) is planned whole again: the
                // next run is then killed one change deeper. Not for ever.
                if last_first.as_deref() == Some(done[0].as_str()) {
                    depth += 1;
                    assert!(
                        depth <= MAX_DEPTH,
                        "no progress: {:?} came first in {depth} runs in a row:\n{}",
                        done[0],
                        ended.describe()
                    );
                } else {
                    depth = 1;
                }
                last_first = Some(done[0].clone());
                kill_points.push(point);
            }
        }
    }

    // A normal run converges: the PDS answers, one account, the DID site.toml has.
    let converged = op
        .spawn(&[args.clone(), strings(&["--json"])].concat())
        .wait();
    assert!(
        converged.ok(),
        "the run after the walk:\n{}",
        converged.describe()
    );
    let report = converged.json();
    let health = d.ssh_ok("root", "curl -fsS http://127.0.0.1:3000/xrpc/_health");
    assert!(health.contains("\"version\""), "{health}");
    let repos = d.ssh_ok(
        "root",
        "curl -fsS http://127.0.0.1:3000/xrpc/com.atproto.sync.listRepos",
    );
    let repos: Value = serde_json::from_str(&repos).unwrap();
    let dids: Vec<&str> = repos["repos"]
        .as_array()
        .unwrap_or_else(|| panic!("listRepos answered {repos}"))
        .iter()
        .filter_map(|r| r["did"].as_str())
        .collect();
    assert_eq!(dids.len(), 1, "not exactly one account: {repos}");
    let site = op.site_toml();
    assert_eq!(
        site.get("account_did").and_then(|v| v.as_str()),
        Some(dids[0]),
        "site.toml records another DID: {site:#?}"
    );
    assert!(
        site.get("account_intent").is_none(),
        "an account intent is left in site.toml: {site:#?}"
    );
    assert_eq!(report["account"]["did"], dids[0], "{report}");
    check_secrets(&op, &mut secrets, "the converging run");

    // And the run after it changes nothing.
    let third = op
        .spawn(&[args.clone(), strings(&["--json"])].concat())
        .wait();
    assert!(third.ok(), "the no-op run:\n{}", third.describe());
    assert_eq!(third.json()["changed"], false, "{}", third.stdout);
    check_secrets(&op, &mut secrets, "the no-op run");

    // The state a kill just after `createAccount` was sent leaves behind (the
    // cut above may or may not have landed there): the next run finds the
    // account, records its DID and says how to set the password it never showed.
    let did = dids[0].to_string();
    op.save_site_toml(&as_if_cut_after_create_account(&site));
    let found = op
        .spawn(&[args.clone(), strings(&["--json"])].concat())
        .wait();
    assert!(
        found.ok(),
        "the run after the intent:\n{}",
        found.describe()
    );
    let report = found.json();
    let account = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "account")
        .unwrap_or_else(|| panic!("no account step: {report}"));
    let notes = account["notes"].to_string();
    for needle in ["password was never shown", "updateAccountPassword", &did] {
        assert!(
            notes.contains(needle),
            "{needle:?} not in the notes: {account}"
        );
    }
    assert_eq!(report["account"]["did"], did.as_str(), "{report}");
    assert!(report["account"]["password"].is_null(), "{report}");
    let recorded = op.site_toml();
    assert_eq!(
        recorded.get("account_did").and_then(|v| v.as_str()),
        Some(did.as_str())
    );
    assert!(recorded.get("account_intent").is_none(), "{recorded:#?}");

    // The droplet loses its PDS data: neither the recorded DID nor an intent
    // lets a run start the PDS on the empty data dir or create a second account.
    d.ssh_ok(
        "root",
        "curl -fsS -X DELETE 'http://127.0.0.1:4646/v1/job/pds?purge=true' >/dev/null; \
         for i in $(seq 60); do docker ps -q --filter name=pds- | grep -q . || break; sleep 1; done; \
         find /srv/nomad/pds -mindepth 1 -delete",
    );
    for (what, site) in [
        ("the recorded DID", recorded.clone()),
        ("an intent", as_if_cut_after_create_account(&recorded)),
    ] {
        op.save_site_toml(&site);
        let blocked = op.spawn(&args).wait();
        assert_eq!(
            blocked.status.and_then(|s| s.code()),
            Some(i32::from(pdsup::error::ErrorKind::Blocked.exit_code())),
            "a site with {what} and no data:\n{}",
            blocked.describe()
        );
        assert!(
            blocked
                .stderr
                .contains("Restore /srv/nomad/pds from a backup"),
            "{}",
            blocked.describe()
        );
        assert!(
            !changes(&blocked.stderr)
                .iter()
                .any(|c| c.starts_with("submit the pds job")),
            "the PDS was started on empty data:\n{}",
            blocked.describe()
        );
        assert_eq!(op.site_toml(), site, "site.toml changed");
        let left = d.ssh_ok("root", "ls -A /srv/nomad/pds");
        assert!(
            left.trim().is_empty(),
            "the empty data dir was written to: {left}"
        );
    }

    let missed: Vec<&str> = CUT_POINTS
        .iter()
        .zip(cut_done)
        .filter(|(_, done)| !done)
        .map(|((prefix, _), _)| *prefix)
        .collect();
    eprintln!("kill points ({}):", kill_points.len());
    for p in &kill_points {
        eprintln!("  {p}");
    }
    eprintln!("connection cuts ({}):", cuts.len());
    for c in &cuts {
        eprintln!("  {c}");
    }
    assert!(
        missed.is_empty(),
        "a fresh run never started with these long changes, so they were not cut: {missed:?}"
    );
    println!(
        "fault tier: {} kill points, {} connection cuts, {} pdsup runs, {:.0?}",
        kill_points.len(),
        cuts.len(),
        op.runs,
        started.elapsed()
    );
}
