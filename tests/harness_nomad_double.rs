//! Proof that the Nomad test double (tests/nomad-double; a test fixture, not HashiCorp Nomad)
//! does what pdsup's end-to-end tests rely on, inside a droplet:
//!
//! - the release-style zip from `scripts/harness/nomad-release.sh` downloads from the mirror
//!   and verifies (gpgv signature, SHA256SUMS), and installs as `/usr/local/bin/nomad`;
//! - a `Type=notify` systemd unit starts it (so READY=1 reaches systemd);
//! - a config whose host volume path does not exist is refused, like Nomad;
//! - the pdsup-shaped job (group port `http` to=80, nomad service with an http check, host
//!   volume mount, docker task) is planned as Added, placed, runs and becomes healthy; its
//!   service address answers, files cross the host volume both ways, logs come back;
//! - an identical re-submit plans as None and keeps the allocation and version;
//! - an agent restart adopts the running container; a changed job replaces the allocation.
//!
//! Needs the harness (`scripts/harness/up.sh`); fails, never skips, when it is missing.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{describe, harness_script, mirror_url, stdout, Droplet};

const VERSION: &str = "1.10.5";
const IMAGE: &str = "pdsup-test/nomad-double-web:1";
const SEC: u64 = 1_000_000_000;

/// The task: greets on stdout and stderr, writes into the host volume, serves it over HTTP.
const SCRIPT: &str = "echo \"$GREETING on stdout\"; echo 'web says hi on stderr' >&2; \
    echo ok > /www/health.txt; echo 'written by the task' > /www/written-by-task.txt; \
    exec /bin/busybox httpd -f -v -p 80 -h /www";

const UNIT: &str = "[Unit]
Description=Nomad (pdsup test double)
Wants=network-online.target
After=network-online.target docker.service

[Service]
Type=notify
EnvironmentFile=-/etc/nomad.d/nomad.env
ExecReload=/bin/kill -HUP $MAINPID
ExecStart=/usr/local/bin/nomad agent -config /etc/nomad.d
KillMode=process
KillSignal=SIGINT
LimitNOFILE=65536
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
";

const CONFIG: &str = r#"data_dir  = "/opt/nomad/data"
bind_addr = "0.0.0.0"

server {
  enabled          = true
  bootstrap_expect = 1
}

client {
  enabled           = true
  servers           = ["127.0.0.1"]
  network_interface = "lo"

  host_volume "web" {
    path      = "/srv/nomad/web"
    read_only = false
  }
}
"#;

fn job(greeting: &str) -> Value {
    json!({
        "ID": "web", "Name": "web", "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{
            "Name": "web", "Count": 1,
            "Networks": [{"DynamicPorts": [{"Label": "http", "To": 80}]}],
            "Services": [{
                "Name": "web", "PortLabel": "http", "Provider": "nomad",
                "Checks": [{"Type": "http", "Path": "/health.txt", "Interval": SEC, "Timeout": SEC}]
            }],
            "Volumes": {"web": {"Name": "web", "Type": "host", "Source": "web", "ReadOnly": false}},
            "RestartPolicy": {"Attempts": 1, "Interval": 60 * SEC, "Delay": SEC, "Mode": "fail"},
            "Update": {"HealthCheck": "checks", "MinHealthyTime": SEC, "HealthyDeadline": 60 * SEC,
                       "ProgressDeadline": 120 * SEC, "AutoRevert": false},
            "Tasks": [{
                "Name": "web", "Driver": "docker",
                "Config": {"image": IMAGE, "ports": ["http"], "command": "/bin/busybox", "args": ["sh", "-c", SCRIPT]},
                "Env": {"GREETING": greeting},
                "VolumeMounts": [{"Volume": "web", "Destination": "/www", "ReadOnly": false}],
                "Resources": {"CPU": 100, "MemoryMB": 64}
            }]
        }]
    })
}

/// A rootfs with only a static busybox, as a tar stream for `docker import -`.
fn busybox_rootfs_tar() -> Vec<u8> {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: apt-get install busybox-static (scripts/harness/up.sh does)"
    );
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::create_dir_all(root.path().join("www")).unwrap();
    std::fs::copy(busybox, root.path().join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
    let out = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar failed:\n{}", describe(&out));
    out.stdout
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let code = resp.status().as_u16();
        (code, resp.text().await.unwrap_or_default())
    }

    async fn get(&self, path: &str) -> Value {
        let (code, text) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(code, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let (code, text) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(code, 200, "POST {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
    }
}

fn journal(d: &Droplet) -> String {
    stdout(&d.ssh("root", "journalctl -u nomad --no-pager -n 60"))
}

/// Polls `f` every half second until it returns Some, or panics with `what` and the journal.
async fn wait_for<T, F, Fut>(d: &Droplet, secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {secs} s waiting for {what}\nnomad journal:\n{}",
                journal(d)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The allocations of job `web` that are running and healthy (none while the API is down).
async fn healthy_allocs(api: &Api) -> Vec<Value> {
    let Ok(resp) = api
        .http
        .get(format!("{}/v1/job/web/allocations", api.base))
        .send()
        .await
    else {
        return Vec::new();
    };
    let allocs: Value = resp.json().await.unwrap_or(Value::Null);
    allocs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["ClientStatus"] == "running" && a["DeploymentStatus"]["Healthy"] == true)
        .cloned()
        .collect()
}

#[tokio::test]
async fn nomad_double_release_installs_in_a_droplet_and_runs_a_pdsup_shaped_job() {
    // Only the mirror is needed here (not Pebble or PLC).
    support::require_harness();
    let mirror = Command::new("curl")
        .args(["-fsS", "-o", "/dev/null", &mirror_url()])
        .output()
        .unwrap();
    assert!(
        mirror.status.success(),
        "the harness mirror {} does not answer: run scripts/harness/services.sh start\n{}",
        mirror_url(),
        describe(&mirror)
    );

    // The release on the mirror (built and signed by the harness script).
    let out = Command::new(harness_script("nomad-release.sh"))
        .arg(VERSION)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nomad-release.sh failed:\n{}",
        describe(&out)
    );
    let zip = stdout(&out).trim().to_string();
    assert!(
        zip.ends_with(&format!("nomad/{VERSION}/nomad_{VERSION}_linux_amd64.zip")),
        "{zip}"
    );

    let d = Droplet::start("bookworm");
    d.ssh_ok(
        "root",
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/tmp/apt.log 2>&1 \
         && apt-get install -y -qq docker.io unzip >>/tmp/apt.log 2>&1 || { tail -30 /tmp/apt.log; exit 1; }",
    );
    let out = d.ssh_with_stdin(
        "root",
        &format!("docker import - {IMAGE} >/dev/null"),
        &busybox_rootfs_tar(),
    );
    assert!(
        out.status.success(),
        "docker import failed:\n{}",
        describe(&out)
    );

    // Download, verify (signature, then checksum) and install, as pdsup's install path does.
    let base = format!("{}/nomad/{VERSION}", mirror_url());
    d.ssh_ok(
        "root",
        &format!(
            "set -e; cd /tmp; \
             curl -fsS -O {base}/nomad_{VERSION}_linux_amd64.zip -O {base}/nomad_{VERSION}_SHA256SUMS \
                  -O {base}/nomad_{VERSION}_SHA256SUMS.sig -O {mirror}/test-release-key.asc; \
             gpg --batch --dearmor < test-release-key.asc > release-keyring.gpg; \
             gpgv --keyring /tmp/release-keyring.gpg nomad_{VERSION}_SHA256SUMS.sig nomad_{VERSION}_SHA256SUMS; \
             sha256sum --check nomad_{VERSION}_SHA256SUMS; \
             unzip -o -q nomad_{VERSION}_linux_amd64.zip -d /usr/local/bin",
            mirror = mirror_url()
        ),
    );
    let version = d.ssh_ok("root", "/usr/local/bin/nomad version");
    assert_eq!(
        version.trim(),
        format!("Nomad v{VERSION} (pdsup test double, not HashiCorp Nomad)")
    );

    // A tampered SHA256SUMS must not verify: the signature check is real.
    let tampered = d.ssh(
        "root",
        &format!("cd /tmp && sed 's/^./0/' nomad_{VERSION}_SHA256SUMS > bad && gpgv --keyring /tmp/release-keyring.gpg nomad_{VERSION}_SHA256SUMS.sig bad"),
    );
    assert!(
        !tampered.status.success(),
        "gpgv accepted a tampered SHA256SUMS:\n{}",
        describe(&tampered)
    );

    // A host volume whose path does not exist: refused at start, like Nomad.
    let refused = d.ssh(
        "root",
        "mkdir -p /tmp/bad.d && cat > /tmp/bad.d/nomad.hcl <<'EOF'\n\
         data_dir = \"/tmp/bad-data\"\nbind_addr = \"0.0.0.0\"\nports {\n  http = 5646\n}\n\
         server {\n  enabled = true\n}\nclient {\n  enabled = true\n  host_volume \"gone\" {\n    path = \"/srv/nomad/gone\"\n  }\n}\nEOF\n\
         timeout 20 /usr/local/bin/nomad agent -config /tmp/bad.d",
    );
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let text = support::stderr(&refused);
    assert!(
        text.contains(
            "failed to validate volume gone, err: stat /srv/nomad/gone: no such file or directory"
        ),
        "{text}"
    );

    // The agent under systemd, Type=notify: `systemctl start` returns once READY=1 arrived.
    d.ssh_ok(
        "root",
        "mkdir -p /etc/nomad.d /opt/nomad/data /srv/nomad/web && : > /etc/nomad.d/nomad.env",
    );
    for (path, text) in [
        ("/etc/systemd/system/nomad.service", UNIT),
        ("/etc/nomad.d/nomad.hcl", CONFIG),
    ] {
        let out = d.ssh_with_stdin("root", &format!("cat > {path}"), text.as_bytes());
        assert!(out.status.success(), "writing {path}:\n{}", describe(&out));
    }
    let out = d.ssh(
        "root",
        "systemctl daemon-reload && timeout 60 systemctl start nomad",
    );
    assert!(
        out.status.success(),
        "systemctl start nomad:\n{}\n{}",
        describe(&out),
        journal(&d)
    );
    assert_eq!(
        d.ssh_ok("root", "systemctl is-active nomad").trim(),
        "active",
        "{}",
        journal(&d)
    );

    let api = Api {
        base: format!("http://{}:4646", d.ip),
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    let (code, text) = api
        .call(reqwest::Method::GET, "/v1/agent/health", None)
        .await;
    assert_eq!(code, 200, "{text}");
    let health: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(health["client"]["ok"], true);
    assert_eq!(health["server"]["ok"], true);
    let me = api.get("/v1/agent/self").await;
    assert_eq!(me["config"]["Version"]["Version"], VERSION);
    assert_eq!(
        me["config"]["Client"]["HostVolumes"][0]["Path"],
        "/srv/nomad/web"
    );
    let leader = api.get("/v1/status/leader").await;
    assert!(
        leader.as_str().is_some_and(|l| l.ends_with(":4647")),
        "{leader}"
    );

    let nodes = api.get("/v1/nodes").await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    assert_eq!(nodes[0]["Status"], "ready");
    let node = api
        .get(&format!("/v1/node/{}", nodes[0]["ID"].as_str().unwrap()))
        .await;
    assert_eq!(node["SchedulingEligibility"], "eligible");
    assert_eq!(
        node["Drivers"]["docker"]["Detected"], true,
        "{}",
        node["Drivers"]
    );
    assert_eq!(
        node["Drivers"]["docker"]["Healthy"], true,
        "{}",
        node["Drivers"]
    );
    assert_eq!(
        node["HostVolumes"]["web"],
        json!({"Name": "web", "Path": "/srv/nomad/web", "ReadOnly": false, "ID": ""})
    );

    // Plan (new job), register, wait for a healthy allocation and a successful deployment.
    let body = json!({"Job": job("hello from the env")});
    let plan = api
        .post(
            "/v1/job/web/plan",
            &json!({"Job": job("hello from the env"), "Diff": true}),
        )
        .await;
    assert_eq!(plan["Diff"]["Type"], "Added", "{plan}");
    assert_eq!(plan["FailedTGAllocs"], Value::Null, "{plan}");
    let reg = api.post("/v1/jobs", &body).await;
    let eval_id = reg["EvalID"].as_str().unwrap().to_string();
    assert!(!eval_id.is_empty(), "{reg}");
    let eval = api.get(&format!("/v1/evaluation/{eval_id}")).await;
    assert_eq!(eval["Status"], "complete");
    assert_eq!(eval["FailedTGAllocs"], Value::Null, "{eval}");

    let alloc = wait_for(&d, 120, "a running, healthy allocation", || async {
        healthy_allocs(&api).await.into_iter().next()
    })
    .await;
    let alloc_id = alloc["ID"].as_str().unwrap().to_string();
    assert_eq!(alloc["JobVersion"], 0);
    assert_eq!(alloc["TaskStates"]["web"]["State"], "running");
    let events: Vec<&str> = alloc["TaskStates"]["web"]["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Type"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"Started"), "{events:?}");
    let dep = wait_for(&d, 30, "a successful deployment", || async {
        let dep = api.get("/v1/job/web/deployment").await;
        (dep["Status"] == "successful").then_some(dep)
    })
    .await;
    assert_eq!(dep["TaskGroups"]["web"]["HealthyAllocs"], 1, "{dep}");

    // The service's address: a port on the droplet's loopback (network_interface "lo").
    let services = api.get("/v1/service/web").await;
    assert_eq!(services.as_array().map(Vec::len), Some(1), "{services}");
    assert_eq!(services[0]["AllocID"], alloc_id.as_str());
    assert_eq!(services[0]["Address"], "127.0.0.1");
    let port = services[0]["Port"].as_u64().unwrap();
    assert!((20000..32000).contains(&port), "dynamic port {port}");
    // Files cross the host volume both ways: ours is served, the task's is on the host.
    d.ssh_ok(
        "root",
        "echo 'written on the host' > /srv/nomad/web/hello.txt",
    );
    let got = d.ssh_ok(
        "root",
        &format!("curl -fsS http://127.0.0.1:{port}/hello.txt"),
    );
    assert_eq!(got.trim(), "written on the host");
    assert_eq!(
        d.ssh_ok("root", "cat /srv/nomad/web/written-by-task.txt")
            .trim(),
        "written by the task"
    );

    // Logs: plain text, the framed form, and Nomad's 400 without a type.
    let logs_path = format!("/v1/client/fs/logs/{alloc_id}?task=web");
    let (code, out) = api
        .call(
            reqwest::Method::GET,
            &format!("{logs_path}&type=stdout&plain=true"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert!(out.contains("hello from the env on stdout"), "{out:?}");
    let (_, err) = api
        .call(
            reqwest::Method::GET,
            &format!("{logs_path}&type=stderr&plain=true"),
            None,
        )
        .await;
    assert!(err.contains("web says hi on stderr"), "{err:?}");
    let (_, framed) = api
        .call(
            reqwest::Method::GET,
            &format!("{logs_path}&type=stdout"),
            None,
        )
        .await;
    let frame: Value = serde_json::from_str(&framed).unwrap_or_else(|e| panic!("{e}: {framed}"));
    assert_eq!(frame["File"], "alloc/logs/web.stdout.0", "{frame}");
    assert_eq!(frame["Offset"], 0, "{frame}");
    let data = frame["Data"].as_str().expect("base64 Data");
    let decoded = d.ssh_ok("root", &format!("echo {data} | base64 -d"));
    assert!(
        decoded.contains("hello from the env on stdout"),
        "{decoded:?}"
    );
    let (code, text) = api.call(reqwest::Method::GET, &logs_path, None).await;
    assert_eq!(
        (code, text.as_str()),
        (400, "must provide log type (stdout/stderr)")
    );

    // An identical re-submit changes nothing: Diff None, same version, same allocation.
    let plan = api
        .post(
            "/v1/job/web/plan",
            &json!({"Job": job("hello from the env"), "Diff": true}),
        )
        .await;
    assert_eq!(plan["Diff"]["Type"], "None", "{plan}");
    assert_eq!(
        plan["Annotations"]["DesiredTGUpdates"]["web"]["Ignore"], 1,
        "{plan}"
    );
    let again = api.post("/v1/jobs", &body).await;
    assert_eq!(again["JobModifyIndex"], reg["JobModifyIndex"], "{again}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let allocs = api.get("/v1/job/web/allocations").await;
    assert_eq!(allocs.as_array().map(Vec::len), Some(1), "{allocs}");
    assert_eq!(allocs[0]["ID"], alloc_id.as_str());
    assert_eq!(api.get("/v1/job/web").await["Version"], 0);

    // An agent restart adopts the running container instead of recreating it.
    let container = format!("web-{alloc_id}");
    let before = d.ssh_ok(
        "root",
        &format!("docker inspect -f '{{{{.Id}}}}' {container}"),
    );
    d.ssh_ok("root", "timeout 60 systemctl restart nomad");
    let after_restart = wait_for(&d, 60, "the allocation after an agent restart", || async {
        healthy_allocs(&api).await.into_iter().next()
    })
    .await;
    assert_eq!(after_restart["ID"], alloc_id.as_str());
    assert_eq!(
        d.ssh_ok(
            "root",
            &format!("docker inspect -f '{{{{.Id}}}}' {container}")
        ),
        before
    );
    assert_eq!(
        api.get("/v1/job/web").await["Version"],
        0,
        "the job survived the restart"
    );

    // A changed job replaces the allocation: new version, old container gone.
    let edited = json!({"Job": job("hello again")});
    let plan = api
        .post(
            "/v1/job/web/plan",
            &json!({"Job": job("hello again"), "Diff": true}),
        )
        .await;
    assert_eq!(plan["Diff"]["Type"], "Edited", "{plan}");
    assert_eq!(
        plan["Diff"]["TaskGroups"][0]["Tasks"][0]["Fields"][0]["Name"], "Env[GREETING]",
        "{plan}"
    );
    api.post("/v1/jobs", &edited).await;
    let replaced = wait_for(&d, 120, "the replacement allocation", || async {
        healthy_allocs(&api)
            .await
            .into_iter()
            .find(|a| a["JobVersion"] == 1)
    })
    .await;
    assert_ne!(replaced["ID"], alloc_id.as_str());
    let old = api.get(&format!("/v1/allocation/{alloc_id}")).await;
    assert_eq!(old["DesiredStatus"], "stop");
    let gone = d.ssh("root", &format!("docker inspect {container}"));
    assert!(!gone.status.success(), "the old container still exists");
}
