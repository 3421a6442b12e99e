//! End-to-end: `pdsup backup` of a serving PDS and `pdsup restore` onto a new
//! droplet (new address, new host key), on the droplet-in-a-box harness.
//!
//! Droplet 1 is set up by `pdsup up`; two accounts get posts, a follow and an
//! image blob through the PDS's XRPC API (curl on the droplet, at the PDS's
//! loopback port); the backup runs while posts keep being written; droplet 1
//! is destroyed; the archive is restored onto droplet 2. The restored PDS must
//! serve the same DIDs at the manifest's repo heads, every record and blob
//! byte-identical, the old passwords must log in, and every database must pass
//! `PRAGMA integrity_check`. A post made after the restore is signed by the
//! same key: its commit verifies against the DID document in the PLC.
//! Droplet 1 keeps serving after the backup and takes one more post: given as
//! `--relay`, the restore must report it ahead (a relay desync) with the fix;
//! a relay at the backup's heads (droplet 2, given to the third restore) is not.
//!
//! Run with `cargo test --test e2e_backup -- --nocapture --test-threads=1`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};
use support::atproto::*;
use support::*;

const PASSPHRASE: &str = "correct horse battery staple";
const BOB: &str = "bob.pds.test";
const BOB_PASSWORD: &str = "bob-password-1234";

/// The operator's machine: a HOME and a state dir of its own.
struct Operator {
    home: tempfile::TempDir,
    state: tempfile::TempDir,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn assert_ok(&self, what: &str) -> Value {
        assert!(
            self.ok,
            "{what} failed:\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl Operator {
    fn new() -> Self {
        Operator {
            home: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn site_dir(&self) -> PathBuf {
        self.state.path().join("sites").join(HOSTNAME)
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pdsup"));
        cmd.env("HOME", self.home.path())
            .env("XDG_DATA_HOME", self.home.path().join(".local/share"))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("PDSUP_STATE_DIR")
            .env_remove("PDSUP_HOSTNAME")
            .env_remove("PDSUP_DEST")
            .env_remove("PDSUP_BACKUP_PASSPHRASE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .args(args);
        cmd
    }

    fn run(&self, args: &[String], env: &[(&str, &str)]) -> Run {
        let started = Instant::now();
        eprintln!("$ pdsup {}", args.join(" "));
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run pdsup");
        eprintln!("  ({:.0?}, {})", started.elapsed(), out.status);
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Flags for `up` and `restore`: the harness's sources, Caddy with Pebble.
    fn site_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--state-dir".into(),
            self.state.path().display().to_string(),
        ];
        args.extend(harness_sources(&cache_dir()));
        args.extend(caddy_args());
        args.extend(["-i".to_string(), ssh_key().display().to_string()]);
        args.push("--json".into());
        args
    }
}

fn root_dest(d: &Droplet) -> String {
    format!("root@127.0.0.1:{}", d.ssh_port)
}

/// An SSH tunnel from a local port to the PDS's loopback port on `d`: the
/// droplet's PDS as this machine sees a relay (it serves the same sync XRPC).
struct PdsTunnel {
    child: std::process::Child,
    url: String,
}

impl PdsTunnel {
    fn open(d: &Droplet) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // OpenSSH reads options after the destination too.
        let child = d
            .ssh_command("root")
            .args([
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("127.0.0.1:{port}:127.0.0.1:3000"),
            ])
            .spawn()
            .unwrap();
        // Owned by the tunnel from here: a panic below stops ssh (Drop).
        let tunnel = PdsTunnel {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let health = format!("{}/xrpc/_health", tunnel.url);
        for _ in 0..60 {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &health])
                .status()
                .unwrap()
                .success();
            if ok {
                return tunnel;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!("the tunnel to {}'s PDS did not come up", d.name);
    }
}

impl Drop for PdsTunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_backup_taken_while_the_pds_serves_restores_onto_a_new_droplet() {
    require_e2e();
    let tier = Instant::now();
    let op = Operator::new();
    let d1 = Droplet::start("bookworm");

    // Droplet 1: `pdsup up`, then a second account, posts, a follow and images.
    let mut up = vec!["up".to_string(), root_dest(&d1)];
    up.extend(op.site_args());
    let report = op.run(&up, &[]).assert_ok("pdsup up on droplet 1");
    let alice_did = report["account"]["did"].as_str().unwrap().to_string();
    let alice_password = report["account"]["password"].as_str().unwrap().to_string();
    let env = parse_env(&fs::read_to_string(op.site_dir().join("pds.env")).unwrap());
    let admin = format!("admin:{}", env["PDS_ADMIN_PASSWORD"]);
    let invite = {
        let out = d1.ssh_with_stdin(
            "root",
            "curl -sS --fail-with-body -X POST -u \"$(cat)\" -H 'Content-Type: application/json' \
             -d '{\"useCount\":1}' http://127.0.0.1:3000/xrpc/com.atproto.server.createInviteCode",
            admin.as_bytes(),
        );
        assert!(out.status.success(), "{}", describe(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        v["code"].as_str().unwrap().to_string()
    };
    let bob = xrpc(
        &d1,
        "com.atproto.server.createAccount",
        None,
        Some(
            &json!({"handle": BOB, "email": "bob@example.com", "password": BOB_PASSWORD, "inviteCode": invite}),
        ),
    );
    let bob_did = bob["did"].as_str().unwrap().to_string();
    let alice = login(&d1, &alice_did, &alice_password);
    post(&d1, &alice, "hello from alice", None);
    post(&d1, &bob, "hello from bob", None);
    xrpc(
        &d1,
        "com.atproto.repo.createRecord",
        Some(&bearer(&alice)),
        Some(
            &json!({"repo": alice_did, "collection": "app.bsky.graph.follow",
                     "record": {"$type": "app.bsky.graph.follow", "subject": bob_did, "createdAt": now()}}),
        ),
    );
    // A real-size image (200 KB) and a small one.
    let images = [noise(1, 200_000), noise(2, 2_000)];
    let blobs = [
        (
            alice_did.clone(),
            post_image(&d1, &alice, &images[0]),
            images[0].clone(),
        ),
        (
            bob_did.clone(),
            post_image(&d1, &bob, &images[1]),
            images[1].clone(),
        ),
    ];

    // The backup, while alice keeps posting.
    let passphrase_file = op.home.path().join("passphrase");
    fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
    let backup_args = vec![
        "backup".to_string(),
        "--state-dir".into(),
        op.state.path().display().to_string(),
        "-i".into(),
        ssh_key().display().to_string(),
        "--passphrase-file".into(),
        passphrase_file.display().to_string(),
        "--json".into(),
    ];
    let mut child = op
        .command(&backup_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut during = 0;
    while child.try_wait().unwrap().is_none() {
        post(
            &d1,
            &alice,
            &format!("written during the backup {during}"),
            None,
        );
        during += 1;
    }
    let out = child.wait_with_output().unwrap();
    let backup = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
    .assert_ok("pdsup backup");
    eprintln!("{during} posts written during the backup");
    assert!(during > 0, "no write happened while the backup ran");
    let archive = PathBuf::from(backup["backup"]["archive"].as_str().unwrap());
    assert!(
        archive.starts_with(op.site_dir().join("backups")),
        "{}",
        archive.display()
    );
    assert_eq!(file_mode(&archive), 0o600);
    assert_eq!(file_mode(archive.parent().unwrap()), 0o700);
    let leftovers: Vec<_> = fs::read_dir(archive.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert_eq!(
        d1.ssh_ok("root", "ls -d /var/tmp/pdsup-backup.* 2>/dev/null; true")
            .trim(),
        "",
        "the staging dir was left on the droplet"
    );
    let (manifest, sealed) = pdsup::ops::backup::read_archive(&archive, true).unwrap();
    let heads: BTreeMap<String, String> = manifest
        .accounts
        .iter()
        .map(|a| (a.did.clone(), a.head.clone()))
        .collect();
    assert_eq!(heads.keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec![alice_did.clone(), bob_did.clone()];
        v.sort();
        v
    });
    // The archive holds no secret in the clear; the sealed state opens with the passphrase.
    let archive_bytes = {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("tar -xzOf {} | strings", archive.display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for key in [
        "PDS_JWT_SECRET",
        "PDS_ADMIN_PASSWORD",
        "PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX",
    ] {
        assert!(
            !archive_bytes.contains(&env[key]),
            "the archive shows {key}"
        );
    }
    let state =
        pdsup::ops::backup::open_site_state(&sealed, &pdsup::secret::Secret::new(PASSPHRASE))
            .unwrap();
    assert!(state.pds_env.contains(&env["PDS_JWT_SECRET"]));
    for path in ["account.sqlite", "sequencer.sqlite"] {
        assert!(
            manifest.files.contains_key(path),
            "{path} not in {:?}",
            manifest.files.keys()
        );
    }
    assert!(
        manifest
            .files
            .keys()
            .any(|p| p.starts_with("actors/") && p.ends_with("/key")),
        "no signing key in the archive"
    );

    // What droplet 1 serves at the heads the backup recorded: records whose
    // repo rev is not newer than the manifest's.
    let before: BTreeMap<String, BTreeMap<String, (String, Value)>> = [&alice_did, &bob_did]
        .iter()
        .map(|did| (did.to_string(), records(&d1, did)))
        .collect();
    // Droplet 1 keeps serving and takes a post the backup does not hold: seen
    // from its sync XRPC, it is a relay ahead of the backup (a relay desync).
    post(&d1, &alice, "on droplet 1, after the backup", None);
    let ahead = PdsTunnel::open(&d1);

    // Droplet 2: new address, new host key.
    let d2 = Droplet::start("bookworm");
    let mut restore = vec![
        "restore".to_string(),
        archive.display().to_string(),
        root_dest(&d2),
        "--accept-new-host-key".into(),
    ];
    restore.extend(op.site_args());
    let mut first = restore.clone();
    first.extend(["--relay".to_string(), ahead.url.clone()]);
    let restored = op.run(&first, &[]).assert_ok("pdsup restore on droplet 2");
    assert_eq!(restored["restore"]["taken_at"], manifest.taken_at.as_str());
    // The relay (droplet 1) has alice's post made after the backup: a desync,
    // reported with its fix; bob's repo is where the backup has it.
    let desync = &restored["restore"]["relay_desync"];
    assert_eq!(desync.as_array().map(Vec::len), Some(1), "{desync}");
    assert_eq!(desync[0]["relay"], ahead.url.as_str(), "{desync}");
    let behind: Vec<&str> = desync[0]["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["did"].as_str().unwrap())
        .collect();
    assert_eq!(behind, [alice_did.as_str()], "{desync}");
    let fix = desync[0]["fix"].as_str().unwrap();
    for step in [
        "nomad job stop -purge pds",
        "UPDATE sqlite_sequence SET seq = ",
        "pdsup request-crawl",
    ] {
        assert!(fix.contains(step), "{step:?} not in the fix:\n{fix}");
    }
    drop(ahead);
    drop(d1);

    let repos = xrpc(&d2, "com.atproto.sync.listRepos", None, None);
    let mut served: Vec<String> = repos["repos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["did"].as_str().unwrap().to_string())
        .collect();
    served.sort();
    assert_eq!(served, heads.keys().cloned().collect::<Vec<_>>());
    for (did, head) in &heads {
        assert_eq!(repo_head(&d2, did), *head, "{did}");
    }
    // Every record restored is byte-identical (same CID, same value) to droplet 1's,
    // and all that existed before the backup started are there.
    for (did, old) in &before {
        let new = records(&d2, did);
        for (key, (cid, value)) in &new {
            let (old_cid, old_value) = old
                .get(key)
                .unwrap_or_else(|| panic!("{did} {key} was never on droplet 1"));
            assert_eq!((cid, value), (old_cid, old_value), "{did} {key}");
        }
        let missing: Vec<&String> = old
            .iter()
            .filter(|(k, (_, v))| {
                !new.contains_key(*k)
                    && !v["text"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("written during the backup")
            })
            .map(|(k, _)| k)
            .collect();
        assert!(missing.is_empty(), "{did}: records lost: {missing:?}");
    }
    for (did, cid, bytes) in &blobs {
        let got = raw_get(
            &d2,
            &format!("com.atproto.sync.getBlob?did={did}&cid={cid}"),
        );
        assert!(
            got == *bytes,
            "blob {cid} of {did} differs after the restore"
        );
    }
    // The old passwords log in.
    let alice2 = login(&d2, &alice_did, &alice_password);
    login(&d2, BOB, BOB_PASSWORD);
    // A new post lands on the restored repo.
    post(&d2, &alice2, "after the restore", None);
    // ... signed by the same key: it verifies against alice's DID document in
    // the PLC, as does bob's restored head.
    let alice_rev = verify_latest_commit(&d2, &alice_did);
    let backup_rev = &manifest
        .accounts
        .iter()
        .find(|a| a.did == alice_did)
        .unwrap()
        .rev;
    assert!(alice_rev > *backup_rev, "{alice_rev} is not a new commit");
    verify_latest_commit(&d2, &bob_did);
    // Every database passes SQLite's integrity check.
    let checks = d2.ssh_ok(
        "root",
        "command -v sqlite3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q sqlite3 >/dev/null 2>&1; \
         find /srv/nomad/pds -name '*.sqlite' | while read -r db; do echo \"$db $(sqlite3 \"$db\" 'PRAGMA integrity_check;')\"; done",
    );
    assert!(checks.lines().count() >= 5, "{checks}");
    for line in checks.lines() {
        assert!(line.ends_with(" ok"), "{checks}");
    }

    // A second restore of the same archive changes nothing.
    let again = op
        .run(&restore, &[])
        .assert_ok("the same pdsup restore again");
    assert_eq!(again["changed"], false, "{again}");

    // Other data in the data dir (the restored data without its marker, a PDS
    // running on it, a post made since): refused without --force; --force stops
    // the PDS, sets the data aside whole and restores the backup.
    d2.ssh_ok("root", "rm /srv/nomad/pds/.pdsup-restored");
    let refused = op.run(&restore, &[]);
    assert!(!refused.ok, "a restore over other data must need --force");
    assert!(
        refused.stderr.contains("pass --force"),
        "{}",
        refused.stderr
    );
    let mut forced = restore.clone();
    forced.push("--force".into());
    op.run(&forced, &[]).assert_ok("pdsup restore --force");
    let aside = d2.ssh_ok("root", "ls -d /srv/nomad/pds.before-restore.*");
    assert_eq!(aside.lines().count(), 1, "{aside}");
    let aside_files = d2.ssh_ok("root", &format!("ls -a {}", aside.trim()));
    for name in ["account.sqlite", "actors", "blocks", ".pdsup-site-id"] {
        assert!(
            aside_files.lines().any(|l| l == name),
            "{name} not set aside:\n{aside_files}"
        );
    }
    for (did, head) in &heads {
        assert_eq!(repo_head(&d2, did), *head, "{did} after --force");
    }

    // The archive alone (an empty state dir, the passphrase) rebuilds the site too.
    let op3 = Operator::new();
    let d3 = Droplet::start("bookworm");
    let mut restore3 = vec![
        "restore".to_string(),
        archive.display().to_string(),
        root_dest(&d3),
    ];
    restore3.extend(op3.site_args());
    // A relay that is not ahead (droplet 2, back at the backup's heads): no desync.
    let level = PdsTunnel::open(&d2);
    restore3.extend(["--relay".to_string(), level.url.clone()]);
    let without = op3.run(&restore3, &[]);
    assert!(
        !without.ok,
        "a restore without state or passphrase must fail"
    );
    assert!(
        without.stderr.contains("PDSUP_BACKUP_PASSPHRASE"),
        "{}",
        without.stderr
    );
    let alone = op3
        .run(&restore3, &[("PDSUP_BACKUP_PASSPHRASE", PASSPHRASE)])
        .assert_ok("pdsup restore from the archive alone");
    assert_eq!(
        alone["restore"]["relay_desync"],
        json!([]),
        "a relay at the backup's heads is no desync"
    );
    drop(level);
    assert_eq!(
        fs::read_to_string(op3.site_dir().join("pds.env")).unwrap(),
        fs::read_to_string(op.site_dir().join("pds.env")).unwrap()
    );
    assert_eq!(file_mode(&op3.site_dir().join("pds.env")), 0o600);
    login(&d3, &alice_did, &alice_password);
    for (did, head) in &heads {
        assert_eq!(repo_head(&d3, did), *head, "{did}");
    }
    eprintln!("e2e_backup tier: {:.0?}", tier.elapsed());
}
