//! `NomadApi` against two servers:
//! - `canned`: a tiny local HTTP server with fixed answers, for the edges real
//!   agents rarely show on demand (500 health, 404s, error bodies echoing secrets,
//!   a Driver Failure event, a node missing a host volume);
//! - `double`: the Nomad test double (`tests/nomad-double`, binary `nomad`) started
//!   with a throwaway config, running real docker tasks: health, node readiness,
//!   plan → register → healthy → unchanged plan, service address, logs, and an
//!   image that cannot be pulled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use pdsup::nomad::api::{DiffType, LogStream, NomadApi};
use pdsup::nomad::job::{pds_job, EnvValue};

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
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let routes = routes.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else { return };
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
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
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
    Some(Recorded { method, target, body })
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
    let health = server.api().agent_health().await.expect("a 500 health is an answer");
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
    let body = json!({"Diff": {"Type": "None", "ID": "pds"}, "FailedTGAllocs": null, "Warnings": ""}).to_string();
    let server = Canned::start(vec![("POST /v1/job/pds/plan", 200, body)]).await;
    let diff = server.api().plan_diff(&secret_job()).await.unwrap();
    assert_eq!(diff, DiffType::None);
    let req = &server.requests()[0];
    let sent: Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(sent["Diff"], true);
    assert_eq!(sent["Job"]["ID"], "pds");
    assert_eq!(sent["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["PDS_JWT_SECRET"], SECRET);
}

#[tokio::test]
async fn canned_errors_name_the_call_and_never_the_secrets() {
    // A server that echoes the request into its error, as some validation errors do.
    let echo = format!("1 error occurred:\n\t* Task \"pds\": env PDS_JWT_SECRET={SECRET} is invalid");
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
    let body = json!({"EvalID": "e1", "EvalCreateIndex": 5, "JobModifyIndex": 5, "Warnings": ""}).to_string();
    let server = Canned::start(vec![("POST /v1/jobs", 200, body)]).await;
    let eval = server.api().register(&secret_job()).await.unwrap();
    assert_eq!(eval.0, "e1");
    let sent: Value = serde_json::from_str(&server.requests()[0].body).unwrap();
    assert_eq!(sent["Job"]["ID"], "pds");
}

#[tokio::test]
async fn canned_logs_ask_for_the_plain_tail() {
    let server = Canned::start(vec![("GET /v1/client/fs/logs/a1", 200, "line 1\nline 2\n".into())]).await;
    let text = server.api().logs("a1", "pds", LogStream::Stderr).await.unwrap();
    assert_eq!(text, "line 1\nline 2\n");
    let target = &server.requests()[0].target;
    for part in ["task=pds", "type=stderr", "plain=true", "origin=end", "offset=4096"] {
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
    let server = Canned::start(node_routes(json!({"pds": {"Name": "pds", "Path": "/srv/nomad/pds"}}))).await;
    let api = server.api();
    let me = api.agent_self().await.unwrap();
    assert_eq!(me.version, "1.10.5");
    assert_eq!(me.node_id.as_deref(), Some("n1"));
    assert_eq!(me.host_volumes[0].name, "pds");
    let node = api.local_node().await.unwrap().expect("the node");
    assert!(node.is_ready() && node.docker_ok());
    let mut seen = Vec::new();
    api.wait_node_ready(&["pds"], Duration::from_secs(5), &mut |m| seen.push(m.to_string()))
        .await
        .unwrap();
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn canned_node_wait_names_the_missing_volume() {
    let server = Canned::start(node_routes(json!({"pds": {"Name": "pds", "Path": "/srv/nomad/pds"}}))).await;
    let mut seen = Vec::new();
    let err = server
        .api()
        .wait_node_ready(&["pds", "io"], Duration::from_secs(2), &mut |m| seen.push(m.to_string()))
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
    assert!(text.contains("Driver Failure: Failed to pull `example.invalid/pds:9`"), "{text}");
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
    let server = Canned::start(vec![
        ("GET /v1/job/pds", 200, json!({"ID": "pds", "Version": 1}).to_string()),
        ("GET /v1/job/pds/allocations", 200, allocs.to_string()),
    ])
    .await;
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
    let server = Canned::start(vec![
        ("GET /v1/job/pds", 200, json!({"ID": "pds", "Version": 0}).to_string()),
        ("GET /v1/job/pds/allocations", 200, "[]".into()),
        ("GET /v1/job/pds/evaluations", 200, evals.to_string()),
    ])
    .await;
    let mut seen = Vec::new();
    let err = server
        .api()
        .wait_job_healthy("pds", Duration::from_secs(2), &mut |m| seen.push(m.to_string()))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("missing compatible host volumes"), "{text}");
    assert!(seen.iter().any(|m| m.contains("missing compatible host volumes")), "{seen:?}");
}
