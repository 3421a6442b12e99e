//! Proof tests for the droplet-in-a-box harness (scripts/harness/): droplets boot
//! systemd, accept the test key for root/deploy/pwuser with the expected sudo rules,
//! have their own host keys, run their own Docker engine, and the host-side services
//! (mirror, Pebble) answer. Prepare with `scripts/harness/up.sh`; these tests fail,
//! never skip, when the harness is missing.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

fn os_codename(d: &Droplet) -> String {
    d.ssh_ok("root", ". /etc/os-release && echo \"$VERSION_CODENAME\"")
        .trim()
        .to_string()
}

fn assert_systemd_running(d: &Droplet) {
    // is-system-running exits non-zero for "degraded": judge by what it prints.
    let out = d.ssh("root", "systemctl is-system-running");
    let state = stdout(&out).trim().to_string();
    assert!(
        state == "running" || state == "degraded",
        "systemd on {} is {state:?}, failed units:\n{}",
        d.name,
        stdout(&d.ssh("root", "systemctl --failed --no-pager"))
    );
    assert_eq!(
        d.ssh_ok("root", "ps -o comm= -p 1").trim(),
        "systemd",
        "PID 1 is not systemd"
    );
    assert_eq!(d.ssh_ok("root", "systemctl is-active ssh").trim(), "active");
}

fn unique_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

#[test]
fn bookworm_droplet_has_systemd_and_the_three_users() {
    let d = Droplet::start("bookworm");
    assert!(
        d.ip.starts_with("10.213.0."),
        "unexpected droplet ip {}",
        d.ip
    );
    assert_eq!(os_codename(&d), "bookworm");
    assert_systemd_running(&d);

    assert_eq!(d.ssh_ok("root", "id -u").trim(), "0");

    // deploy: passwordless sudo.
    assert_eq!(d.ssh_ok("deploy", "id -un").trim(), "deploy");
    assert_eq!(d.ssh_ok("deploy", "sudo -n id -u").trim(), "0");

    // pwuser: logs in with the key, but sudo wants a password.
    assert_eq!(d.ssh_ok("pwuser", "id -un").trim(), "pwuser");
    let out = d.ssh("pwuser", "sudo -n true");
    assert!(
        !out.status.success(),
        "sudo -n worked for pwuser:\n{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("password is required"),
        "unexpected sudo error for pwuser:\n{}",
        describe(&out)
    );
    // ...and accepts the documented password.
    let out = d.ssh_with_stdin("pwuser", "sudo -S -p '' id -u", b"pwuser-test-password\n");
    assert!(
        out.status.success(),
        "sudo -S with the password failed:\n{}",
        describe(&out)
    );
    assert_eq!(stdout(&out).trim(), "0");

    // Key auth is real: an account without the key is refused.
    let out = d.ssh("nobody", "true");
    assert_eq!(
        out.status.code(),
        Some(255),
        "ssh as nobody was not refused:\n{}",
        describe(&out)
    );
}

#[test]
fn each_droplet_has_its_own_host_key_and_machine_id() {
    let a = Droplet::start("bookworm");
    let b = Droplet::start("bookworm");
    let (ka, kb) = (a.host_key(), b.host_key());
    assert!(ka.starts_with("ssh-ed25519 AAAA"), "odd host key {ka:?}");
    assert_ne!(ka, kb, "two droplets present the same host key");
    // The key sshd presents is the one generated on the droplet at first boot.
    assert_eq!(
        a.ssh_ok("root", "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub")
            .trim(),
        ka
    );

    let (ma, mb) = (
        a.ssh_ok("root", "cat /etc/machine-id"),
        b.ssh_ok("root", "cat /etc/machine-id"),
    );
    assert_eq!(ma.trim().len(), 32, "bad machine-id {ma:?}");
    assert_ne!(ma, mb, "two droplets share a machine-id");
    assert_ne!(a.ip, b.ip);
    assert_ne!(a.ssh_port, b.ssh_port);
}

/// A tar of a rootfs holding only a static busybox: the droplet's engine has no images
/// and cannot pull any, so the test imports this one.
fn busybox_rootfs_tar() -> Vec<u8> {
    let busybox = std::path::Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: apt-get install busybox-static (scripts/harness/up.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::copy(busybox, dir.path().join("bin/busybox")).unwrap();
    let out = std::process::Command::new("tar")
        .args(["-C"])
        .arg(dir.path())
        .args(["--owner=0", "--group=0", "-c", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar failed:\n{}", describe(&out));
    out.stdout
}

#[tokio::test]
async fn docker_io_installs_and_runs_containers_inside_a_droplet() {
    let d = Droplet::start("bookworm");
    // Real apt from the mirror this machine uses; real docker.io.
    d.ssh_ok(
        "root",
        "apt-get update -q >/tmp/apt.log 2>&1 && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >>/tmp/apt.log 2>&1 \
         || { tail -30 /tmp/apt.log; exit 1; }",
    );
    assert_eq!(
        d.ssh_ok("root", "systemctl is-active docker").trim(),
        "active"
    );
    assert_eq!(
        d.ssh_ok("root", "docker images -q | wc -l").trim(),
        "0",
        "inner engine not fresh"
    );

    let out = d.ssh_with_stdin(
        "root",
        "docker import - pdsup-busybox:test",
        &busybox_rootfs_tar(),
    );
    assert!(
        out.status.success(),
        "docker import failed:\n{}",
        describe(&out)
    );

    let token = unique_token();
    let echoed = d.ssh_ok(
        "root",
        &format!("docker run --rm pdsup-busybox:test /bin/busybox echo inner-{token}"),
    );
    assert_eq!(echoed.trim(), format!("inner-{token}"));

    // A container publishing the droplet's port 80, reached from this machine through
    // the droplet's published loopback port: the path the proxy tests will use.
    d.ssh_ok(
        "root",
        &format!(
            "docker run -d --name web -p 80:8080 pdsup-busybox:test /bin/busybox sh -c \
             '/bin/busybox mkdir -p /www && echo web-{token} > /www/index.html && \
              exec /bin/busybox httpd -f -p 8080 -h /www'"
        ),
    );
    let url = format!("http://127.0.0.1:{}/index.html", d.http_port);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut last = String::new();
    for _ in 0..40 {
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                last = r.text().await.unwrap();
                break;
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = format!("error {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(last.trim(), format!("web-{token}"), "GET {url}");
}

#[test]
fn trixie_droplet_boots() {
    let d = Droplet::start("trixie");
    assert_eq!(os_codename(&d), "trixie");
    assert_systemd_running(&d);
    assert_eq!(d.ssh_ok("root", "id -u").trim(), "0");
    assert_eq!(d.ssh_ok("deploy", "sudo -n id -u").trim(), "0");
    let out = d.ssh("pwuser", "sudo -n true");
    assert!(
        stderr(&out).contains("password is required"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
async fn pebble_answers_with_the_harness_cert() {
    require_services();
    let client = https_client_trusting(&[&pebble_cert()]);
    let dir: serde_json::Value = client
        .get(pebble_directory_url())
        .send()
        .await
        .expect("GET pebble directory with cert.pem")
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in ["newNonce", "newAccount", "newOrder"] {
        let url = dir[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {dir}"));
        assert!(
            url.starts_with(&format!("https://{GATEWAY}:14000/")),
            "{key} = {url}"
        );
    }

    // Verification is on: trusting only the ACME root (not Pebble's TLS cert) fails.
    let wrong = https_client_trusting(&[&pebble_root()]);
    assert!(
        wrong.get(pebble_directory_url()).send().await.is_err(),
        "TLS was not verified"
    );

    // root.pem is the root Pebble issues with right now.
    let live = client
        .get(format!("https://{GATEWAY}:15000/roots/0"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = std::fs::read_to_string(pebble_root()).unwrap();
    assert!(live.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        live.trim(),
        exported.trim(),
        "root.pem is stale: re-run services.sh start"
    );
}

#[tokio::test]
async fn mirror_serves_a_file_to_this_machine_and_to_droplets() {
    require_services();
    let token = unique_token();
    let rel = format!("harness-proof/{token}.txt");
    let path = mirror_dir().join(&rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("mirror-{token}\n")).unwrap();

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .get(format!("{}/{rel}", mirror_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), format!("mirror-{token}\n"));
    let missing = client
        .get(format!("{}/harness-proof/nope-{token}", mirror_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let d = Droplet::start("bookworm");
    let fetched = d.ssh_ok("root", &format!("curl -fsS {}/{rel}", mirror_url()));
    assert_eq!(fetched, format!("mirror-{token}\n"));

    std::fs::remove_file(&path).unwrap();
}
