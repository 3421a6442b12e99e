//! End-to-end, day 2: `status`, `account`, `invite` and `logs` on ONE converged
//! droplet (Caddy with ACME from Pebble, the PDS from the harness's image),
//! each result checked against what the PDS says through XRPC directly.
//!
//! Prepare the harness as for tests/e2e.rs; this tier fails, never skips, when
//! it is missing. Run with `cargo test --test e2e_day2 -- --nocapture`.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use pdsup::error::ErrorKind;
use serde_json::Value;
use support::*;

/// The operator's laptop: a HOME and a state directory of its own.
struct Laptop {
    home: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Laptop {
    fn new() -> Self {
        Laptop {
            home: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// `pdsup ARGS --state-dir … -i KEY` with nothing from this machine's
    /// environment, stdin closed (no terminal: nothing can be confirmed by hand).
    fn pdsup(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        eprintln!("$ pdsup {}", args.join(" "));
        let out = Command::new(env!("CARGO_BIN_EXE_pdsup"))
            .env("HOME", self.home.path())
            .env("XDG_DATA_HOME", self.home.path().join(".local/share"))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("PDSUP_STATE_DIR")
            .env_remove("PDSUP_HOSTNAME")
            .env_remove("PDSUP_DEST")
            .env_remove("RUST_LOG")
            .args(args)
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("-i")
            .arg(ssh_key())
            .stdin(Stdio::null())
            .output()
            .expect("run pdsup");
        eprintln!("  ({:.0?}, {})", started.elapsed(), out.status);
        out
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.pdsup(args);
        assert!(out.status.success(), "pdsup {args:?}:\n{}", describe(&out));
        stdout(&out)
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all);
        one_json(&text)
    }

    fn admin_password(&self) -> String {
        let env = parse_env(
            &fs::read_to_string(
                self.state
                    .path()
                    .join("sites")
                    .join(HOSTNAME)
                    .join("pds.env"),
            )
            .expect("read pds.env"),
        );
        env["PDS_ADMIN_PASSWORD"].clone()
    }
}

#[track_caller]
fn one_json(text: &str) -> Value {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{text}"))
}

/// An XRPC call on the droplet, straight to the PDS's loopback port (no
/// pdsup involved): `curl ARGS URL`, the admin password on stdin when given.
fn xrpc(d: &Droplet, admin: Option<&str>, curl_args: &str, method_and_query: &str) -> Value {
    let auth = if admin.is_some() { "-K -" } else { "" };
    let cmd =
        format!("curl -sS {auth} {curl_args} 'http://127.0.0.1:3000/xrpc/{method_and_query}'");
    let input = admin
        .map(|p| format!("user = \"admin:{p}\"\n"))
        .unwrap_or_default();
    let out = d.ssh_with_stdin("root", &cmd, input.as_bytes());
    let text = stdout(&out);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{cmd}: ({e}) {text}"))
}

/// Every repository through `listRepos`, paged here independently of pdsup.
fn all_repos(d: &Droplet) -> Vec<Value> {
    let mut repos = Vec::new();
    let mut cursor = String::new();
    loop {
        let query = if cursor.is_empty() {
            "com.atproto.sync.listRepos?limit=50".to_string()
        } else {
            format!("com.atproto.sync.listRepos?limit=50&cursor={cursor}")
        };
        let page = xrpc(d, None, "", &query);
        let items = page["repos"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return repos;
        }
        repos.extend(items);
        match page["cursor"].as_str() {
            Some(c) if c != cursor => cursor = c.to_string(),
            _ => return repos,
        }
    }
}

fn repo<'a>(repos: &'a [Value], did: &str) -> Option<&'a Value> {
    repos.iter().find(|r| r["did"] == did)
}

/// Accounts made straight through XRPC on the droplet, with one invite code
/// for all; each from another forwarded address so the PDS's per-address
/// limit on new accounts does not apply to the test's bulk.
const BULK: &str = r#"set -e
read -r admin
api=http://127.0.0.1:3000/xrpc
code=$(curl -fsS -u "admin:$admin" -H 'Content-Type: application/json' -d '{"useCount":500}' $api/com.atproto.server.createInviteCode | sed 's/.*"code":"\([^"]*\)".*/\1/')
i=0
while [ $i -lt "$1" ]; do
  i=$((i+1))
  curl -fsS -o /dev/null -H 'Content-Type: application/json' -H "X-Forwarded-For: 10.77.$((i/250)).$((i%250+1))" \
    -d "{\"email\":\"bulk$i@example.com\",\"handle\":\"bulk$i.pds.test\",\"password\":\"bulk-password-$i\",\"inviteCode\":\"$code\"}" \
    $api/com.atproto.server.createAccount || { echo "account $i failed" >&2; exit 1; }
done
"#;

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

fn not_ok(report: &Value) -> BTreeSet<String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["level"] != "ok")
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `status --json` that must fail with `Unhealthy`; its report.
#[track_caller]
fn failing_status(laptop: &Laptop) -> Value {
    let out = laptop.pdsup(&["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(ErrorKind::Unhealthy.exit_code())),
        "status must fail as unhealthy:\n{}",
        describe(&out)
    );
    let report = one_json(&stdout(&out));
    assert_eq!(report["ok"], false, "{report}");
    report
}

#[test]
fn day_two_on_one_converged_droplet() {
    require_e2e();
    let tier = Instant::now();
    let d = Droplet::start("bookworm");
    let laptop = Laptop::new();
    let dest = format!("root@127.0.0.1:{}", d.ssh_port);
    let mut up: Vec<String> = vec!["up".into(), dest.clone(), "--accept-new-host-key".into()];
    up.extend(harness_sources(&cache_dir()));
    up.extend(caddy_args());
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    laptop.ok(&up);
    let admin = laptop.admin_password();

    // A converged site is green, every check of it, and says so in the exit code.
    let report = laptop.json(&["status"]);
    assert_eq!(report["ok"], true, "{report}");
    assert!(not_ok(&report).is_empty(), "{report}");
    for name in [
        "droplet",
        "docker",
        "nomad",
        "proxy",
        "pds job",
        "pds",
        "https",
        "certificate",
        "disk",
        "accounts",
    ] {
        assert_eq!(check(&report, name)["level"], "ok", "{name}: {report}");
    }
    assert_eq!(
        check(&report, "accounts")["message"],
        "1 hosted",
        "{report}"
    );
    let text = laptop.ok(&["status"]);
    assert!(text.contains("OK   https"), "{text}");

    // More than one page of accounts, made through XRPC directly.
    let bulk = 101;
    d.ssh_ok("root", &format!("cat > /tmp/bulk.sh <<'EOF'\n{BULK}EOF"));
    let out = d.ssh_with_stdin(
        "root",
        &format!("sh /tmp/bulk.sh {bulk}"),
        format!("{admin}\n").as_bytes(),
    );
    assert!(out.status.success(), "bulk accounts:\n{}", describe(&out));

    // `account list` pages past 100 and lists what listRepos lists, no more, no less.
    let direct: BTreeSet<String> = all_repos(&d)
        .iter()
        .map(|r| r["did"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(direct.len(), bulk + 1, "{direct:?}");
    let listed = laptop.json(&["account", "list"]);
    let listed_dids: BTreeSet<String> = listed["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["did"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed["count"], bulk + 1, "{listed}");
    assert_eq!(listed_dids, direct);
    let bulk7 = listed["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["handle"] == "bulk7.pds.test")
        .unwrap_or_else(|| panic!("bulk7 is not listed: {listed}"));
    assert_eq!(bulk7["email"], "bulk7@example.com");

    // create: the account exists for the PDS, and the password shown logs in.
    let created = laptop.json(&["account", "create", "carol", "--email", "carol@example.com"]);
    let did = created["did"].as_str().expect("did").to_string();
    let password = created["password"].as_str().expect("password shown once");
    assert_eq!(
        xrpc(
            &d,
            None,
            "",
            "com.atproto.identity.resolveHandle?handle=carol.pds.test"
        )["did"],
        did.as_str()
    );
    let session = xrpc(
        &d,
        None,
        &format!(
            "-H 'Content-Type: application/json' -d '{{\"identifier\":\"carol.pds.test\",\"password\":\"{password}\"}}'"
        ),
        "com.atproto.server.createSession",
    );
    assert_eq!(session["did"], did.as_str(), "{session}");
    let dry = laptop.json(&[
        "account",
        "create",
        "dave",
        "--email",
        "dave@example.com",
        "--dry-run",
    ]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(
        xrpc(
            &d,
            None,
            "",
            "com.atproto.identity.resolveHandle?handle=dave.pds.test"
        )["error"],
        "InvalidRequest",
        "a dry run created dave"
    );

    // takedown: refused without --yes and without a terminal, nothing changed.
    let refused = laptop.pdsup(&["account", "takedown", "carol"]);
    assert_eq!(
        refused.status.code(),
        Some(i32::from(ErrorKind::BadInput.exit_code())),
        "{}",
        describe(&refused)
    );
    assert!(stderr(&refused).contains("--yes"), "{}", describe(&refused));
    let status = |d: &Droplet| {
        xrpc(
            d,
            Some(&admin),
            "",
            &format!("com.atproto.admin.getSubjectStatus?did={did}"),
        )
    };
    assert_ne!(status(&d)["takedown"]["applied"], true, "{}", status(&d));
    // ...and done with --yes: the PDS says the same.
    laptop.ok(&["account", "takedown", "carol", "--yes"]);
    assert_eq!(status(&d)["takedown"]["applied"], true, "{}", status(&d));
    let repos = all_repos(&d);
    let carol = repo(&repos, &did).expect("a taken-down repo is still listed");
    assert_eq!(carol["active"], false, "{carol}");
    assert_eq!(carol["status"], "takendown", "{carol}");
    let listed = laptop.json(&["account", "list"]);
    let carol_listed = listed["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["did"] == did.as_str())
        .expect("carol listed");
    assert_eq!(carol_listed["status"], "takendown", "{carol_listed}");
    laptop.ok(&["account", "untakedown", &did]);
    assert_ne!(status(&d)["takedown"]["applied"], true, "{}", status(&d));
    assert_eq!(repo(&all_repos(&d), &did).unwrap()["active"], true);

    // delete: gone for the PDS too.
    laptop.ok(&["account", "delete", "carol", "--yes"]);
    let repos = all_repos(&d);
    assert!(repo(&repos, &did).is_none(), "carol still listed");
    assert_eq!(repos.len(), bulk + 1);

    // invite: a code the PDS accepts for a new account.
    let invite = laptop.json(&["invite"]);
    let code = invite["codes"][0].as_str().expect("a code");
    let made = xrpc(
        &d,
        None,
        &format!(
            "-H 'Content-Type: application/json' -d '{{\"email\":\"erin@example.com\",\"handle\":\"erin.pds.test\",\"password\":\"erin-password-1\",\"inviteCode\":\"{code}\"}}'"
        ),
        "com.atproto.server.createAccount",
    );
    assert!(made["did"].as_str().is_some(), "{made}");

    // logs: the PDS's own lines (pino JSON, name "pds"), and the proxy's journal.
    let logs = laptop.ok(&["logs", "pds", "-n", "20"]);
    assert!(logs.contains("\"name\":\"pds\""), "{logs}");
    let json = laptop.json(&["logs", "-n", "5"]);
    assert_eq!(json["lines"].as_array().map(Vec::len), Some(5), "{json}");
    let proxy = laptop.ok(&["logs", "proxy", "-n", "50"]);
    assert!(proxy.contains("caddy"), "{proxy}");
    let nomad = laptop.ok(&["logs", "nomad", "--since", "1h"]);
    assert!(nomad.contains("nomad"), "{nomad}");

    // A nearly full disk under the PDS's data: status fails naming the disk.
    d.ssh_ok(
        "root",
        "mount -t tmpfs -o size=64m pdsup-test-full /srv/nomad/pds && fallocate -l 60m /srv/nomad/pds/filler",
    );
    let report = failing_status(&laptop);
    d.ssh_ok("root", "umount /srv/nomad/pds");
    assert_eq!(
        not_ok(&report),
        BTreeSet::from(["disk".to_string()]),
        "{report}"
    );
    assert!(
        check(&report, "disk")["message"]
            .as_str()
            .unwrap()
            .contains("nearly full"),
        "{report}"
    );

    // The PDS job stopped: status names it.
    d.ssh_ok(
        "root",
        "curl -fsS -X DELETE http://127.0.0.1:4646/v1/job/pds",
    );
    // Nomad stops the task after the job is deleted: wait until the PDS no
    // longer answers (under load its container takes a while to stop).
    d.ssh_ok(
        "root",
        "for _ in $(seq 120); do curl -fsS -o /dev/null http://127.0.0.1:3000/xrpc/_health 2>/dev/null || exit 0; sleep 0.5; done; \
         echo 'the PDS still answers 60 s after its job was deleted' >&2; exit 1",
    );
    let report = failing_status(&laptop);
    let job = check(&report, "pds job");
    assert_eq!(job["level"], "fail", "{report}");
    assert!(
        job["message"]
            .as_str()
            .unwrap()
            .contains("job pds is stopped"),
        "{report}"
    );
    assert_eq!(check(&report, "pds")["level"], "fail", "{report}");
    assert_eq!(check(&report, "docker")["level"], "ok", "{report}");
    assert_eq!(check(&report, "disk")["level"], "ok", "{report}");
    let text = laptop.pdsup(&["status"]);
    assert!(
        stdout(&text).contains("FAIL pds job"),
        "{}",
        describe(&text)
    );

    eprintln!("e2e_day2 tier: {:.0?}", tier.elapsed());
}
