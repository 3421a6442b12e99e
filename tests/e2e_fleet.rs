//! End-to-end: `pdsup fleet` against three droplets in a box (scripts/harness/).
//!
//! A workshop of three sites with two participants each. One droplet is
//! unreachable (its sshd stopped) on the first run: the other two converge,
//! and the table names the failed one and why. Once it is back, a re-run
//! converges only it. Every participant's password from the handout logs in
//! (`createSession`), no password is in a log, `fleet backup` leaves a
//! verified archive in each site's state directory, and `fleet down` stops the
//! jobs and keeps the data. One test, so the three droplets are made once.
//!
//! Prepare the harness as for tests/e2e.rs; this fails, never skips, when it is
//! missing. Run with `cargo test --test e2e_fleet -- --nocapture`.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Upper bound for one `pdsup fleet` run: three sites on a loaded 2-core machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(1500);
const SITES: [&str; 3] = ["t1.pds.test", "t2.pds.test", "t3.pds.test"];
const PARTICIPANTS: [(&str, &str); 2] = [("alice", "Alice"), ("bob", "Bob")];

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

struct Organiser {
    home: tempfile::TempDir,
    state: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Organiser {
    fn new() -> Self {
        Organiser {
            home: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn fleet_file(&self) -> PathBuf {
        self.work.path().join("workshop.toml")
    }

    fn out(&self) -> PathBuf {
        self.work.path().join("workshop.out")
    }

    fn run(&self, args: &[&str]) -> Run {
        let n = fs::read_dir(self.work.path()).unwrap().count();
        let stdout = self.work.path().join(format!("run{n}.stdout"));
        let stderr = self.work.path().join(format!("run{n}.stderr"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pdsup"));
        cmd.env("HOME", self.home.path())
            .env("XDG_DATA_HOME", self.home.path().join(".local/share"))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("PDSUP_STATE_DIR")
            .env_remove("RUST_LOG")
            .args(args)
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("-i")
            .arg(ssh_key())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        eprintln!("$ pdsup {}", args.join(" "));
        let started = Instant::now();
        let mut child = cmd.spawn().expect("cannot run pdsup");
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > RUN_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pdsup did not finish within {}s; stderr:\n{}",
                    RUN_TIMEOUT.as_secs(),
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!("  ({:.0?}, {status})", started.elapsed());
        Run {
            code: status.code(),
            stdout: fs::read_to_string(&stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&stderr).unwrap_or_default(),
        }
    }

    /// The fleet file: the harness's sources as shared settings, Caddy with
    /// Pebble, and one site per droplet with two participants.
    fn write_fleet(&self, droplets: &[Droplet]) {
        let c = cache_dir();
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let mut text = format!(
            "[settings]\nemail = \"organiser@example.com\"\nhandle = \"organiser\"\n\
             docker_source = \"distro\"\nnomad_release_url = {}\nnomad_release_key = {}\n\
             pds_image_archive = {}\nplc_url = {}\npds_env = [\"PDS_CRAWLERS=\"]\n\
             proxy = \"caddy\"\nacme_ca = {}\nacme_ca_root = {}\nconfirm_email = true\n",
            q(&mirror_url()),
            q(&c.join("mirror/test-release-key.asc").display().to_string()),
            q(&c.join("pds-image.tar").display().to_string()),
            q(&format!("http://{GATEWAY}:2582")),
            q(&pebble_directory_url()),
            q(&pebble_cert().display().to_string()),
        );
        for (site, d) in SITES.iter().zip(droplets) {
            text.push_str(&format!(
                "\n[[sites]]\nhostname = \"{site}\"\ndest = \"root@127.0.0.1:{}\"\n",
                d.ssh_port
            ));
            for (handle, name) in PARTICIPANTS {
                text.push_str(&format!(
                    "[[sites.participants]]\nhandle = \"{handle}\"\nemail = \"{handle}@example.com\"\ndisplay_name = \"{name}\"\n"
                ));
            }
        }
        fs::write(self.fleet_file(), text).unwrap();
    }

    /// The organiser's CSV: (site, handle, password, did) per account.
    fn accounts(&self) -> Vec<(String, String, String, String)> {
        let path = self.out().join("handouts/accounts.csv");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
        let text = fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("site,handle,email,display_name,password,pds_url,did,how_to_log_in")
        );
        lines
            .map(|l| {
                // No field before `how_to_log_in` needs quoting here.
                let f: Vec<&str> = l.splitn(8, ',').collect();
                (f[0].into(), f[1].into(), f[4].into(), f[6].into())
            })
            .collect()
    }
}

/// The table line of `site` in a `fleet` run's output.
fn table_line<'a>(run: &'a Run, site: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.starts_with(site))
        .unwrap_or_else(|| panic!("no line for {site} in the table:\n{}", run.describe()))
}

/// A POST to the PDS on the droplet's loopback, the body on stdin.
fn xrpc_post(d: &Droplet, method: &str, body: &Value) -> Value {
    let out = d.ssh_with_stdin(
        "root",
        &format!(
            "curl -sS -X POST -H 'content-type: application/json' --data-binary @- \
             http://127.0.0.1:3000/xrpc/{method}"
        ),
        body.to_string().as_bytes(),
    );
    let text = stdout(&out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} ({e}): {}", describe(&out)))
}

fn xrpc_get(d: &Droplet, path: &str) -> Value {
    let text = d.ssh_ok(
        "root",
        &format!("curl -sS 'http://127.0.0.1:3000/xrpc/{path}'"),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} ({e}): {text}"))
}

fn pds_allocs(d: &Droplet) -> String {
    d.ssh_ok(
        "root",
        "curl -fsS http://127.0.0.1:4646/v1/job/pds/allocations | tr ',' '\\n' | grep '\"ID\"' | sort",
    )
}

/// Every password of the handouts logs in on its site, and its display name is set.
fn assert_logins(droplets: &[Droplet], accounts: &[(String, String, String, String)]) {
    for (site, handle, password, did) in accounts {
        let d = &droplets[SITES.iter().position(|s| s == site).unwrap()];
        assert!(password.len() >= 16, "{handle}: password {password:?}");
        let session = xrpc_post(
            d,
            "com.atproto.server.createSession",
            &serde_json::json!({"identifier": handle, "password": password}),
        );
        assert_eq!(
            session["did"].as_str(),
            Some(did.as_str()),
            "{handle}: {session}"
        );
        let profile = xrpc_get(
            d,
            &format!(
                "com.atproto.repo.getRecord?repo={did}&collection=app.bsky.actor.profile&rkey=self"
            ),
        );
        let label = handle.split('.').next().unwrap();
        let name = PARTICIPANTS.iter().find(|(h, _)| *h == label).unwrap().1;
        assert_eq!(
            profile["value"]["displayName"].as_str(),
            Some(name),
            "{profile}"
        );
    }
}

#[track_caller]
fn assert_no_passwords(accounts: &[(String, String, String, String)], text: &str, what: &str) {
    for (_, handle, password, _) in accounts {
        assert!(
            !text.contains(password.as_str()),
            "{what} holds {handle}'s password"
        );
    }
}

fn logs_text(o: &Organiser) -> String {
    let mut all = String::new();
    for site in SITES {
        all.push_str(
            &fs::read_to_string(o.out().join(format!("logs/{site}.log"))).unwrap_or_default(),
        );
    }
    all
}

#[test]
fn a_fleet_converges_what_it_reaches_then_the_site_that_came_back_then_goes_down() {
    require_e2e();
    let tier = Instant::now();
    let droplets: Vec<Droplet> = (0..3).map(|_| Droplet::start("bookworm")).collect();
    let o = Organiser::new();
    o.write_fleet(&droplets);
    let file = o.fleet_file().display().to_string();

    // A broken fleet file is refused, every problem with its line, before any droplet is contacted.
    let bad = o.work.path().join("bad.toml");
    fs::write(&bad, "[[sites]]\nhostname = \"x.pds.test\"\n").unwrap();
    let refused = o.run(&["fleet", "up", &bad.display().to_string()]);
    assert_eq!(refused.code, Some(2), "{}", refused.describe());
    assert!(
        refused.stderr.contains("bad.toml:1: this site has no dest"),
        "{}",
        refused.describe()
    );

    // The plan contacts every droplet and changes nothing, nor the local state.
    let plan = o.run(&["fleet", "plan", &file]);
    assert_eq!(plan.code, Some(0), "{}", plan.describe());
    for site in SITES {
        assert!(
            table_line(&plan, site).contains("change(s) planned, 2 account(s) to create"),
            "{}",
            plan.describe()
        );
        let dir = o.state.path().join("sites").join(site);
        assert!(
            !dir.join("site.toml").exists(),
            "{site}: the plan saved site.toml"
        );
    }

    // The third droplet is unreachable: its sshd is stopped.
    let down = &droplets[2];
    let out = down.exec("systemctl stop ssh.service; systemctl stop ssh.socket 2>/dev/null; systemctl is-active ssh.service || true");
    eprintln!("{}", describe(&out));

    let first = o.run(&["fleet", "up", &file, "--parallel", "3"]);
    assert_eq!(
        first.code,
        Some(1),
        "one site failed: exit 1\n{}",
        first.describe()
    );
    for site in &SITES[..2] {
        let line = table_line(&first, site);
        assert!(
            line.contains("2 new, 0 had") && line.contains("converged"),
            "{line}\n{}",
            first.describe()
        );
    }
    let failed = table_line(&first, SITES[2]);
    assert!(
        failed.contains("FAILED: connecting to 127.0.0.1")
            && failed.contains("logs/t3.pds.test.log"),
        "{failed}\n{}",
        first.describe()
    );
    assert!(
        first.stdout.contains("1 of 3 sites failed"),
        "{}",
        first.describe()
    );
    assert!(
        first.stderr.contains("1 of 3 sites failed: t3.pds.test"),
        "{}",
        first.describe()
    );
    // Each site keeps its state exactly as `up` makes it.
    for site in &SITES[..2] {
        let dir = o.state.path().join("sites").join(site);
        for f in ["site.toml", "pds.env", "known_hosts", "participants.toml"] {
            assert!(dir.join(f).is_file(), "{site}: no {f}");
        }
        let page = o.out().join(format!("handouts/{site}/alice.html"));
        let mode = fs::metadata(&page).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", page.display());
        let first_account = o.out().join(format!("handouts/{site}/first-account.txt"));
        assert!(fs::read_to_string(&first_account)
            .unwrap()
            .contains(&format!("organiser.{site}")));
    }
    let accounts = o.accounts();
    assert_eq!(accounts.len(), 4, "{accounts:?}");
    // confirm_email: the organiser's and every participant's address is confirmed.
    for d in &droplets[..2] {
        let confirmed = d.ssh_ok(
            "root",
            "sqlite3 /srv/nomad/pds/account.sqlite \
             \"select count(*) from account where emailConfirmedAt is not null and emailConfirmedAt != ''\"",
        );
        assert_eq!(confirmed.trim(), "3", "confirmed addresses");
    }
    assert_logins(&droplets, &accounts);
    assert_no_passwords(&accounts, &logs_text(&o), "a site's log");
    assert_no_passwords(&accounts, &first.stderr, "stderr");
    assert_no_passwords(&accounts, &first.stdout, "the table");
    let allocs_before: Vec<String> = droplets[..2].iter().map(pds_allocs).collect();

    // A site pdsup never reached has nothing of pdsup's to take down: `fleet
    // down` says so and succeeds, without contacting it.
    let never = o.run(&["fleet", "down", &file, "--only", SITES[2]]);
    assert_eq!(never.code, Some(0), "{}", never.describe());
    assert!(
        table_line(&never, SITES[2]).contains("nothing deployed: pdsup never reached it"),
        "{}",
        never.describe()
    );

    // It is back: the re-run converges it and finds the others in place.
    down.exec("systemctl start ssh.service");

    // Its first run stops before Nomad (its release cannot be fetched):
    // `fleet down` finds nothing deployed and succeeds; `fleet status` fails,
    // saying what to run.
    let text = fs::read_to_string(o.fleet_file()).unwrap();
    let t3_dest = format!("dest = \"root@127.0.0.1:{}\"\n", down.ssh_port);
    let broken_text = text.replace(
        &t3_dest,
        &format!("{t3_dest}nomad_release_url = \"http://127.0.0.1:9\"\n"),
    );
    assert_ne!(broken_text, text);
    let broken = o.work.path().join("broken.toml");
    fs::write(&broken, broken_text).unwrap();
    let stopped = o.run(&[
        "fleet",
        "up",
        &broken.display().to_string(),
        "--only",
        SITES[2],
    ]);
    assert_eq!(stopped.code, Some(1), "{}", stopped.describe());
    down.ssh_ok("root", "test ! -e /usr/local/bin/nomad");
    let nothing = o.run(&["fleet", "down", &file, "--only", SITES[2]]);
    assert_eq!(nothing.code, Some(0), "{}", nothing.describe());
    assert!(
        table_line(&nothing, SITES[2]).contains("nothing deployed: Nomad is not installed"),
        "{}",
        nothing.describe()
    );
    let unfinished = o.run(&["fleet", "status", &file, "--only", SITES[2]]);
    assert_eq!(unfinished.code, Some(1), "{}", unfinished.describe());
    let line = table_line(&unfinished, SITES[2]);
    assert!(
        line.contains("FAILED: nothing deployed: Nomad is not installed")
            && line.contains("pdsup fleet up FILE --only t3.pds.test"),
        "{}",
        unfinished.describe()
    );
    let second = o.run(&["fleet", "up", &file, "--json"]);
    assert_eq!(second.code, Some(0), "{}", second.describe());
    let report: Value = serde_json::from_str(second.stdout.trim()).unwrap();
    let sites = report["sites"].as_array().unwrap();
    for (i, site) in sites.iter().enumerate() {
        let result = site["result"].as_str().unwrap_or_else(|| panic!("{site}"));
        if i < 2 {
            assert!(result.starts_with("unchanged"), "{site}");
            assert_eq!(
                (
                    site["accounts_created"].as_u64(),
                    site["accounts_existing"].as_u64()
                ),
                (Some(0), Some(2)),
                "{site}"
            );
        } else {
            assert_eq!(result, "converged", "{site}");
            assert_eq!(site["accounts_created"].as_u64(), Some(2), "{site}");
        }
    }
    let after: Vec<String> = droplets[..2].iter().map(pds_allocs).collect();
    assert_eq!(
        allocs_before, after,
        "the converged sites' PDS allocations were replaced"
    );
    let all = o.accounts();
    assert_eq!(all.len(), 6, "{all:?}");
    // The handouts of the first run are still right: the same passwords.
    for a in &accounts {
        assert!(
            all.contains(a),
            "{a:?} changed in the second run's handouts"
        );
    }
    assert_logins(&droplets, &all);
    assert_no_passwords(&all, &logs_text(&o), "a site's log");

    // Status: every droplet answers and every PDS is healthy.
    let status = o.run(&["fleet", "status", &file]);
    assert_eq!(status.code, Some(0), "{}", status.describe());
    for site in SITES {
        assert!(
            table_line(&status, site).contains("the PDS is healthy"),
            "{}",
            status.describe()
        );
    }

    // Backup: each site's archive in its own state directory, as `pdsup
    // backup` puts it, with every account, and it verifies.
    let passphrase_file = o.work.path().join("passphrase");
    fs::write(&passphrase_file, "a workshop's passphrase\n").unwrap();
    let backup = o.run(&[
        "fleet",
        "backup",
        &file,
        "--passphrase-file",
        &passphrase_file.display().to_string(),
    ]);
    assert_eq!(backup.code, Some(0), "{}", backup.describe());
    assert!(
        backup.stdout.contains("SIZE  ACCOUNTS  ARCHIVE"),
        "{}",
        backup.describe()
    );
    for site in SITES {
        let backups = o.state.path().join("sites").join(site).join("backups");
        let archives: Vec<PathBuf> = fs::read_dir(&backups)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".tar.gz"))
            .collect();
        assert_eq!(archives.len(), 1, "{site}: {archives:?}");
        let line = table_line(&backup, site);
        assert!(
            line.contains(&archives[0].display().to_string()),
            "{line}\n{}",
            backup.describe()
        );
        let (manifest, sealed) = pdsup::ops::backup::read_archive(&archives[0], true)
            .unwrap_or_else(|e| panic!("{site}: {e:#}"));
        assert_eq!(manifest.hostname, site);
        // The organiser's account and the two participants'.
        assert_eq!(
            manifest.accounts.len(),
            3,
            "{site}: {:?}",
            manifest.accounts
        );
        let state = pdsup::ops::backup::open_site_state(
            &sealed,
            &pdsup::secret::Secret::new("a workshop's passphrase".to_string()),
        )
        .unwrap();
        let dir = o.state.path().join("sites").join(site);
        assert_eq!(
            state.pds_env,
            fs::read_to_string(dir.join("pds.env")).unwrap()
        );
    }

    // Down: the jobs stop, the data stays.
    let gone = o.run(&["fleet", "down", &file]);
    assert_eq!(gone.code, Some(0), "{}", gone.describe());
    for (site, d) in SITES.iter().zip(&droplets) {
        assert!(
            table_line(&gone, site).contains("stopped pds"),
            "{}",
            gone.describe()
        );
        let job: Value =
            serde_json::from_str(&d.ssh_ok("root", "curl -fsS http://127.0.0.1:4646/v1/job/pds"))
                .unwrap();
        assert_eq!(job["Stop"], true, "{site}: {job}");
        d.ssh_ok("root", "test -s /srv/nomad/pds/account.sqlite");
    }
    eprintln!("e2e_fleet tier: {:.0?}", tier.elapsed());
}
