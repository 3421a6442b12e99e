//! End-to-end, day 2: `pdsup upgrade`, `rollback` and `down` on one converged
//! droplet of the harness (see tests/e2e.rs for the harness itself).
//!
//! The images come from scripts/harness/pds-upgrade-images.sh: an older npm
//! version of @atproto/pds (0.4.209) installed over the harness's PDS image,
//! which the site starts on and upgrades from to the harness's own (0.4.217:
//! two npm versions); the harness's image tagged as the next version with
//! `PDS_VERSION` set to it, so `/xrpc/_health` reports it; and an image whose
//! command exits at once, which never becomes healthy.
//!
//! `PDSUP_E2E_NOMAD_VERSION` picks the Nomad double's release from the mirror
//! (default: pdsup's default, what nomad-release.sh builds). `upgrade --nomad`
//! goes to the double's second release in the mirror (1.10.6, or 1.10.5 when
//! the site started on 1.10.6) and back.
//!
//! The backup before an upgrade is the local archive (a passphrase is given);
//! `pdsup-backup.service` (the scheduled backup) is covered by unit tests of
//! the choice only. `upgrade` with no arguments pulls the site's tag again
//! from its registry: the harness's droplets reach none, so its failure path
//! (nothing changed, a clear error) is what is asserted.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

struct Operator {
    home: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Operator {
    fn new() -> Self {
        Operator {
            home: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn site_file(&self) -> PathBuf {
        self.state
            .path()
            .join("sites")
            .join(HOSTNAME)
            .join("site.toml")
    }

    fn run(&self, args: &[String]) -> Output {
        eprintln!("$ pdsup {}", args.join(" "));
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_pdsup"))
            .args(args)
            .env("HOME", self.home.path())
            .env("PDSUP_STATE_DIR", self.state.path())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("PDSUP_HOSTNAME")
            .env_remove("PDSUP_DEST")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run pdsup");
        eprintln!("  ({:.0?}, {})", started.elapsed(), out.status);
        out
    }

    /// A day-2 command: the site's DEST from site.toml, the harness's key.
    fn day2(&self, words: &[&str]) -> Output {
        let mut args = strings(words);
        args.extend(strings(&["-i", &ssh_key().display().to_string()]));
        self.run(&args)
    }
}

#[track_caller]
fn ok_json(out: &Output, what: &str) -> Value {
    assert!(out.status.success(), "{what} failed:\n{}", describe(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not one JSON document ({e}):\n{}", describe(out)))
}

/// An XRPC call on the droplet, at the PDS's loopback port.
fn xrpc(d: &Droplet, method: &str, body: Option<&Value>, token: Option<&str>) -> Output {
    let auth = token
        .map(|t| format!("-H 'authorization: Bearer {t}'"))
        .unwrap_or_default();
    match body {
        Some(body) => d.ssh_with_stdin(
            "root",
            &format!(
                "curl -fsS -X POST -H 'content-type: application/json' {auth} --data-binary @- \
                 http://127.0.0.1:3000/xrpc/{method}"
            ),
            body.to_string().as_bytes(),
        ),
        None => d.ssh(
            "root",
            &format!("curl -fsS {auth} 'http://127.0.0.1:3000/xrpc/{method}'"),
        ),
    }
}

#[track_caller]
fn xrpc_ok(d: &Droplet, method: &str, body: Option<&Value>, token: Option<&str>) -> Value {
    let out = xrpc(d, method, body, token);
    assert!(out.status.success(), "{method}:\n{}", describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{method} ({e}): {}", describe(&out)))
}

fn health_version(d: &Droplet) -> Option<String> {
    let out = xrpc(d, "_health", None, None);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// The post's text, read back through the PDS.
fn post_text(d: &Droplet, did: &str, rkey: &str) -> String {
    let rec = xrpc_ok(
        d,
        &format!("com.atproto.repo.getRecord?repo={did}&collection=app.bsky.feed.post&rkey={rkey}"),
        None,
        None,
    );
    rec["value"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The archive, then the older npm version's, the good and the bad image's versions.
/// The post written before the upgrade still reads the same, and the account's password
/// still logs in.
fn assert_account_kept(d: &Droplet, did: &str, rkey: &str, password: &str, after: &str) {
    assert_eq!(
        post_text(d, did, rkey),
        "before the upgrade",
        "after {after}"
    );
    let relogin = xrpc(
        d,
        "com.atproto.server.createSession",
        Some(&json!({"identifier": FULL_HANDLE, "password": password})),
        None,
    );
    assert!(
        relogin.status.success(),
        "the account after {after}:\n{}",
        describe(&relogin)
    );
}

fn harness_images() -> (PathBuf, String, String, String) {
    let out = Command::new(harness_script("pds-upgrade-images.sh"))
        .output()
        .expect("run pds-upgrade-images.sh");
    assert!(
        out.status.success(),
        "pds-upgrade-images.sh:\n{}",
        describe(&out)
    );
    let archive = PathBuf::from(stdout(&out).trim());
    // The tags the script made: the base's version + 1 (good) and + 2 (bad).
    let base = pds_image_version();
    let (prefix, patch) = base.rsplit_once('.').unwrap();
    let patch: u32 = patch.parse().unwrap();
    // The script's default, or what it was told.
    let older = std::env::var("PDSUP_PDS_OLDER_NPM").unwrap_or_else(|_| "0.4.209".into());
    (
        archive,
        older,
        format!("{prefix}.{}", patch + 1),
        format!("{prefix}.{}", patch + 2),
    )
}

/// The @atproto/pds version of the harness's image (its lockfile's).
fn pds_image_version() -> String {
    let lock: Value = serde_json::from_str(
        &fs::read_to_string(repo_dir().join("tests/pds-image/package-lock.json")).unwrap(),
    )
    .unwrap();
    lock["packages"]["node_modules/@atproto/pds"]["version"]
        .as_str()
        .unwrap()
        .to_string()
}

fn site_toml(op: &Operator) -> toml::Table {
    fs::read_to_string(op.site_file()).unwrap().parse().unwrap()
}

fn nomad_jobs(d: &Droplet) -> Value {
    let text = d.ssh_ok("root", "curl -fsS http://127.0.0.1:4646/v1/jobs");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn upgrade_keeps_the_data_a_bad_one_is_reverted_rollback_returns_and_down_keeps_the_data() {
    require_e2e();
    let tier = Instant::now();
    let (archive, older, good, bad) = harness_images();
    let base = pds_image_version();
    let d = Droplet::start("bookworm");
    let op = Operator::new();
    let dest = format!("root@127.0.0.1:{}", d.ssh_port);
    let mut up = strings(&[
        "up",
        &dest,
        "--json",
        "-i",
        &ssh_key().display().to_string(),
    ]);
    // The site starts on the older npm version, from the upgrade images' archive.
    let mut sources = harness_sources(&cache_dir());
    let at = sources
        .iter()
        .position(|a| a == "--pds-image-archive")
        .unwrap();
    sources[at + 1] = archive.display().to_string();
    up.extend(sources);
    up.extend(strings(&[
        "--pds-image",
        &format!("pdsup-test/pds:{older}"),
    ]));
    up.extend(caddy_args());
    if let Ok(v) = std::env::var("PDSUP_E2E_NOMAD_VERSION") {
        up.extend(strings(&["--nomad-version", &v]));
    }
    let report = ok_json(&op.run(&up), "pdsup up");
    let did = report["account"]["did"].as_str().unwrap().to_string();
    let password = report["account"]["password"].as_str().unwrap().to_string();
    assert_eq!(health_version(&d).as_deref(), Some(older.as_str()));
    eprintln!("converged in {:.0?}", tier.elapsed());

    // The first up pins what it deployed: the exact version _health reported.
    // The harness loads the image from an archive, and Docker knows no
    // registry digest for a loaded image: the pin is by version, no digest.
    let site = site_toml(&op);
    let older_image = format!("pdsup-test/pds:{older}");
    assert_eq!(
        site["pds_image"].as_str(),
        Some(older_image.as_str()),
        "{site}"
    );
    assert_eq!(site["pds_version"].as_str(), Some(older.as_str()), "{site}");
    assert!(site.get("pds_image_digest").is_none(), "{site}");

    // Some data: a post by the first account.
    let session = xrpc_ok(
        &d,
        "com.atproto.server.createSession",
        Some(&json!({"identifier": FULL_HANDLE, "password": password})),
        None,
    );
    let token = session["accessJwt"].as_str().unwrap().to_string();
    let created = xrpc_ok(
        &d,
        "com.atproto.repo.createRecord",
        Some(&json!({
            "repo": did, "collection": "app.bsky.feed.post",
            "record": {"$type": "app.bsky.feed.post", "text": "before the upgrade", "createdAt": "2026-12-03T12:00:00Z"}
        })),
        Some(&token),
    );
    let rkey = created["uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();

    // A downgrade is refused before anything changes.
    let downgrade = op.day2(&["upgrade", "--to", "0.4.1"]);
    assert_eq!(downgrade.status.code(), Some(3), "{}", describe(&downgrade));
    assert!(
        stderr(&downgrade).contains("--force"),
        "{}",
        describe(&downgrade)
    );

    // No arguments: the site's tag pulled again from its registry. The
    // harness's droplets reach no registry (the image came from an archive),
    // so the pull fails: before anything changed, saying so.
    let site_before = fs::read_to_string(op.site_file()).unwrap();
    let again = op.day2(&["upgrade"]);
    assert!(!again.status.success(), "{}", describe(&again));
    assert!(
        stderr(&again).contains(&format!("pulling {older_image} on the droplet")),
        "{}",
        describe(&again)
    );
    assert!(
        stderr(&again).contains("nothing was upgraded"),
        "{}",
        describe(&again)
    );
    assert_eq!(fs::read_to_string(op.site_file()).unwrap(), site_before);
    assert_eq!(health_version(&d).as_deref(), Some(older.as_str()));

    // Two npm versions: from the older @atproto/pds to the harness's own, a
    // backup first (a passphrase is given). The data is kept, _health reports
    // the new version, site.toml pins it.
    let passphrase = op.home.path().join("backup-passphrase");
    fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    let base_archive = cache_dir().join("pds-image.tar").display().to_string();
    let npm = ok_json(
        &op.day2(&[
            "upgrade",
            "--image",
            "ghcr.io/bluesky-social/pds:0.4",
            "--pds-image-archive",
            &base_archive,
            "--passphrase-file",
            &passphrase.display().to_string(),
            "--json",
        ]),
        "upgrade between two npm versions",
    );
    // The archive was taken, and verified, while the older version still ran.
    let backup = PathBuf::from(npm["backup"].as_str().expect("a backup path"));
    let (manifest, _) = pdsup::ops::backup::read_archive(&backup, true)
        .unwrap_or_else(|e| panic!("the backup before the upgrade: {e}"));
    assert_eq!(manifest.pds_version.as_deref(), Some(older.as_str()));
    assert!(
        manifest.accounts.iter().any(|a| a.did == did),
        "{:?}",
        manifest.accounts
    );
    assert_eq!(npm["before"]["version"], older.as_str(), "{npm}");
    assert_eq!(npm["after"]["version"], base.as_str(), "{npm}");
    assert_eq!(health_version(&d).as_deref(), Some(base.as_str()));
    assert_account_kept(&d, &did, &rkey, &password, "the npm upgrade");
    let site = site_toml(&op);
    assert_eq!(site["pds_version"].as_str(), Some(base.as_str()), "{site}");
    assert_eq!(
        site["pds_previous"]["version"].as_str(),
        Some(older.as_str()),
        "{site}"
    );
    eprintln!("upgraded between npm versions at {:.0?}", tier.elapsed());

    // A dry run changes nothing.
    let image = |v: &str| format!("pdsup-test/pds:{v}");
    let archive_arg = archive.display().to_string();
    let dry = ok_json(
        &op.day2(&[
            "upgrade",
            "--image",
            &image(&good),
            "--pds-image-archive",
            &archive_arg,
            "--dry-run",
            "--json",
        ]),
        "upgrade --dry-run",
    );
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(!dry["changes"].as_array().unwrap().is_empty(), "{dry}");
    assert_eq!(health_version(&d).as_deref(), Some(base.as_str()));
    assert_eq!(
        site_toml(&op)["pds_previous"]["version"].as_str(),
        Some(older.as_str()),
        "a dry run changed site.toml"
    );

    // The upgrade: the new version answers, the data is there, site.toml pins it.
    let up1 = ok_json(
        &op.day2(&[
            "upgrade",
            "--image",
            &image(&good),
            "--pds-image-archive",
            &archive_arg,
            "--json",
        ]),
        "upgrade",
    );
    assert!(up1["backup"].is_null(), "no backup was configured: {up1}");
    assert_eq!(up1["before"]["version"], base.as_str(), "{up1}");
    assert_eq!(up1["after"]["version"], good.as_str(), "{up1}");
    assert_eq!(health_version(&d).as_deref(), Some(good.as_str()));
    assert_account_kept(&d, &did, &rkey, &password, "the upgrade");
    let site = site_toml(&op);
    assert_eq!(
        site["pds_image"].as_str(),
        Some(image(&good).as_str()),
        "{site}"
    );
    assert_eq!(site["pds_version"].as_str(), Some(good.as_str()), "{site}");
    assert_eq!(
        site["pds_previous"]["version"].as_str(),
        Some(base.as_str()),
        "{site}"
    );
    eprintln!("upgraded at {:.0?}", tier.elapsed());

    // A bad image: Nomad reverts the deployment and the PDS answers again, as before.
    let failed = op.day2(&["upgrade", "--image", &image(&bad)]);
    assert_eq!(failed.status.code(), Some(9), "{}", describe(&failed));
    let err = stderr(&failed);
    assert!(
        err.contains("Nomad reverted the pds job"),
        "{}",
        describe(&failed)
    );
    assert!(
        err.contains("the PDS answers again"),
        "{}",
        describe(&failed)
    );
    assert_eq!(health_version(&d).as_deref(), Some(good.as_str()));
    assert_eq!(post_text(&d, &did, &rkey), "before the upgrade");
    assert_eq!(
        site_toml(&op)["pds_version"].as_str(),
        Some(good.as_str()),
        "a failed upgrade changed site.toml"
    );
    eprintln!("bad upgrade reverted at {:.0?}", tier.elapsed());

    // Rollback: back to the version the upgrade replaced.
    let back = ok_json(&op.day2(&["rollback", "--json"]), "rollback");
    assert_eq!(back["after"]["version"], base.as_str(), "{back}");
    assert_eq!(health_version(&d).as_deref(), Some(base.as_str()));
    assert_eq!(post_text(&d, &did, &rkey), "before the upgrade");
    assert_eq!(
        site_toml(&op)["pds_previous"]["version"].as_str(),
        Some(good.as_str())
    );
    eprintln!("rolled back at {:.0?}", tier.elapsed());

    nomad_upgrade_checks(&op, &d, &did, &rkey, &password, &base);
    eprintln!("nomad upgraded and rolled back at {:.0?}", tier.elapsed());

    down_checks(&op, &d);
    eprintln!("tier e2e_upgrade: {:.0?}", tier.elapsed());
}

/// The Nomad version the droplet's agent reports.
fn agent_version(d: &Droplet) -> String {
    let text = d.ssh_ok("root", "curl -fsS http://127.0.0.1:4646/v1/agent/self");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["config"]["Version"]["Version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `upgrade --nomad` to the double's second release in the harness mirror
/// (scripts/harness/nomad-release.sh), and `rollback --nomad`: Nomad runs the
/// new version, the PDS answers again with its accounts and records.
fn nomad_upgrade_checks(
    op: &Operator,
    d: &Droplet,
    did: &str,
    rkey: &str,
    password: &str,
    pds_version: &str,
) {
    let from = std::env::var("PDSUP_E2E_NOMAD_VERSION").unwrap_or_else(|_| "1.10.5".into());
    let to = if from == "1.10.6" { "1.10.5" } else { "1.10.6" };
    let sums = cache_dir().join(format!("mirror/nomad/{to}/nomad_{to}_SHA256SUMS.sig"));
    assert!(
        sums.exists(),
        "{} is missing: run scripts/harness/nomad-release.sh (it makes the second release)",
        sums.display()
    );
    assert_eq!(agent_version(d), from);
    let key = cache_dir()
        .join("mirror/test-release-key.asc")
        .display()
        .to_string();
    let mirror = mirror_url();
    let source = ["--nomad-release-url", &mirror, "--nomad-release-key", &key];
    let kept = |what: &str| {
        assert_eq!(health_version(d).as_deref(), Some(pds_version), "{what}");
        assert_account_kept(d, did, rkey, password, what);
    };

    let mut args = vec!["upgrade", "--nomad", to];
    args.extend(source);
    args.push("--json");
    let up = ok_json(&op.day2(&args), "upgrade --nomad");
    assert_eq!(up["before"], from.as_str(), "{up}");
    assert_eq!(up["after"], to, "{up}");
    assert_eq!(up["pds_version"], pds_version, "{up}");
    assert_eq!(agent_version(d), to);
    kept("upgrade --nomad");
    let site = site_toml(op);
    assert_eq!(site["nomad_version"].as_str(), Some(to), "{site}");
    assert_eq!(
        site["nomad_previous"].as_str(),
        Some(from.as_str()),
        "{site}"
    );

    let mut args = vec!["rollback", "--nomad"];
    args.extend(source);
    args.push("--json");
    let back = ok_json(&op.day2(&args), "rollback --nomad");
    assert_eq!(back["after"], from.as_str(), "{back}");
    assert_eq!(agent_version(d), from);
    kept("rollback --nomad");
    assert_eq!(site_toml(op)["nomad_version"].as_str(), Some(from.as_str()));
}

/// The PDS's durable files: SQLite's -wal and -shm files come and go (the
/// PDS checkpoints and removes them when it stops cleanly).
fn data_files(d: &Droplet) -> String {
    d.ssh_ok(
        "root",
        "cd /srv/nomad/pds && find . -type f ! -name '*-wal' ! -name '*-shm' | sort",
    )
}

/// `down`: pdsup's jobs go, a job of the user's stays, the data stays.
fn down_checks(op: &Operator, d: &Droplet) {
    // A job of the user's, which down must leave alone.
    let registered = d.ssh_with_stdin(
        "root",
        "curl -fsS -X POST --data-binary @- http://127.0.0.1:4646/v1/jobs",
        json!({"Job": {"ID": "users-own", "Name": "users-own", "Type": "service", "Datacenters": ["*"],
            "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "docker",
            "Config": {"image": "ghcr.io/bluesky-social/pds:0.4", "entrypoint": ["sleep"], "args": ["3600"]}}]}]}})
        .to_string()
        .as_bytes(),
    );
    assert!(
        registered.status.success(),
        "the user's job:\n{}",
        describe(&registered)
    );
    let data_before = data_files(d);
    assert!(data_before.contains("./account.sqlite"), "{data_before}");
    assert!(
        data_before.contains("./actors/"),
        "no repo in the data: {data_before}"
    );
    let dry = ok_json(&op.day2(&["down", "--dry-run", "--json"]), "down --dry-run");
    assert_eq!(dry["dry_run"], true, "{dry}");
    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j.as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&dry["jobs"]), vec!["pds"], "{dry}");
    assert!(health_version(d).is_some(), "a dry run stopped the PDS");

    let down = ok_json(&op.day2(&["down", "--json"]), "down");
    assert_eq!(ids(&down["jobs"]), vec!["pds"], "{down}");
    let jobs: Vec<String> = nomad_jobs(d)
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["ID"].as_str().unwrap().to_string())
        .collect();
    assert!(!jobs.contains(&"pds".to_string()), "{jobs:?}");
    assert!(
        jobs.contains(&"users-own".to_string()),
        "down removed the user's job: {jobs:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while health_version(d).is_some() {
        assert!(
            Instant::now() < deadline,
            "the PDS still answers after down"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(data_files(d), data_before, "down touched the data");

    // --purge-data wants the hostname typed; a wrong answer changes nothing.
    let mut purge = Command::new(env!("CARGO_BIN_EXE_pdsup"));
    purge
        .args(strings(&[
            "down",
            "--purge-data",
            "-i",
            &ssh_key().display().to_string(),
        ]))
        .env("HOME", op.home.path())
        .env("PDSUP_STATE_DIR", op.state.path())
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = purge.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not-the-hostname\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(data_files(d), data_before);
}
