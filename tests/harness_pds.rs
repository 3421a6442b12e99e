//! Proof tests for the PDS stand-in image (`scripts/harness/pds-image.sh`, sources in
//! `tests/pds-image/`) and the in-memory PLC directory (`tests/plc/`, started by
//! `scripts/harness/services.sh`): the image built from npm's `@atproto/pds` answers
//! like `ghcr.io/bluesky-social/pds:0.4` — health with its version, admin invite codes,
//! account creation with a real `did:plc` registered in the PLC, `listRepos`,
//! `/tls-check` — and stops cleanly (exit 0) on `docker stop`; in the outer engine
//! and inside a droplet's own engine after a `docker load` of the cached tarball.
//!
//! Prepare with `scripts/harness/up.sh` and `scripts/harness/pds-image.sh`; these tests
//! fail, never skip, when the harness, the PLC or the image is missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pdsup::state::secrets::PdsSecrets;
use serde_json::Value;
use support::*;

/// The tag pdsup's job uses; pds-image.sh builds our image under it.
const IMAGE: &str = "ghcr.io/bluesky-social/pds:0.4";
const HOSTNAME: &str = "pds.test";
const PLC_PORT: u16 = 2582;

fn plc_url() -> String {
    format!("http://{GATEWAY}:{PLC_PORT}")
}

fn pds_tarball() -> PathBuf {
    cache_dir().join("pds-image.tar")
}

/// The `@atproto/pds` version pinned in tests/pds-image/package-lock.json.
fn pinned_pds_version() -> String {
    let path = repo_dir().join("tests/pds-image/package-lock.json");
    let lock: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let v = lock["packages"]["node_modules/@atproto/pds"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        v.starts_with("0.4."),
        "the pinned @atproto/pds is {v}, not a 0.4.x"
    );
    v
}

/// Panics with what to run unless engine, network, services (PLC included) and a
/// current PDS image + tarball are there.
fn require_pds_image() {
    require_services();
    let out = Command::new(harness_script("pds-image.sh"))
        .arg("--check")
        .output()
        .expect("cannot run scripts/harness/pds-image.sh");
    if !out.status.success() {
        panic!(
            "the PDS test image is not ready: {}\n\
             Run `{}` (as root), then re-run the tests.",
            stderr(&out).trim(),
            harness_script("pds-image.sh").display()
        );
    }
    assert!(
        pds_tarball().is_file(),
        "{} is missing after --check",
        pds_tarball().display()
    );
}

/// The environment pdsup's job gives the PDS (src/pds/env.rs), pointed at the local
/// PLC. Left out: the app view, report service and crawlers (public hosts): the PDS
/// would POST requestCrawl to every crawler after the account's first commit, and tests
/// send no traffic off this machine. No PDS_DEV_MODE: a hostname with a real-looking
/// TLD (`.test` is allowed) and an http PLC work without it.
fn pds_env(secrets: &PdsSecrets) -> Vec<(String, String)> {
    [
        ("TZ", "UTC"),
        ("PDS_HOSTNAME", HOSTNAME),
        ("PDS_PORT", "3000"),
        ("PDS_JWT_SECRET", secrets.jwt_secret.expose()),
        ("PDS_ADMIN_PASSWORD", secrets.admin_password.expose()),
        (
            "PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX",
            secrets.rotation_key_hex.expose(),
        ),
        ("PDS_DATA_DIRECTORY", "/pds"),
        ("PDS_BLOBSTORE_DISK_LOCATION", "/pds/blocks"),
        ("PDS_BLOBSTORE_DISK_TMP_LOCATION", "/pds/temp"),
        ("PDS_BLOB_UPLOAD_LIMIT", "104857600"),
        ("PDS_DID_PLC_URL", &plc_url()),
        ("PDS_INVITE_REQUIRED", "true"),
        ("PDS_RATE_LIMITS_ENABLED", "true"),
        ("LOG_ENABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `docker run` arguments: `-e K=V` for each variable.
fn env_args(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")])
        .collect()
}

// ---------------------------------------------------------------------------------
// HTTP through curl, run here or on a droplet over SSH: one set of checks for both.
// ---------------------------------------------------------------------------------

struct Response {
    status: u16,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }
}

/// Where curl runs: on this machine, or on a droplet (over SSH).
enum Curl<'a> {
    Here,
    On(&'a Droplet),
}

impl Curl<'_> {
    /// `curl` with `args`, printing the body then the status code on a last line.
    fn run(&self, args: &[&str]) -> Response {
        self.try_run(args)
            .unwrap_or_else(|out| panic!("curl {args:?} failed:\n{}", describe(&out)))
    }

    /// Like `run`, but a failed curl (no connection yet, say) is returned, not a panic.
    fn try_run(&self, args: &[&str]) -> Result<Response, Output> {
        let mut argv = vec!["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}"];
        argv.extend_from_slice(args);
        let out = match self {
            Curl::Here => Command::new(argv[0])
                .args(&argv[1..])
                .output()
                .expect("cannot run curl"),
            Curl::On(d) => d.ssh("root", &shlex::try_join(argv.iter().copied()).unwrap()),
        };
        if !out.status.success() {
            return Err(out);
        }
        let text = stdout(&out);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        Ok(Response {
            status: status
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("no status in {text:?}")),
            body: body.to_string(),
        })
    }

    fn get(&self, url: &str) -> Response {
        self.run(&[url])
    }

    fn post_json(&self, url: &str, body: &Value, basic_auth: Option<&str>) -> Response {
        let body = body.to_string();
        let mut args = vec![
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body,
        ];
        if let Some(auth) = basic_auth {
            args.extend(["-u", auth]);
        }
        args.push(url);
        self.run(&args)
    }
}

/// What a test learnt from [`exercise`].
struct Account {
    did: String,
}

/// The checks, against the PDS at `base` (http://host:port), through `curl`.
fn exercise(curl: &Curl, base: &str, secrets: &PdsSecrets, version: &str) -> Account {
    // Up: /xrpc/_health reports the package's version (PDS_VERSION set by index.js).
    let deadline = Instant::now() + Duration::from_secs(90);
    let health = loop {
        let last = match curl.try_run(&[&format!("{base}/xrpc/_health")]) {
            Ok(r) if r.status == 200 => break r,
            Ok(r) => format!("{} {}", r.status, r.body),
            Err(out) => stderr(&out),
        };
        assert!(
            Instant::now() < deadline,
            "PDS at {base} not healthy in 90 s; last answer: {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(health.json()["version"], version, "health: {}", health.body);

    // Invite codes are admin-only (HTTP Basic, user admin).
    let xrpc = |m: &str| format!("{base}/xrpc/{m}");
    let anon = curl.post_json(
        &xrpc("com.atproto.server.createInviteCode"),
        &serde_json::json!({"useCount": 1}),
        None,
    );
    assert_eq!(
        anon.status, 401,
        "createInviteCode without admin auth: {}",
        anon.body
    );
    let admin = format!("admin:{}", secrets.admin_password.expose());
    let r = curl.post_json(
        &xrpc("com.atproto.server.createInviteCode"),
        &serde_json::json!({"useCount": 1}),
        Some(&admin),
    );
    assert_eq!(r.status, 200, "createInviteCode: {}", r.body);
    let code = r.json()["code"].as_str().expect("invite code").to_string();

    // An account without an invite is refused (PDS_INVITE_REQUIRED=true)...
    let handle = format!("alice.{HOSTNAME}");
    let mut req = serde_json::json!({
        "email": "alice@example.com", "handle": handle, "password": "correct-horse-battery",
    });
    let r = curl.post_json(&xrpc("com.atproto.server.createAccount"), &req, None);
    assert_eq!(r.status, 400, "createAccount without invite: {}", r.body);
    assert_eq!(r.json()["error"], "InvalidInviteCode", "{}", r.body);
    // ...and created with one: a did:plc registered in the PLC directory.
    req["inviteCode"] = code.into();
    let r = curl.post_json(&xrpc("com.atproto.server.createAccount"), &req, None);
    assert_eq!(r.status, 200, "createAccount: {}", r.body);
    let created = r.json();
    let did = created["did"].as_str().expect("did").to_string();
    assert!(did.starts_with("did:plc:"), "not a did:plc: {did}");
    assert_eq!(created["handle"], handle.as_str());
    assert!(created["accessJwt"].is_string(), "no accessJwt: {}", r.body);

    let r = curl.get(&format!("{}/{did}", plc_url()));
    assert_eq!(r.status, 200, "PLC does not know {did}: {}", r.body);
    let doc = r.json();
    assert_eq!(
        doc["alsoKnownAs"][0],
        format!("at://{handle}"),
        "PLC document: {}",
        r.body
    );
    assert_eq!(
        doc["service"][0]["serviceEndpoint"],
        format!("https://{HOSTNAME}"),
        "PLC document: {}",
        r.body
    );

    let r = curl.get(&xrpc("com.atproto.sync.listRepos"));
    assert_eq!(r.status, 200, "listRepos: {}", r.body);
    let repos = r.json();
    let listed = repos["repos"].as_array().expect("repos array");
    assert!(
        listed
            .iter()
            .any(|repo| repo["did"] == did.as_str() && repo["active"] == true),
        "listRepos does not list {did}: {}",
        r.body
    );

    // Caddy's on-demand TLS `ask`: the hostname and hosted handles only.
    let tls = |domain: &str| curl.get(&format!("{base}/tls-check?domain={domain}"));
    assert_eq!(tls(HOSTNAME).status, 200, "tls-check for the hostname");
    assert_eq!(
        tls(&handle).status,
        200,
        "tls-check for an account's handle"
    );
    assert_eq!(
        tls(&format!("bob.{HOSTNAME}")).status,
        404,
        "tls-check for an unknown handle"
    );
    let evil = tls("evil.example");
    assert!(
        evil.status >= 400 && evil.status < 500,
        "tls-check evil.example: {} {}",
        evil.status,
        evil.body
    );
    assert_eq!(
        curl.get(&format!("{base}/tls-check")).status,
        400,
        "tls-check without domain"
    );

    Account { did }
}

/// Asserts the container `name` ended with exit code 0 after a clean `destroy()`.
fn assert_clean_stop(inspect_exit: &Output, logs: &Output) {
    assert!(
        inspect_exit.status.success(),
        "docker inspect failed:\n{}",
        describe(inspect_exit)
    );
    assert_eq!(
        stdout(inspect_exit).trim(),
        "0",
        "the PDS did not exit 0 on docker stop"
    );
    let all = format!("{}{}", stdout(logs), stderr(logs));
    assert!(
        all.contains("pds stopped (SIGTERM)"),
        "no clean shutdown in the logs:\n{all}"
    );
}

/// Removes the outer-engine container `0` (with its anonymous volumes) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-fv", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("cannot run docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed:\n{}",
        describe(&out)
    );
    stdout(&out)
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("pdsup-test-{prefix}-{}-{nanos}", std::process::id())
}

/// The data directory holds the account database and the new account's repo.
fn assert_data_dir(listing: &str, did: &str) {
    assert!(
        listing.contains("account.sqlite"),
        "no account.sqlite in the data dir:\n{listing}"
    );
    assert!(
        listing.contains(did),
        "no actor store for {did} in the data dir:\n{listing}"
    );
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

/// The image carries the official image's run settings, under both tags, and the
/// tarball the droplets load holds both tags.
#[test]
fn pds_image_has_the_official_settings_and_both_tags() {
    require_pds_image();
    let version = pinned_pds_version();
    let cfg: Value = serde_json::from_str(&docker_ok(&[
        "image",
        "inspect",
        IMAGE,
        "-f",
        "{{json .Config}}",
    ]))
    .unwrap();
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["dumb-init", "--"]));
    assert_eq!(
        cfg["Cmd"],
        serde_json::json!(["node", "--enable-source-maps", "index.js"])
    );
    assert_eq!(cfg["WorkingDir"], "/app");
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["PDS_PORT=3000", "NODE_ENV=production", "UV_USE_IO_URING=0"] {
        assert!(env.contains(&want), "image env lacks {want}: {env:?}");
    }
    assert!(
        cfg["ExposedPorts"].get("3000/tcp").is_some(),
        "3000/tcp not exposed: {cfg}"
    );
    assert_eq!(
        cfg["Labels"]["org.opencontainers.image.version"],
        version.as_str()
    );
    let id = docker_ok(&["image", "inspect", IMAGE, "-f", "{{.Id}}"]);
    let id2 = docker_ok(&[
        "image",
        "inspect",
        &format!("pdsup-test/pds:{version}"),
        "-f",
        "{{.Id}}",
    ]);
    assert_eq!(id, id2, "the two tags name different images");

    let manifest = Command::new("tar")
        .arg("-xOf")
        .arg(pds_tarball())
        .arg("manifest.json")
        .output()
        .expect("cannot run tar");
    assert!(
        manifest.status.success(),
        "no manifest.json in the tarball:\n{}",
        describe(&manifest)
    );
    let manifest: Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let tags: Vec<&str> = manifest[0]["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(tags.contains(&IMAGE), "tarball tags: {tags:?}");
    assert!(
        tags.contains(&format!("pdsup-test/pds:{version}").as_str()),
        "tarball tags: {tags:?}"
    );
}

/// (a) In the outer engine on the droplet network, against the PLC on the gateway.
#[test]
fn pds_image_serves_accounts_in_the_outer_engine() {
    require_pds_image();
    let version = pinned_pds_version();
    let secrets = PdsSecrets::generate();
    let data = tempfile::tempdir().unwrap();
    let name = unique("pds");
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "pdsup.test=pds",
        "--network",
        NETWORK,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["-v".into(), format!("{}:/pds", data.path().display())]);
    args.extend(env_args(&pds_env(&secrets)));
    args.push(IMAGE.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    docker_ok(&args);
    let _guard = Container(name.clone());
    let ip = docker_ok(&[
        "inspect",
        &name,
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
    ])
    .trim()
    .to_string();
    assert!(ip.starts_with("10.213.0."), "container address {ip:?}");

    let account = exercise(
        &Curl::Here,
        &format!("http://{ip}:3000"),
        &secrets,
        &version,
    );
    eprintln!(
        "timing: outer-engine PDS start + checks {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let listing = Command::new("find").arg(data.path()).output().unwrap();
    assert_data_dir(&stdout(&listing), &account.did);
    assert!(data.path().join("account.sqlite").is_file());

    let t = Instant::now();
    docker_ok(&["stop", "-t", "20", &name]);
    eprintln!("timing: docker stop {:.1} s", t.elapsed().as_secs_f64());
    assert_clean_stop(
        &docker(&["inspect", &name, "-f", "{{.State.ExitCode}}"]),
        &docker(&["logs", &name]),
    );
}

/// (b) Inside a droplet: docker.io from the distribution, the tarball piped over SSH
/// into the droplet's own engine, the PDS run there and checked with the droplet's curl.
#[test]
fn pds_image_loads_and_serves_accounts_inside_a_droplet() {
    require_pds_image();
    let version = pinned_pds_version();
    let d = Droplet::start("bookworm");

    let t = Instant::now();
    d.ssh_ok(
        "root",
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq docker.io >/dev/null \
         && (systemctl is-active --quiet docker || systemctl start docker)",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d
        .ssh("root", "docker info >/dev/null 2>&1")
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the droplet's dockerd did not come up"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "timing: apt-get install docker.io in the droplet {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let tarball = pds_tarball();
    let size_mb = std::fs::metadata(&tarball).unwrap().len() as f64 / 1e6;
    let t = Instant::now();
    let out = load_over_ssh(&d, &tarball);
    assert!(
        out.status.success(),
        "docker load in the droplet failed:\n{}",
        describe(&out)
    );
    eprintln!(
        "timing: docker load of {size_mb:.0} MB over SSH into the droplet {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        stdout(&out).contains(IMAGE),
        "docker load did not load {IMAGE}:\n{}",
        describe(&out)
    );

    let secrets = PdsSecrets::generate();
    let mut argv: Vec<String> = [
        "docker",
        "run",
        "-d",
        "--name",
        "pds",
        "-p",
        "127.0.0.1:3000:3000",
        "-v",
        "/srv/pds-test:/pds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(env_args(&pds_env(&secrets)));
    argv.push(IMAGE.into());
    let t = Instant::now();
    d.ssh_ok(
        "root",
        &format!(
            "mkdir -p /srv/pds-test && {}",
            shlex::try_join(argv.iter().map(String::as_str)).unwrap()
        ),
    );

    let account = exercise(&Curl::On(&d), "http://127.0.0.1:3000", &secrets, &version);
    eprintln!(
        "timing: in-droplet PDS start + checks {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_data_dir(&d.ssh_ok("root", "find /srv/pds-test"), &account.did);

    d.ssh_ok("root", "docker stop -t 20 pds");
    assert_clean_stop(
        &d.ssh("root", "docker inspect pds -f '{{.State.ExitCode}}'"),
        &d.ssh("root", "docker logs pds"),
    );
}

/// `ssh droplet docker load < tarball`, streamed from the file.
fn load_over_ssh(d: &Droplet, tarball: &Path) -> Output {
    let file =
        std::fs::File::open(tarball).unwrap_or_else(|e| panic!("open {}: {e}", tarball.display()));
    d.ssh_command("root")
        .arg("docker load")
        .stdin(file)
        .output()
        .expect("cannot run ssh")
}
