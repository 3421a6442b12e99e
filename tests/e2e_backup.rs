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
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};
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

/// An XRPC call to the PDS on the droplet, at its loopback port.
fn xrpc(d: &Droplet, method: &str, auth: Option<&str>, body: Option<&Value>) -> Value {
    let auth = auth
        .map(|a| format!("-H {}", shell_quote(a)))
        .unwrap_or_default();
    let cmd = match body {
        Some(_) => format!(
            "curl -sS --fail-with-body -X POST -H 'Content-Type: application/json' {auth} --data-binary @- http://127.0.0.1:3000/xrpc/{method}"
        ),
        None => format!("curl -sS --fail-with-body {auth} 'http://127.0.0.1:3000/xrpc/{method}'"),
    };
    let input = body.map(|b| b.to_string()).unwrap_or_default();
    let out = d.ssh_with_stdin("root", &cmd, input.as_bytes());
    assert!(out.status.success(), "{method}: {}", describe(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{method} JSON ({e}): {}", stdout(&out)))
}

fn raw_get(d: &Droplet, path: &str) -> Vec<u8> {
    let out = d.ssh(
        "root",
        &format!("curl -sS --fail 'http://127.0.0.1:3000/xrpc/{path}'"),
    );
    assert!(out.status.success(), "{path}: {}", describe(&out));
    out.stdout
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn bearer(session: &Value) -> String {
    format!(
        "Authorization: Bearer {}",
        session["accessJwt"].as_str().unwrap()
    )
}

fn login(d: &Droplet, identifier: &str, password: &str) -> Value {
    xrpc(
        d,
        "com.atproto.server.createSession",
        None,
        Some(&json!({"identifier": identifier, "password": password})),
    )
}

fn now() -> String {
    "2026-12-03T12:00:00.000Z".to_string()
}

fn post(d: &Droplet, session: &Value, text: &str, embed: Option<Value>) -> Value {
    let mut record = json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": now()});
    if let Some(embed) = embed {
        record["embed"] = embed;
    }
    xrpc(
        d,
        "com.atproto.repo.createRecord",
        Some(&bearer(session)),
        Some(
            &json!({"repo": session["did"], "collection": "app.bsky.feed.post", "record": record}),
        ),
    )
}

/// Uploads `bytes` as a PNG blob and posts it; returns the blob's CID.
fn post_image(d: &Droplet, session: &Value, bytes: &[u8]) -> String {
    let cmd = format!(
        "curl -sS --fail-with-body -X POST -H 'Content-Type: image/png' -H {} --data-binary @- http://127.0.0.1:3000/xrpc/com.atproto.repo.uploadBlob",
        shell_quote(&bearer(session))
    );
    let out = d.ssh_with_stdin("root", &cmd, bytes);
    assert!(out.status.success(), "uploadBlob: {}", describe(&out));
    let blob: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let cid = blob["blob"]["ref"]["$link"].as_str().unwrap().to_string();
    post(
        d,
        session,
        "a picture",
        Some(
            json!({"$type": "app.bsky.embed.images", "images": [{"alt": "noise", "image": blob["blob"]}]}),
        ),
    );
    cid
}

/// Every record of `did`, by `collection/rkey`: its CID and its value.
fn records(d: &Droplet, did: &str) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    for collection in ["app.bsky.feed.post", "app.bsky.graph.follow"] {
        let list = xrpc(
            d,
            &format!("com.atproto.repo.listRecords?repo={did}&collection={collection}&limit=100"),
            None,
            None,
        );
        for r in list["records"].as_array().unwrap() {
            let uri = r["uri"].as_str().unwrap();
            let key = uri.rsplit('/').take(2).collect::<Vec<_>>();
            out.insert(
                format!("{}/{}", key[1], key[0]),
                (r["cid"].as_str().unwrap().to_string(), r["value"].clone()),
            );
        }
    }
    out
}

/// A 1x1 PNG followed by `len` bytes of noise (after IEND, which decoders
/// ignore).
fn noise(seed: u8, len: usize) -> Vec<u8> {
    const PNG_1X1: [u8; 70] = [
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f,
        0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64,
        0xf8, 0xcf, 0x50, 0x0f, 0x00, 0x03, 0x86, 0x01, 0x80, 0x5a, 0x34, 0x7d, 0x6b, 0x00, 0x00,
        0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    let mut bytes = PNG_1X1.to_vec();
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    while bytes.len() < PNG_1X1.len() + len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push(x as u8);
    }
    bytes
}

/// Reads an unsigned LEB128 varint (CAR section lengths, CID fields) at `at`.
fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 64 bits");
}

/// The blocks of a CAR v1 file (`com.atproto.sync.getBlocks`), each as its
/// CID's SHA-256 digest and its bytes; every block's digest is checked.
fn car_blocks(car: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    use sha2::Digest;
    let mut at = 0;
    let header = varint(car, &mut at) as usize;
    at += header;
    let mut blocks = Vec::new();
    while at < car.len() {
        let len = varint(car, &mut at) as usize;
        let end = at + len;
        assert_eq!(varint(car, &mut at), 1, "a CIDv1");
        assert_eq!(varint(car, &mut at), 0x71, "a DAG-CBOR block");
        assert_eq!(varint(car, &mut at), 0x12, "a SHA-256 multihash");
        let digest_len = varint(car, &mut at) as usize;
        let digest = car[at..at + digest_len].to_vec();
        at += digest_len;
        let data = car[at..end].to_vec();
        assert_eq!(
            sha2::Sha256::digest(&data).as_slice(),
            digest.as_slice(),
            "a block whose bytes do not hash to its CID"
        );
        blocks.push((digest, data));
        at = end;
    }
    blocks
}

/// The key of the `#atproto` verification method of `did`'s document in the
/// harness's PLC server (secp256k1 or P-256).
enum AtprotoKey {
    K256(k256::ecdsa::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl AtprotoKey {
    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        use k256::ecdsa::signature::Verifier;
        match self {
            AtprotoKey::K256(key) => k256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
            AtprotoKey::P256(key) => p256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
        }
    }
}

fn plc_signing_key(did: &str) -> AtprotoKey {
    let out = Command::new("curl")
        .args(["-sS", "--fail", &format!("http://{GATEWAY}:2582/{did}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "PLC: {}", describe(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let method = doc["verificationMethod"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"].as_str().is_some_and(|id| id.ends_with("#atproto")))
        .unwrap_or_else(|| panic!("no #atproto verification method in {doc}"));
    let multibase = method["publicKeyMultibase"].as_str().unwrap();
    let bytes = bs58::decode(multibase.strip_prefix('z').expect("base58btc"))
        .into_vec()
        .unwrap();
    // "Multikey" (plc.directory today): a multicodec prefix and a compressed
    // key; the legacy types (this @did-plc/server): the curve in the type,
    // the key's SEC1 bytes as they are.
    let (curve, key) = match (method["type"].as_str().unwrap(), bytes.as_slice()) {
        ("Multikey", [0xe7, 0x01, key @ ..]) => ("k256", key),
        ("Multikey", [0x80, 0x24, key @ ..]) => ("p256", key),
        ("EcdsaSecp256k1VerificationKey2019", key) => ("k256", key),
        ("EcdsaSecp256r1VerificationKey2019", key) => ("p256", key),
        _ => panic!("{method}: neither a secp256k1 nor a P-256 key"),
    };
    if curve == "k256" {
        AtprotoKey::K256(k256::ecdsa::VerifyingKey::from_sec1_bytes(key).unwrap())
    } else {
        AtprotoKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(key).unwrap())
    }
}

/// The latest commit of `did` on `d`, checked against the DID document in the
/// PLC: the commit block (DAG-CBOR) without its `sig`, re-encoded, must verify
/// under the document's `#atproto` key. Returns the commit's rev.
fn verify_latest_commit(d: &Droplet, did: &str) -> String {
    use ipld_core::ipld::Ipld;
    let latest = xrpc(
        d,
        &format!("com.atproto.sync.getLatestCommit?did={did}"),
        None,
        None,
    );
    let cid = latest["cid"].as_str().unwrap();
    let car = raw_get(
        d,
        &format!("com.atproto.sync.getBlocks?did={did}&cids={cid}"),
    );
    let blocks = car_blocks(&car);
    assert_eq!(blocks.len(), 1, "getBlocks of one CID");
    let block = &blocks[0].1;
    let commit: Ipld = serde_ipld_dagcbor::from_slice(block).unwrap();
    // Re-encoding gives the same bytes: the encoding is canonical, so the
    // unsigned commit below is the bytes the PDS signed.
    assert_eq!(&serde_ipld_dagcbor::to_vec(&commit).unwrap(), block);
    let Ipld::Map(mut fields) = commit else {
        panic!("the commit is not a map")
    };
    assert_eq!(fields.get("did"), Some(&Ipld::String(did.to_string())));
    let Some(Ipld::Bytes(sig)) = fields.remove("sig") else {
        panic!("the commit has no sig")
    };
    let Some(Ipld::String(rev)) = fields.get("rev").cloned() else {
        panic!("the commit has no rev")
    };
    let unsigned = serde_ipld_dagcbor::to_vec(&Ipld::Map(fields)).unwrap();
    let key = plc_signing_key(did);
    assert!(
        key.verifies(&unsigned, &sig),
        "the commit {cid} of {did} does not verify against its DID document in the PLC"
    );
    // The check can fail: one byte changed and the signature no longer holds.
    let mut tampered = unsigned.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(!key.verifies(&tampered, &sig));
    rev
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

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
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
    assert_eq!(mode(&archive), 0o600);
    assert_eq!(mode(archive.parent().unwrap()), 0o700);
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
        let latest = xrpc(
            &d2,
            &format!("com.atproto.sync.getLatestCommit?did={did}"),
            None,
            None,
        );
        assert_eq!(latest["cid"].as_str(), Some(head.as_str()), "{did}");
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
        let latest = xrpc(
            &d2,
            &format!("com.atproto.sync.getLatestCommit?did={did}"),
            None,
            None,
        );
        assert_eq!(
            latest["cid"].as_str(),
            Some(head.as_str()),
            "{did} after --force"
        );
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
    assert_eq!(mode(&op3.site_dir().join("pds.env")), 0o600);
    login(&d3, &alice_did, &alice_password);
    for (did, head) in &heads {
        let latest = xrpc(
            &d3,
            &format!("com.atproto.sync.getLatestCommit?did={did}"),
            None,
            None,
        );
        assert_eq!(latest["cid"].as_str(), Some(head.as_str()), "{did}");
    }
    eprintln!("e2e_backup tier: {:.0?}", tier.elapsed());
}
