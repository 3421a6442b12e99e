//! `NomadApi` against two servers:
//! - `canned`: a tiny local HTTP server with fixed answers, for the edges real
//!   agents rarely show on demand (500 health, 404s, error bodies echoing secrets,
//!   a Driver Failure event, a node missing a host volume);
//! - `double`: the Nomad test double (`tests/nomad-double`, binary `nomad`) started
//!   with a throwaway config, running real docker tasks: health, node readiness,
//!   plan → register → healthy → unchanged plan, service address, logs, and an
//!   image that cannot be pulled.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use pdsup::nomad::api::{DiffType, LogStream, NomadApi};
use pdsup::nomad::job::pds_job;
use pdsup::secret::EnvValue;

// ---------------------------------------------------------------------------
// canned: a fixed-answer HTTP/1.1 server
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    target: String,
    body: String,
}

/// Answers `METHOD PATH` (the path without the query) with a fixed status and
/// body, 404 otherwise, and records every request.
struct Canned {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Canned {
    async fn start(routes: Vec<(&str, u16, String)>) -> Canned {
        let routes: Arc<HashMap<String, (u16, String)>> = Arc::new(
            routes
                .into_iter()
                .map(|(k, status, body)| (k.to_string(), (status, body)))
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    let path = req.target.split('?').next().unwrap_or("").to_string();
                    let (status, body) = routes
                        .get(&format!("{} {path}", req.method))
                        .cloned()
                        .unwrap_or((404, "job not found".into()));
                    recorded.lock().unwrap().push(req);
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Canned { addr, requests }
    }

    fn api(&self) -> NomadApi {
        NomadApi::new(self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut first = head.lines().next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    Some(Recorded {
        method,
        target,
        body,
    })
}

const SECRET: &str = "c0ffee0123456789c0ffee0123456789";

fn secret_job() -> pdsup::nomad::job::Job {
    pds_job(
        "ghcr.io/bluesky-social/pds:0.4",
        vec![
            ("PDS_HOSTNAME".into(), EnvValue::plain("pds.example.com")),
            ("PDS_JWT_SECRET".into(), EnvValue::secret(SECRET)),
        ],
    )
}

#[tokio::test]
async fn canned_unhealthy_agent_is_a_result_not_an_error() {
    let body = json!({"client": {"ok": false, "message": "no known servers"}}).to_string();
    let server = Canned::start(vec![("GET /v1/agent/health", 500, body)]).await;
    let health = server
        .api()
        .agent_health()
        .await
        .expect("a 500 health is an answer");
    assert!(!health.is_healthy());
    assert_eq!(health.problem().unwrap(), "client: no known servers");
}

#[tokio::test]
async fn canned_missing_job_is_none_and_new_job_plans_as_added() {
    let server = Canned::start(vec![]).await;
    let api = server.api();
    assert_eq!(api.job("pds").await.unwrap(), None);
    assert_eq!(api.plan_diff(&secret_job()).await.unwrap(), DiffType::Added);
    assert!(api.allocations("pds").await.unwrap().is_empty());
    assert_eq!(api.deployment("pds").await.unwrap(), None);
}

#[tokio::test]
async fn canned_plan_reads_the_diff_type_and_sends_diff_true() {
    let body =
        json!({"Diff": {"Type": "None", "ID": "pds"}, "FailedTGAllocs": null, "Warnings": ""})
            .to_string();
    let server = Canned::start(vec![("POST /v1/job/pds/plan", 200, body)]).await;
    let diff = server.api().plan_diff(&secret_job()).await.unwrap();
    assert_eq!(diff, DiffType::None);
    let req = &server.requests()[0];
    let sent: Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(sent["Diff"], true);
    assert_eq!(sent["Job"]["ID"], "pds");
    assert_eq!(
        sent["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["PDS_JWT_SECRET"],
        SECRET
    );
}

#[tokio::test]
async fn canned_errors_name_the_call_and_never_the_secrets() {
    // A server that echoes the request into its error, as some validation errors do.
    let echo =
        format!("1 error occurred:\n\t* Task \"pds\": env PDS_JWT_SECRET={SECRET} is invalid");
    let server = Canned::start(vec![("POST /v1/jobs", 400, echo)]).await;
    let err = server.api().register(&secret_job()).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("POST /v1/jobs"), "{text}");
    assert!(text.contains("400"), "{text}");
    assert!(text.contains("is invalid"), "{text}");
    assert!(!text.contains(SECRET), "the error shows a secret: {text}");
    assert!(text.contains("********"), "{text}");
    assert_eq!(err.status(), Some(400));
    // The secret did travel in the body (to Nomad, through the tunnel).
    assert!(server.requests()[0].body.contains(SECRET));
}

#[tokio::test]
async fn canned_register_returns_the_eval_id() {
    let body = json!({"EvalID": "e1", "EvalCreateIndex": 5, "JobModifyIndex": 5, "Warnings": ""})
        .to_string();
    let server = Canned::start(vec![("POST /v1/jobs", 200, body)]).await;
    let eval = server.api().register(&secret_job()).await.unwrap();
    assert_eq!(eval.0, "e1");
    let sent: Value = serde_json::from_str(&server.requests()[0].body).unwrap();
    assert_eq!(sent["Job"]["ID"], "pds");
}

#[tokio::test]
async fn canned_logs_ask_for_the_plain_tail() {
    let server = Canned::start(vec![(
        "GET /v1/client/fs/logs/a1",
        200,
        "line 1\nline 2\n".into(),
    )])
    .await;
    let text = server
        .api()
        .logs("a1", "pds", LogStream::Stderr)
        .await
        .unwrap();
    assert_eq!(text, "line 1\nline 2\n");
    let target = &server.requests()[0].target;
    for part in [
        "task=pds",
        "type=stderr",
        "plain=true",
        "origin=end",
        "offset=4096",
    ] {
        assert!(target.contains(part), "{target} lacks {part}");
    }
}

#[tokio::test]
async fn canned_service_addresses() {
    let body = json!([{"ID": "_nomad-task-x", "ServiceName": "pds", "Address": "127.0.0.1", "Port": 3000}]).to_string();
    let server = Canned::start(vec![("GET /v1/service/pds", 200, body)]).await;
    assert_eq!(
        server.api().service("pds").await.unwrap(),
        vec![("127.0.0.1".to_string(), 3000)]
    );
}

fn node_routes(volumes: Value) -> Vec<(&'static str, u16, String)> {
    vec![
        (
            "GET /v1/agent/health",
            200,
            json!({"client": {"ok": true, "message": "ok"}, "server": {"ok": true, "message": "ok"}}).to_string(),
        ),
        (
            "GET /v1/agent/self",
            200,
            json!({
                "config": {"NodeName": "droplet", "Version": {"Version": "1.10.5"},
                           "Client": {"HostVolumes": [{"Name": "pds", "Path": "/srv/nomad/pds", "ReadOnly": false}]}},
                "member": {},
                "stats": {"client": {"node_id": "n1"}}
            })
            .to_string(),
        ),
        (
            "GET /v1/nodes",
            200,
            json!([{"ID": "n1", "Name": "droplet", "Status": "ready"}]).to_string(),
        ),
        (
            "GET /v1/node/n1",
            200,
            json!({
                "ID": "n1", "Name": "droplet", "Status": "ready", "SchedulingEligibility": "eligible",
                "Drivers": {"docker": {"Detected": true, "Healthy": true, "HealthDescription": "Healthy"}},
                "HostVolumes": volumes
            })
            .to_string(),
        ),
    ]
}

#[tokio::test]
async fn canned_node_ready_with_its_volumes() {
    let server = Canned::start(node_routes(
        json!({"pds": {"Name": "pds", "Path": "/srv/nomad/pds"}}),
    ))
    .await;
    let api = server.api();
    let me = api.agent_self().await.unwrap();
    assert_eq!(me.version, "1.10.5");
    assert_eq!(me.node_id.as_deref(), Some("n1"));
    assert_eq!(me.host_volumes[0].name, "pds");
    let node = api.local_node().await.unwrap().expect("the node");
    assert!(node.is_ready() && node.docker_ok());
    let mut seen = Vec::new();
    api.wait_node_ready(&["pds"], Duration::from_secs(5), &mut |m| {
        seen.push(m.to_string())
    })
    .await
    .unwrap();
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn canned_node_wait_names_the_missing_volume() {
    let server = Canned::start(node_routes(
        json!({"pds": {"Name": "pds", "Path": "/srv/nomad/pds"}}),
    ))
    .await;
    let mut seen = Vec::new();
    let err = server
        .api()
        .wait_node_ready(&["pds", "io"], Duration::from_secs(2), &mut |m| {
            seen.push(m.to_string())
        })
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("host volume(s) io"), "{text}");
    assert!(text.contains("it has: pds"), "{text}");
    assert_eq!(seen.len(), 1, "progress repeats: {seen:?}");
}

#[tokio::test]
async fn canned_node_wait_when_nomad_is_down() {
    // Nothing listens on this port once the listener is dropped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = NomadApi::new(port)
        .wait_node_ready(&["pds"], Duration::from_secs(1), &mut |_| {})
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("does not answer"), "{text}");
    assert!(text.contains("GET /v1/agent/health"), "{text}");
}

/// A canned Nomad where job `pds` is at `version` with `allocs`, plus `extra` routes.
async fn canned_pds_job(
    version: u64,
    allocs: serde_json::Value,
    mut extra: Vec<(&str, u16, String)>,
) -> Canned {
    extra.push((
        "GET /v1/job/pds",
        200,
        json!({"ID": "pds", "Version": version}).to_string(),
    ));
    extra.push(("GET /v1/job/pds/allocations", 200, allocs.to_string()));
    Canned::start(extra).await
}

#[tokio::test]
async fn canned_driver_failure_quotes_the_event_and_stderr() {
    let allocs = json!([{
        "ID": "a1b2c3d4-0000-0000-0000-000000000000", "JobID": "pds", "JobVersion": 0,
        "TaskGroup": "pds", "DesiredStatus": "run", "ClientStatus": "pending", "CreateIndex": 9,
        "TaskStates": {"pds": {"State": "pending", "Events": [
            {"Type": "Received", "DisplayMessage": "Task received by client"},
            {"Type": "Driver Failure", "DisplayMessage": "Failed to pull `example.invalid/pds:9`: manifest unknown"}
        ]}},
        "DeploymentStatus": null
    }]);
    let job = json!({"ID": "pds", "Version": 0, "TaskGroups": [{"Name": "pds", "Tasks": [
        {"Name": "pds", "Config": {"image": "example.invalid/pds:9"}}]}]});
    let server = Canned::start(vec![
        ("GET /v1/job/pds", 200, job.to_string()),
        ("GET /v1/job/pds/allocations", 200, allocs.to_string()),
        (
            "GET /v1/client/fs/logs/a1b2c3d4-0000-0000-0000-000000000000",
            200,
            "starting\nError: cannot open /pds\n".into(),
        ),
    ])
    .await;
    let err = server
        .api()
        .wait_job_healthy("pds", Duration::from_secs(10), &mut |_| {})
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("Driver Failure: Failed to pull `example.invalid/pds:9`"),
        "{text}"
    );
    assert!(text.contains("(image example.invalid/pds:9)"), "{text}");
    assert!(text.contains("Error: cannot open /pds"), "{text}");
}

#[tokio::test]
async fn canned_healthy_alloc_of_the_current_version() {
    let allocs = json!([
        {"ID": "old", "JobVersion": 0, "DesiredStatus": "stop", "ClientStatus": "complete", "CreateIndex": 3},
        {"ID": "new", "JobVersion": 1, "DesiredStatus": "run", "ClientStatus": "running", "CreateIndex": 7,
         "TaskStates": {"pds": {"State": "running", "Events": [{"Type": "Started", "DisplayMessage": "Task started by client"}]}},
         "DeploymentStatus": {"Healthy": true}}
    ]);
    let server = canned_pds_job(1, allocs, vec![]).await;
    server
        .api()
        .wait_job_healthy("pds", Duration::from_secs(5), &mut |_| {})
        .await
        .unwrap();
}

#[tokio::test]
async fn canned_unplaceable_job_says_why() {
    let evals = json!([{"ID": "e1", "Status": "complete", "CreateIndex": 4,
        "FailedTGAllocs": {"pds": {"NodesEvaluated": 1, "NodesFiltered": 1,
            "ConstraintFiltered": {"missing compatible host volumes": 1}}}}]);
    let server = canned_pds_job(
        0,
        json!([]),
        vec![("GET /v1/job/pds/evaluations", 200, evals.to_string())],
    )
    .await;
    let mut seen = Vec::new();
    let err = server
        .api()
        .wait_job_healthy("pds", Duration::from_secs(2), &mut |m| {
            seen.push(m.to_string())
        })
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("missing compatible host volumes"), "{text}");
    assert!(
        seen.iter()
            .any(|m| m.contains("missing compatible host volumes")),
        "{seen:?}"
    );
}

// ---------------------------------------------------------------------------
// double: the Nomad test double with real docker tasks
// ---------------------------------------------------------------------------

mod double {
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::Duration;

    use pdsup::nomad::api::NomadApi;

    /// The tiny image the jobs run: busybox-static's httpd on port 3000 serving
    /// `/xrpc/_health`, saying one line on stdout and one on stderr first.
    pub const IMAGE: &str = "pdsup-test/busybox-httpd:1";
    pub const STDOUT_LINE: &str = "pdsup-test says hello on stdout";
    pub const STDERR_LINE: &str = "pdsup-test says hello on stderr";

    fn run(cmd: &mut Command) -> String {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Builds the double (cheap when up to date) next to this test's own profile
    /// directory and returns its path. `NOMAD_DOUBLE_BIN` overrides.
    pub fn binary() -> &'static Path {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        BIN.get_or_init(|| {
            if let Some(p) = std::env::var_os("NOMAD_DOUBLE_BIN") {
                return PathBuf::from(p);
            }
            let exe = std::env::current_exe().expect("test binary path");
            // <target>/<profile>/deps/nomad_api-HASH
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "-p", "nomad-double", "--bin", "nomad"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            run(&mut cmd);
            let bin = profile_dir.join("nomad");
            assert!(
                bin.exists(),
                "{} missing after building nomad-double",
                bin.display()
            );
            bin
        })
    }

    /// Imports the test image from the host's busybox-static, once.
    pub fn image() -> &'static str {
        static DONE: OnceLock<()> = OnceLock::new();
        DONE.get_or_init(|| {
            let present = Command::new("docker")
                .args(["image", "inspect", IMAGE])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("docker CLI")
                .success();
            if present {
                return;
            }
            let busybox = Path::new("/bin/busybox");
            assert!(
                busybox.exists(),
                "/bin/busybox is missing: apt-get install busybox-static"
            );
            let root = tempfile::tempdir().unwrap();
            let r = root.path();
            std::fs::create_dir_all(r.join("bin")).unwrap();
            std::fs::create_dir_all(r.join("www/xrpc")).unwrap();
            std::fs::copy(busybox, r.join("bin/busybox")).unwrap();
            std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
            std::fs::write(r.join("www/xrpc/_health"), "{\"version\":\"test\"}\n").unwrap();
            std::fs::write(r.join("www/index.html"), "ok\n").unwrap();
            let script = format!(
                "echo '{STDOUT_LINE}'; echo '{STDERR_LINE}' >&2; exec /bin/busybox httpd -f -v -p 3000 -h /www"
            );
            let cmd_json = serde_json::to_string(&["/bin/busybox", "sh", "-c", &script]).unwrap();
            let tar = root.path().join("rootfs.tar");
            run(Command::new("tar")
                .arg("-C")
                .arg(r)
                .args(["--exclude", "./rootfs.tar", "-cf"])
                .arg(&tar)
                .arg("."));
            run(Command::new("docker")
                .args(["import", "-c", &format!("CMD {cmd_json}")])
                .arg(&tar)
                .arg(IMAGE));
        });
        IMAGE
    }

    pub fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// One double agent: its own data dir, host volumes and ports; killed, and
    /// its containers removed, on drop.
    pub struct Agent {
        child: Child,
        dir: tempfile::TempDir,
        pub api: NomadApi,
        pub node_id: Option<String>,
    }

    impl Agent {
        pub fn start(volumes: &[&str]) -> Agent {
            let bin = binary();
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let config_dir = d.join("config");
            std::fs::create_dir_all(&config_dir).unwrap();
            let mut host_volumes = String::new();
            for v in volumes {
                let path = d.join("volumes").join(v);
                std::fs::create_dir_all(&path).unwrap();
                host_volumes.push_str(&format!(
                    "  host_volume \"{v}\" {{\n    path      = \"{}\"\n    read_only = false\n  }}\n",
                    path.display()
                ));
            }
            let (http, rpc, serf) = (free_port(), free_port(), free_port());
            let config = format!(
                r#"data_dir  = "{data}"
bind_addr = "127.0.0.1"

ports {{
  http = {http}
  rpc  = {rpc}
  serf = {serf}
}}

advertise {{
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}}

server {{
  enabled          = true
  bootstrap_expect = 1
}}

client {{
  enabled           = true
  servers           = ["127.0.0.1:{rpc}"]
  network_interface = "lo"
{host_volumes}}}
"#,
                data = d.join("data").display()
            );
            std::fs::write(config_dir.join("agent.hcl"), config).unwrap();
            let log = std::fs::File::create(d.join("agent.log")).unwrap();
            let child = Command::new(bin)
                .args(["agent", "-config"])
                .arg(&config_dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let addr: SocketAddr = ([127, 0, 0, 1], http).into();
            Agent {
                child,
                dir,
                api: NomadApi::new(addr),
                node_id: None,
            }
        }

        pub fn volume_path(&self, name: &str) -> PathBuf {
            self.dir.path().join("volumes").join(name)
        }

        /// The agent's whole log.
        pub fn full_log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
        }

        /// The end of the agent's log, for failure messages.
        pub fn log(&self) -> String {
            let text = self.full_log();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }

        /// Waits for the node (with `volumes`) and remembers its ID for cleanup.
        pub async fn ready(&mut self, volumes: &[&str]) {
            let res = self
                .api
                .wait_node_ready(volumes, Duration::from_secs(60), &mut |m| eprintln!("{m}"))
                .await;
            if let Err(e) = res {
                panic!("{e:#}\nagent log:\n{}", self.log());
            }
            self.node_id = self.api.agent_self().await.ok().and_then(|s| s.node_id);
        }
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            // Only the process this test started, by its handle.
            let _ = self.child.kill();
            let _ = self.child.wait();
            // Like Nomad, the double leaves task containers running when it stops.
            if let Some(id) = &self.node_id {
                let ids = Command::new("docker")
                    .args([
                        "ps",
                        "-aq",
                        "--filter",
                        &format!("label=com.hashicorp.nomad.node_id={id}"),
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker")
                        .args(["rm", "-f"])
                        .args(&ids)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

use double::Agent;

/// The seed's pds job around the test image, on a free static port (the real
/// one, 3000, may be taken on a shared test machine), with a secret in its env.
fn test_job(image: &str, port: u16) -> pdsup::nomad::job::Job {
    let mut job = pds_job(
        image,
        vec![
            ("PDS_HOSTNAME".into(), EnvValue::plain("pds.test")),
            ("PDS_JWT_SECRET".into(), EnvValue::secret(SECRET)),
        ],
    );
    let group = &mut job.groups[0];
    group.ports[0].static_port = Some(port);
    // Small enough for any test machine.
    group.tasks[0].resources.memory_mb = 64;
    group.tasks[0].resources.cpu_mhz = 100;
    // Fail fast: no restarts of a broken task.
    group.restart = Some(pdsup::nomad::job::Restart {
        attempts: 0,
        interval: Duration::from_secs(60),
        delay: Duration::from_secs(1),
        mode: "fail".into(),
    });
    job
}

async fn http_get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn double_agent_and_node() {
    let mut agent = Agent::start(&["pds", "io"]);
    agent.ready(&["pds", "io"]).await;
    let api = &agent.api;
    let health = api.agent_health().await.unwrap();
    assert!(health.is_healthy(), "{health:?}");
    let me = api.agent_self().await.unwrap();
    assert!(!me.version.is_empty());
    let mut names: Vec<&str> = me.host_volumes.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["io", "pds"]);
    let pds_path = me
        .host_volumes
        .iter()
        .find(|v| v.name == "pds")
        .unwrap()
        .path
        .clone();
    assert_eq!(Path::new(&pds_path), agent.volume_path("pds"));
    let node = api.local_node().await.unwrap().expect("the local node");
    assert!(node.is_ready(), "{node:?}");
    assert!(node.docker_ok(), "{node:?}");
    assert_eq!(node.host_volume_names(), ["io", "pds"]);
    assert_eq!(Some(&node.id), me.node_id.as_ref());

    // A volume the client does not have: the timeout names it.
    let err = api
        .wait_node_ready(&["pds", "backups"], Duration::from_secs(2), &mut |_| {})
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("backups"), "{text}");
}

/// A first start (version 0) is waited for until its allocation runs; an
/// update (version 1) until Nomad finds the new allocation healthy.
#[tokio::test]
async fn double_first_start_waits_for_running_and_an_update_for_health() {
    let image = double::image();
    let mut agent = Agent::start(&["pds"]);
    agent.ready(&["pds"]).await;
    let api = agent.api.clone();
    let port = double::free_port();
    let job = test_job(image, port);
    api.register(&job).await.unwrap();
    if let Err(e) = api
        .wait_job_started("pds", Duration::from_secs(120), &mut |m| eprintln!("{m}"))
        .await
    {
        panic!("{e:#}\nagent log:\n{}", agent.log());
    }
    let allocs = api.allocations("pds").await.unwrap();
    let first = allocs
        .iter()
        .find(|a| a.job_version == 0)
        .expect("version 0's allocation");
    assert_eq!(first.client_status, "running", "{first:?}");
    assert!(
        !first.task_states.is_empty() && first.task_states.values().all(|t| t.state == "running"),
        "{first:?}"
    );

    let mut edited = job.clone();
    edited.groups[0].tasks[0]
        .env
        .push(("TZ".into(), EnvValue::plain("UTC")));
    api.register(&edited).await.unwrap();
    if let Err(e) = api
        .wait_job_started("pds", Duration::from_secs(120), &mut |m| eprintln!("{m}"))
        .await
    {
        panic!("{e:#}\nagent log:\n{}", agent.log());
    }
    let allocs = api.allocations("pds").await.unwrap();
    let second = allocs
        .iter()
        .filter(|a| a.job_version == 1)
        .max_by_key(|a| a.create_index)
        .expect("version 1's allocation");
    let deployed = match api.deployment("pds").await.unwrap() {
        Some(d) => d.job_version == 1 && d.status == "successful",
        None => false,
    };
    assert!(
        second.client_status == "running" && (second.healthy() == Some(true) || deployed),
        "{second:?}"
    );
}

#[tokio::test]
async fn double_job_lifecycle() {
    let image = double::image();
    let mut agent = Agent::start(&["pds"]);
    agent.ready(&["pds"]).await;
    let api = agent.api.clone();
    let port = double::free_port();
    let job = test_job(image, port);

    assert_eq!(api.plan_diff(&job).await.unwrap(), DiffType::Added);
    assert_eq!(api.job("pds").await.unwrap(), None);
    let eval = api.register(&job).await.unwrap();
    assert!(!eval.0.is_empty());

    let mut seen = Vec::new();
    let res = api
        .wait_job_healthy("pds", Duration::from_secs(120), &mut |m| {
            eprintln!("{m}");
            seen.push(m.to_string())
        })
        .await;
    if let Err(e) = res {
        panic!("{e:#}\nagent log:\n{}", agent.log());
    }

    // Identical re-submit changes nothing; a changed env would.
    assert_eq!(api.plan_diff(&job).await.unwrap(), DiffType::None);
    let mut edited = job.clone();
    edited.groups[0].tasks[0]
        .env
        .push(("TZ".into(), EnvValue::plain("UTC")));
    assert_eq!(api.plan_diff(&edited).await.unwrap(), DiffType::Edited);

    // What Nomad stored is what we sent (names and nesting right, nothing dropped).
    let stored = api.job("pds").await.unwrap().expect("the job");
    let group = &stored["TaskGroups"][0];
    assert_eq!(group["Volumes"]["pds"]["Type"], "host");
    assert_eq!(group["Services"][0]["Provider"], "nomad");
    assert_eq!(group["Networks"][0]["ReservedPorts"][0]["Value"], port);
    assert_eq!(group["Networks"][0]["ReservedPorts"][0]["To"], 3000);
    assert_eq!(group["Tasks"][0]["VolumeMounts"][0]["Destination"], "/pds");
    assert_eq!(group["Tasks"][0]["Resources"]["MemoryMB"], 64);

    let allocs = api.allocations("pds").await.unwrap();
    let alloc = allocs
        .iter()
        .find(|a| a.client_status == "running")
        .expect("a running alloc");
    assert_eq!(alloc.job_version, stored["Version"].as_u64().unwrap());

    // The service is registered where the task listens, on loopback.
    let addrs = api.service("pds").await.unwrap();
    assert_eq!(addrs, vec![("127.0.0.1".to_string(), port)]);
    let answer = http_get(port, "/xrpc/_health").await;
    assert!(answer.contains("\"version\":\"test\""), "{answer}");

    let stdout = api.logs(&alloc.id, "pds", LogStream::Stdout).await.unwrap();
    assert!(stdout.contains(double::STDOUT_LINE), "{stdout:?}");
    let stderr = api.logs(&alloc.id, "pds", LogStream::Stderr).await.unwrap();
    assert!(stderr.contains(double::STDERR_LINE), "{stderr:?}");

    if let Some(d) = api.deployment("pds").await.unwrap() {
        assert_eq!(d.status, "successful", "{d:?}");
    }

    // The double logs every key Nomad would have dropped silently: there must be none.
    let log = agent.full_log();
    for dropped in ["ignoring unknown field", "dropping volume"] {
        assert!(
            !log.contains(dropped),
            "Nomad would drop part of our job:\n{log}"
        );
    }

    api.deregister("pds", true).await.unwrap();
    assert_eq!(api.deregister("nope", true).await.unwrap(), None);
}

#[tokio::test]
async fn double_io_job_is_placed_and_force_pulls() {
    let mut agent = Agent::start(&["io"]);
    agent.ready(&["io"]).await;
    // The image exists locally, but force_pull pulls it anyway, as for IO's `latest`
    // tag; here the registry is unreachable, so the pull fails once placed.
    let image = "127.0.0.1:1/agentio/io:latest";
    let job = pdsup::nomad::job::io_job(image);
    assert_eq!(agent.api.plan_diff(&job).await.unwrap(), DiffType::Added);
    let plan = agent.api.plan(&job).await.unwrap();
    assert!(plan.failed_placements.is_empty(), "{plan:?}");
    agent.api.register(&job).await.unwrap();
    let err = agent
        .api
        .wait_job_healthy("io", Duration::from_secs(120), &mut |m| eprintln!("{m}"))
        .await
        .expect_err("the pull fails");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("Failed to pull `{image}`")),
        "{text}"
    );
    let stored = agent.api.job("io").await.unwrap().unwrap();
    let task = &stored["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Config"]["network_mode"], "host");
    assert_eq!(task["Config"]["force_pull"], true);
    assert_eq!(stored["TaskGroups"][0]["Services"][0]["Provider"], "nomad");
    let log = agent.full_log();
    assert!(!log.contains("ignoring unknown field"), "{log}");
}

#[tokio::test]
async fn double_missing_host_volume_is_reported_by_plan_and_wait() {
    // The client has no "pds" volume: Nomad cannot place the job.
    let mut agent = Agent::start(&["io"]);
    agent.ready(&["io"]).await;
    let job = test_job(double::image(), double::free_port());
    let plan = agent.api.plan(&job).await.unwrap();
    assert_eq!(plan.diff, DiffType::Added);
    assert!(
        plan.failed_placements
            .iter()
            .any(|f| f.contains("missing compatible host volumes")),
        "{plan:?}"
    );
    agent.api.register(&job).await.unwrap();
    let err = agent
        .api
        .wait_job_healthy("pds", Duration::from_secs(60), &mut |m| eprintln!("{m}"))
        .await
        .expect_err("unplaceable");
    let text = format!("{err:#}");
    assert!(text.contains("missing compatible host volumes"), "{text}");
}

#[tokio::test]
async fn double_unpullable_image_names_the_image() {
    let mut agent = Agent::start(&["pds"]);
    agent.ready(&["pds"]).await;
    // Nothing listens on port 1: the pull fails at once, offline or not.
    let image = "127.0.0.1:1/pdsup-test/missing:1";
    let job = test_job(image, double::free_port());
    agent.api.register(&job).await.unwrap();
    let err = agent
        .api
        .wait_job_healthy("pds", Duration::from_secs(120), &mut |m| eprintln!("{m}"))
        .await
        .expect_err("an image that cannot be pulled");
    let text = format!("{err:#}");
    eprintln!("{text}");
    assert!(text.contains(image), "{text}");
    assert!(text.to_lowercase().contains("pull"), "{text}");
    assert!(
        !text.contains("was not healthy after"),
        "it waited for the timeout: {text}"
    );
}

#[tokio::test]
async fn double_crashing_task_quotes_its_stderr() {
    let image = double::image();
    let mut agent = Agent::start(&["pds"]);
    agent.ready(&["pds"]).await;
    let mut job = test_job(image, double::free_port());
    job.groups[0].tasks[0].args = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "echo 'cannot open /pds/account.sqlite' >&2; exit 3".into(),
    ];
    agent.api.register(&job).await.unwrap();
    let err = agent
        .api
        .wait_job_healthy("pds", Duration::from_secs(120), &mut |m| eprintln!("{m}"))
        .await
        .expect_err("a task that exits");
    let text = format!("{err:#}");
    eprintln!("{text}");
    assert!(text.contains("cannot open /pds/account.sqlite"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn canned_recovered_driver_failure_is_not_fatal() {
    // A container that could not start once, then started and became healthy.
    let allocs = json!([{
        "ID": "a1", "JobVersion": 0, "DesiredStatus": "run", "ClientStatus": "running", "CreateIndex": 7,
        "TaskStates": {"pds": {"State": "running", "Restarts": 1, "Events": [
            {"Type": "Driver Failure", "DisplayMessage": "failed to start container"},
            {"Type": "Restarting", "DisplayMessage": "Task restarting in 15s"},
            {"Type": "Started", "DisplayMessage": "Task started by client"}
        ]}},
        "DeploymentStatus": {"Healthy": true}
    }]);
    let server = canned_pds_job(0, allocs, vec![]).await;
    server
        .api()
        .wait_job_healthy("pds", Duration::from_secs(5), &mut |_| {})
        .await
        .unwrap();
}
