//! `pdsup dns --check` against a real DNS server: dnsmasq (Debian's
//! `dnsmasq-base`) on a free loopback port, serving a test zone with right,
//! missing and wrong records for three sites kept in one state directory.
//! No droplet: each site's `site.toml` records a public DEST, which is the
//! address its A records must have.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DROPLET_IP: &str = "203.0.113.7";
const OTHER_IP: &str = "198.51.100.9";

/// The exit code of `Unhealthy` (README "Exit codes").
const UNHEALTHY: i32 = 9;

struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on loopback (dnsmasq listens on both).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The test zone:
/// - pds-right.example.test (IO, handle alice): A and the handle's TXT right;
/// - pds-broken.example.test (IO, handle bob.example.org): A wrong, the TXT
///   under the hostname missing, the custom domain's TXT wrong;
/// - pds-caddy.example.test (Caddy): the A and the wildcard, right.
fn start_dnsmasq() -> Dnsmasq {
    let port = free_port();
    let zone = [
        // `--local` answers NXDOMAIN for names it has no record of.
        "--local=/example.test/".to_string(),
        "--local=/example.org/".to_string(),
        format!("--host-record=pds-right.example.test,{DROPLET_IP}"),
        "--txt-record=_atproto.alice.pds-right.example.test,did=did:plc:right".to_string(),
        format!("--host-record=pds-broken.example.test,{OTHER_IP}"),
        "--txt-record=_atproto.bob.example.org,did=did:plc:someoneelse".to_string(),
        // dnsmasq's --address covers the name and every name under it: a wildcard.
        format!("--address=/pds-caddy.example.test/{DROPLET_IP}"),
    ];
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .args(&zone)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq (Debian package dnsmasq-base: scripts/harness/install-deps.sh)");
    let dnsmasq = Dnsmasq { child, port };
    // Ready once it holds its TCP port.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "dnsmasq did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dnsmasq
}

fn write_site(state: &Path, hostname: &str, handle: &str, proxy: &str, did: &str) {
    let dir = state.join("sites").join(hostname);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("site.toml"),
        format!(
            "hostname = \"{hostname}\"\ndestination = \"root@{DROPLET_IP}\"\nemail = \"me@example.com\"\n\
             handle = \"{handle}\"\nproxy = \"{proxy}\"\naccount_did = \"{did}\"\n"
        ),
    )
    .unwrap();
}

fn pdsup(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdsup"))
        .args(args)
        .env("PDSUP_STATE_DIR", state)
        .env_remove("PDSUP_HOSTNAME")
        .env_remove("PDSUP_DEST")
        .output()
        .expect("run pdsup")
}

fn check_json(state: &Path, dns: &Dnsmasq, hostname: &str) -> (Output, serde_json::Value) {
    let resolver = format!("127.0.0.1:{}", dns.port);
    let out = pdsup(
        state,
        &[
            "dns",
            "--check",
            "--resolver",
            &resolver,
            "--hostname",
            hostname,
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, doc)
}

/// (name, state, found) of each record in the document.
fn states(doc: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
    doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
                r["found"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn row(name: &str, state: &str, found: &[&str]) -> (String, String, Vec<String>) {
    (
        name.to_string(),
        state.to_string(),
        found.iter().map(|f| f.to_string()).collect(),
    )
}

#[test]
fn dns_check_reports_right_missing_and_wrong_records() {
    let dns = start_dnsmasq();
    let state = tempfile::tempdir().unwrap();
    write_site(
        state.path(),
        "pds-right.example.test",
        "alice.pds-right.example.test",
        "io",
        "did:plc:right",
    );
    write_site(
        state.path(),
        "pds-broken.example.test",
        "bob.example.org",
        "io",
        "did:plc:bob",
    );
    write_site(
        state.path(),
        "pds-caddy.example.test",
        "carol.pds-caddy.example.test",
        "caddy",
        "did:plc:carol",
    );

    let (out, doc) = check_json(state.path(), &dns, "pds-right.example.test");
    assert_eq!(out.status.code(), Some(0), "{doc}");
    assert_eq!(doc["ok"], true);
    assert_eq!(
        states(&doc),
        vec![
            row("pds-right.example.test", "right", &[DROPLET_IP]),
            row(
                "_atproto.alice.pds-right.example.test",
                "right",
                &["did=did:plc:right"]
            ),
        ]
    );

    let (out, doc) = check_json(state.path(), &dns, "pds-broken.example.test");
    assert_eq!(out.status.code(), Some(UNHEALTHY), "{doc}");
    assert_eq!(doc["ok"], false);
    assert_eq!(
        states(&doc),
        vec![
            row("pds-broken.example.test", "wrong", &[OTHER_IP]),
            row("_atproto.bob.pds-broken.example.test", "missing", &[]),
            row(
                "_atproto.bob.example.org",
                "wrong",
                &["did=did:plc:someoneelse"]
            ),
        ]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("3 of 3 DNS records are not right"),
        "{stderr}"
    );

    let (out, doc) = check_json(state.path(), &dns, "pds-caddy.example.test");
    assert_eq!(out.status.code(), Some(0), "{doc}");
    assert_eq!(
        states(&doc),
        vec![
            row("pds-caddy.example.test", "right", &[DROPLET_IP]),
            row("*.pds-caddy.example.test", "right", &[DROPLET_IP]),
        ]
    );

    // The text report names each state and what was found instead.
    let resolver = format!("127.0.0.1:{}", dns.port);
    let out = pdsup(
        state.path(),
        &[
            "dns",
            "--check",
            "--resolver",
            &resolver,
            "--hostname",
            "pds-broken.example.test",
        ],
    );
    assert_eq!(out.status.code(), Some(UNHEALTHY));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("WRONG") && lines[0].contains(&format!("(found: {OTHER_IP})")),
        "{text}"
    );
    assert!(lines[1].starts_with("MISSING"), "{text}");
    assert!(lines[2].contains("did=did:plc:someoneelse"), "{text}");
}

#[test]
fn dns_without_check_lists_the_records_and_contacts_nothing() {
    let state = tempfile::tempdir().unwrap();
    write_site(
        state.path(),
        "pds-caddy.example.test",
        "carol.pds-caddy.example.test",
        "caddy",
        "did:plc:carol",
    );
    let out = pdsup(state.path(), &["dns", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["pds-caddy.example.test", "*.pds-caddy.example.test"]
    );
    assert_eq!(doc["records"][0]["value"], DROPLET_IP);

    // A bad --resolver is refused before anything else.
    let out = pdsup(
        state.path(),
        &["dns", "--check", "--resolver", "dns.google"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resolver"));
}
