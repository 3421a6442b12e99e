//! End-to-end: `pdsup backup --schedule` to an SFTP repository on a second
//! droplet, the timer's service run by the test, `pdsup backup --list`, and
//! `pdsup restore --snapshot latest` onto a third droplet after the first is
//! destroyed, on the droplet-in-a-box harness.
//!
//! restic comes from Debian on the droplets, as sqlite3 does for `pdsup
//! backup` (the droplets' apt sources are this machine's Debian mirror); the
//! droplets reach each other on the harness network, so droplet 2's own sshd
//! is the SFTP server.
//!
//! Run with `cargo test --test e2e_backup_schedule -- --nocapture --test-threads=1`.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use support::atproto::*;
use support::*;

/// Runs pdsup with its own HOME and state dir; returns (success, stdout JSON or
/// null, stderr).
fn pdsup(home: &Path, args: &[String]) -> (bool, Value, String) {
    let started = Instant::now();
    eprintln!("$ pdsup {}", args.join(" "));
    let out = Command::new(env!("CARGO_BIN_EXE_pdsup"))
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("PDSUP_STATE_DIR")
        .env_remove("PDSUP_HOSTNAME")
        .env_remove("PDSUP_DEST")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdin(Stdio::null())
        .args(args)
        .output()
        .expect("run pdsup");
    eprintln!("  ({:.0?}, {})", started.elapsed(), out.status);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    (
        out.status.success(),
        value,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(result: (bool, Value, String), what: &str) -> Value {
    let (success, value, stderr) = result;
    assert!(success, "{what} failed: {value}\n{stderr}");
    value
}

#[test]
fn a_scheduled_snapshot_over_sftp_restores_onto_a_new_droplet() {
    require_e2e();
    let tier = Instant::now();
    let home = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().display().to_string();
    let key = ssh_key().display().to_string();
    let site_dir = state.path().join("sites").join(HOSTNAME);
    let mut site_args: Vec<String> = strings(&["--state-dir", &state_arg]);
    site_args.extend(harness_sources(&cache_dir()));
    site_args.extend(caddy_args());
    site_args.extend(strings(&["-i", &key, "--json"]));

    // Droplet 1: the site, its account and a post.
    let d1 = Droplet::start("bookworm");
    let mut up = vec!["up".to_string(), format!("root@127.0.0.1:{}", d1.ssh_port)];
    up.extend(site_args.clone());
    let report = ok(pdsup(home.path(), &up), "pdsup up on droplet 1");
    let did = report["account"]["did"].as_str().unwrap().to_string();
    let password = report["account"]["password"].as_str().unwrap().to_string();
    let alice = login(&d1, &did, &password);
    post(&d1, &alice, "posted before the scheduled backup", None);
    let image = noise(3, 200_000);
    let image_cid = post_image(&d1, &alice, &image);

    // Droplet 2: the SFTP server (its own sshd), reached from droplet 1 on the harness network.
    let d2 = Droplet::start("bookworm");
    d1.ssh_ok(
        "root",
        &format!("timeout 10 bash -c 'echo > /dev/tcp/{}/22'", d2.ip),
    );
    let repo = format!("sftp:root@{}:/srv/restic/pds", d2.ip);
    let day2 = |extra: &[&str]| -> Vec<String> {
        let mut args = strings(&["backup", "--state-dir", &state_arg, "-i", &key, "--json"]);
        args.extend(strings(extra));
        args
    };

    // Bad input is refused before anything changes.
    let (refused, _, stderr) = pdsup(
        home.path(),
        &day2(&["--schedule", "--repo", "sftp://root@host:2222//srv"]),
    );
    assert!(
        !refused && stderr.contains("sftp:user@host:/path"),
        "{stderr}"
    );

    // First run: everything installed; the repository does not answer yet
    // (the key is not authorized on the server), which the result says.
    let first = ok(
        pdsup(
            home.path(),
            &day2(&[
                "--schedule",
                "--repo",
                &repo,
                "--at",
                "*-*-* 03:00",
                "--keep-last",
                "2",
            ]),
        ),
        "backup --schedule",
    );
    assert_eq!(first["changed"], true, "{first}");
    assert_eq!(first["repository"]["ready"], false, "{first}");
    let public_key = first["sftp_public_key"].as_str().unwrap().to_string();
    assert!(public_key.starts_with("ssh-ed25519 "), "{public_key}");
    for name in ["restic/password", "restic/id_ed25519"] {
        assert_eq!(file_mode(&site_dir.join(name)), 0o600, "{name}");
    }
    let restic_password = fs::read_to_string(site_dir.join("restic/password")).unwrap();
    let site_toml = fs::read_to_string(site_dir.join("site.toml")).unwrap();
    assert!(site_toml.contains(&repo), "{site_toml}");
    assert!(
        !site_toml.contains(restic_password.trim()),
        "site.toml holds the password"
    );
    let modes = d1.ssh_ok(
        "root",
        "stat -c '%a %U %n' /etc/pdsup-backup/password /etc/pdsup-backup/id_ed25519 /etc/pdsup-backup/config",
    );
    for line in modes.lines() {
        assert!(line.starts_with("600 root "), "{modes}");
    }
    assert_eq!(
        d1.ssh_ok("root", "cat /etc/pdsup-backup/password").trim(),
        restic_password.trim()
    );
    assert!(d1
        .ssh_ok("root", "systemctl is-enabled pdsup-backup.timer")
        .starts_with("enabled"));
    d2.ssh_with_stdin(
        "root",
        "cat >> /root/.ssh/authorized_keys",
        format!("{public_key}\n").as_bytes(),
    );

    // A dry run shows nothing to change; the second run (repository and
    // calendar from site.toml) changes nothing on the droplet and initializes
    // the repository.
    let dry = ok(
        pdsup(home.path(), &day2(&["--schedule", "--dry-run"])),
        "--dry-run",
    );
    assert_eq!(dry["changed"], false, "{dry}");
    let again = ok(
        pdsup(home.path(), &day2(&["--schedule"])),
        "backup --schedule again",
    );
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["repository"]["ready"], true, "{again}");
    assert_eq!(again["schedule"]["at"], "*-*-* 03:00", "{again}");

    // The timer's service, twice; the second snapshot of the unchanged site adds little.
    let repo_size = || -> u64 {
        d2.ssh_ok("root", "du -sb /srv/restic/pds | cut -f1")
            .trim()
            .parse()
            .unwrap()
    };
    let started = Instant::now();
    d1.ssh_ok("root", "systemctl start --wait pdsup-backup.service");
    eprintln!("first scheduled snapshot: {:.0?}", started.elapsed());
    let after_first = repo_size();
    let started = Instant::now();
    d1.ssh_ok("root", "systemctl start --wait pdsup-backup.service");
    eprintln!("second scheduled snapshot: {:.0?}", started.elapsed());
    let after_second = repo_size();
    eprintln!(
        "bench: repository {after_first} bytes after the first snapshot; the second snapshot of the \
         unchanged site added {} bytes",
        after_second - after_first
    );
    let journal = d1.ssh_ok(
        "root",
        "journalctl -u pdsup-backup.service --no-pager -o cat | grep 'Added to the repo'",
    );
    eprintln!("restic said:\n{journal}");
    assert_eq!(
        d1.ssh_ok("root", "ls -A /var/lib/pdsup-backup/ 2>/dev/null; true")
            .trim(),
        "",
        "the stage was left behind"
    );

    let listed = ok(pdsup(home.path(), &day2(&["--list"])), "backup --list");
    let snapshots = listed["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2, "{listed}");
    assert_eq!(listed["last_run"]["result"], "success", "{listed}");
    assert!(listed["last_run"]["finished_at"].is_string(), "{listed}");
    let latest = snapshots[1]["id"].as_str().unwrap().to_string();
    let recorded_head = repo_head(&d1, &did);
    let recorded_records = records(&d1, &did);
    drop(d1);

    // Droplet 3: a new address and host key; the snapshot put in place before the PDS starts.
    let d3 = Droplet::start("bookworm");
    let mut restore = strings(&[
        "restore",
        "--snapshot",
        "latest",
        &format!("root@127.0.0.1:{}", d3.ssh_port),
        "--accept-new-host-key",
    ]);
    restore.extend(site_args.clone());
    let restored = ok(pdsup(home.path(), &restore), "restore --snapshot latest");
    assert_eq!(
        restored["restore"]["snapshot"],
        latest.as_str(),
        "{restored}"
    );
    let accounts = restored["restore"]["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1, "{restored}");
    assert_eq!(accounts[0]["did"], did.as_str());
    assert_eq!(accounts[0]["head"], recorded_head.as_str());
    assert_eq!(repo_head(&d3, &did), recorded_head);
    // Every record and the image byte-identical; the old password logs in; a post
    // made after the restore is signed by the key in the DID document.
    assert_eq!(records(&d3, &did), recorded_records);
    let blob = raw_get(
        &d3,
        &format!("com.atproto.sync.getBlob?did={did}&cid={image_cid}"),
    );
    assert!(blob == image, "the 200 KB image changed in the snapshot");
    let alice = login(&d3, &did, &password);
    post(&d3, &alice, "posted after the snapshot restore", None);
    verify_latest_commit(&d3, &did);
    let checks = d3.ssh_ok(
        "root",
        "find /srv/nomad/pds -name '*.sqlite' | while read -r db; do echo \"$db $(sqlite3 \"$db\" 'PRAGMA integrity_check;')\"; done",
    );
    assert!(checks.lines().count() >= 4, "{checks}");
    for line in checks.lines() {
        assert!(line.ends_with(" ok"), "{checks}");
    }
    // The same restore again finds the snapshot in place and changes nothing.
    let again = ok(pdsup(home.path(), &restore), "the same restore again");
    assert_eq!(again["changed"], false, "{again}");
    eprintln!("e2e_backup_schedule tier: {:.0?}", tier.elapsed());
}
