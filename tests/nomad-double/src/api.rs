//! The HTTP API: the subset of Nomad's `/v1` endpoints that pdsup uses, with Nomad's JSON
//! shapes, status codes and plain-text error bodies, the `X-Nomad-Index` headers, `?pretty`
//! and blocking queries (`?index=N&wait=5s`).

use crate::agent::{Agent, ApiError};
use crate::checks;
use crate::job::{self, Job};
use crate::state::Alloc;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

type Q = Query<HashMap<String, String>>;
type A = State<Arc<Agent>>;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/health", get(agent_health))
        .route("/v1/agent/members", get(agent_members))
        .route("/v1/agent/servers", get(agent_servers))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route("/v1/regions", get(regions))
        .route("/v1/nodes", get(nodes))
        .route("/v1/node/{id}", get(node))
        .route("/v1/node/{id}/allocations", get(node_allocs))
        .route("/v1/jobs", get(jobs).post(register).put(register))
        .route(
            "/v1/job/{id}",
            get(job_get)
                .post(register_named)
                .put(register_named)
                .delete(job_delete),
        )
        .route("/v1/job/{id}/plan", post(job_plan).put(job_plan))
        .route("/v1/job/{id}/{sub}", get(job_sub))
        .route("/v1/validate/job", post(validate_job).put(validate_job))
        .route("/v1/allocations", get(allocations))
        .route("/v1/allocation/{id}", get(allocation))
        .route("/v1/evaluations", get(evaluations))
        .route("/v1/evaluation/{id}", get(evaluation))
        .route("/v1/evaluation/{id}/allocations", get(evaluation_allocs))
        .route("/v1/deployments", get(deployments))
        .route("/v1/deployment/{id}", get(deployment))
        .route("/v1/services", get(services))
        .route("/v1/service/{name}", get(service))
        .route("/v1/client/fs/logs/{alloc}", get(logs))
        .route("/v1/client/allocation/{id}/checks", get(alloc_checks))
        .fallback(|| async { err(404, "Invalid URL") })
        .with_state(agent)
}

fn err(code: u16, msg: impl Into<String>) -> Response {
    let mut r = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        msg.into(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        err(self.0, self.1)
    }
}

/// A JSON response with the query meta headers Nomad sends.
fn ok(agent: &Agent, q: &HashMap<String, String>, v: Value) -> Response {
    let body = if q.contains_key("pretty") {
        serde_json::to_string_pretty(&v)
    } else {
        serde_json::to_string(&v)
    }
    .unwrap_or_default();
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let idx = agent.read(|st| st.index).max(1);
    h.insert(
        "X-Nomad-Index",
        HeaderValue::from_str(&idx.to_string()).expect("index"),
    );
    h.insert("X-Nomad-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Nomad-LastContact", HeaderValue::from_static("0"));
    r
}

/// Go duration strings in `wait=` (`5s`, `1m30s`, `300ms`).
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() || n == '.' {
                break;
            }
            unit.push(n);
            chars.next();
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += v * match unit.as_str() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        any = true;
    }
    if !num.is_empty() {
        return None;
    }
    any.then(|| Duration::from_secs_f64(total))
}

/// Blocking query: with `?index=N`, waits until the state index passes N (or `wait` elapses).
async fn block(agent: &Agent, q: &HashMap<String, String>) {
    let Some(idx) = q.get("index").and_then(|i| i.parse::<u64>().ok()) else {
        return;
    };
    let wait = q
        .get("wait")
        .and_then(|w| parse_go_duration(w))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600));
    let mut rx = agent.index_tx.subscribe();
    let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > idx)).await;
}

fn cfg_json(agent: &Agent) -> Value {
    let c = agent.cfg();
    let hv: Vec<Value> = c
        .host_volumes
        .iter()
        .map(|v| json!({"Name": v.name, "Path": v.path, "ReadOnly": v.read_only}))
        .collect();
    let data = c.data_dir.display().to_string();
    json!({
        "Region": c.region, "Datacenter": c.datacenter, "NodeName": c.node_name, "DataDir": data,
        "PluginDir": format!("{data}/plugins"), "LogLevel": c.log_level, "LogJson": false,
        "BindAddr": c.bind_addr, "EnableDebug": false,
        "Ports": {"HTTP": c.http_port, "RPC": c.rpc_port, "Serf": c.serf_port},
        "Addresses": {"HTTP": c.addresses.http, "RPC": c.addresses.rpc, "Serf": c.addresses.serf},
        "AdvertiseAddrs": {"HTTP": c.advertise.http, "RPC": c.advertise.rpc, "Serf": c.advertise.serf},
        "Client": {
            "Enabled": c.client_enabled, "StateDir": format!("{data}/client"), "AllocDir": format!("{data}/alloc"),
            "Servers": c.servers, "NodeClass": c.node_class, "NodePool": c.node_pool,
            "Options": c.client_options, "Meta": c.client_meta, "NetworkInterface": c.network_interface,
            "HostVolumes": hv, "MaxKillTimeout": "30s", "MinDynamicPort": 20000, "MaxDynamicPort": 32000,
            "HostNetworks": null, "Reserved": {"CPU": 0, "MemoryMB": 0, "DiskMB": 0, "ReservedPorts": ""},
        },
        "Server": {
            "Enabled": c.server_enabled, "BootstrapExpect": c.bootstrap_expect, "DataDir": format!("{data}/server"),
            "DefaultSchedulerConfig": {"MemoryOversubscriptionEnabled": c.memory_oversubscription},
        },
        "ACL": {"Enabled": false, "TokenTTL": 30_000_000_000u64, "PolicyTTL": 30_000_000_000u64, "ReplicationToken": ""},
        "Telemetry": {"CollectionInterval": "1s", "PublishAllocationMetrics": false, "PublishNodeMetrics": false},
        "TLSConfig": {"EnableHTTP": false, "EnableRPC": false},
        "Consuls": [{"Name": "default", "Addr": "127.0.0.1:8500", "ServerServiceName": "nomad", "ClientServiceName": "nomad-client"}],
        "Vaults": [{"Name": "default", "Enabled": null}],
        "UI": {"Enabled": true},
        "Plugins": [{"Name": "docker", "Args": null, "Config": {
            "allow_privileged": c.docker_allow_privileged, "volumes": {"enabled": c.docker_volumes_enabled}}}],
        "Version": {"Revision": "pdsup-test-double", "Version": crate::VERSION, "VersionPrerelease": "",
                    "VersionMetadata": "", "BuildDate": "2025-01-01T00:00:00Z"},
        "Files": c.files, "DevMode": false, "DisableUpdateCheck": c.disable_update_check,
        "LeaveOnInt": false, "LeaveOnTerm": false,
    })
}

fn member_json(agent: &Agent) -> Value {
    let c = agent.cfg();
    let (addr, _) = c
        .advertise
        .serf
        .rsplit_once(':')
        .unwrap_or((&c.advertise.serf, ""));
    json!({
        "Name": format!("{}.{}", c.node_name, c.region), "Addr": addr, "Port": c.serf_port,
        "Tags": {"role": "nomad", "region": c.region, "dc": c.datacenter, "build": crate::VERSION,
                 "port": c.rpc_port.to_string(), "bootstrap": "1", "expect": c.bootstrap_expect.to_string(),
                 "id": agent.node_id, "vsn": "1", "raft_vsn": "3", "rpc_addr": addr},
        "Status": "alive", "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

async fn agent_self(State(agent): A, Query(q): Q) -> Response {
    let c = agent.cfg();
    let (allocs, index) = agent.read(|st| {
        (
            st.allocs.values().filter(|a| !a.terminal_client()).count(),
            st.index,
        )
    });
    let mut stats = json!({
        "runtime": {"arch": std::env::consts::ARCH, "version": "pdsup-test-double", "goroutines": "0",
                    "max_procs": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string(),
                    "kernel.name": "linux", "cpu_count": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string()},
        "client": {"node_id": agent.node_id, "known_servers": c.advertise.rpc, "num_allocations": allocs.to_string(),
                   "last_heartbeat": "0", "heartbeat_ttl": "0"},
    });
    if c.server_enabled {
        stats["nomad"] = json!({"server": "true", "leader": "true", "leader_addr": c.advertise.rpc,
                                "bootstrap": "true", "known_regions": "1"});
        stats["raft"] =
            json!({"state": "Leader", "last_log_index": index.to_string(), "num_peers": "0"});
        stats["serf"] = json!({"members": "1", "failed": "0", "left": "0"});
    }
    let member = if c.server_enabled {
        member_json(&agent)
    } else {
        json!({"Name": "", "Addr": null, "Port": 0, "Tags": null, "Status": "", "ProtocolMin": 0, "ProtocolMax": 0, "ProtocolCur": 0, "DelegateMin": 0, "DelegateMax": 0, "DelegateCur": 0})
    };
    ok(
        &agent,
        &q,
        json!({"config": cfg_json(&agent), "member": member, "stats": stats}),
    )
}

async fn agent_health(State(agent): A, Query(q): Query<Vec<(String, String)>>) -> Response {
    let c = agent.cfg();
    let types: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "type")
        .map(|(_, v)| v.as_str())
        .collect();
    let want = |t: &str| types.is_empty() || types.contains(&t);
    let mut body = serde_json::Map::new();
    let mut healthy = true;
    if want("client") {
        let (okc, msg) = if !c.client_enabled {
            (false, "client not enabled")
        } else if !c.server_enabled {
            (false, "no known servers")
        } else {
            (true, "ok")
        };
        healthy &= okc;
        if c.client_enabled || !types.is_empty() {
            body.insert("client".into(), json!({"ok": okc, "message": msg}));
        }
    }
    if want("server") {
        let (oks, msg) = if c.server_enabled {
            (true, "ok")
        } else {
            (false, "server not enabled")
        };
        if c.server_enabled || !types.is_empty() {
            healthy &= oks;
            body.insert("server".into(), json!({"ok": oks, "message": msg}));
        }
    }
    let text = serde_json::to_string(&Value::Object(body)).unwrap_or_default();
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let mut r = (code, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn agent_members(State(agent): A, Query(q): Q) -> Response {
    let c = agent.cfg();
    ok(
        &agent,
        &q,
        json!({"ServerName": c.node_name, "ServerRegion": c.region, "ServerDC": c.datacenter, "Members": [member_json(&agent)]}),
    )
}

async fn agent_servers(State(agent): A, Query(q): Q) -> Response {
    ok(&agent, &q, json!([agent.cfg().advertise.rpc]))
}

async fn status_leader(State(agent): A, Query(q): Q) -> Response {
    let c = agent.cfg();
    ok(
        &agent,
        &q,
        json!(if c.server_enabled {
            c.advertise.rpc
        } else {
            String::new()
        }),
    )
}

async fn status_peers(State(agent): A, Query(q): Q) -> Response {
    let c = agent.cfg();
    ok(
        &agent,
        &q,
        json!(if c.server_enabled {
            vec![c.advertise.rpc]
        } else {
            vec![]
        }),
    )
}

async fn regions(State(agent): A, Query(q): Q) -> Response {
    ok(&agent, &q, json!([agent.cfg().region]))
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k)
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

async fn nodes(State(agent): A, Query(q): Q) -> Response {
    block(&agent, &q).await;
    let stub = agent.node_stub(flag(&q, "resources"), flag(&q, "os"));
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let list = if agent.node_id.starts_with(&prefix) {
        vec![stub]
    } else {
        vec![]
    };
    ok(&agent, &q, json!(list))
}

async fn node(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    block(&agent, &q).await;
    if id != agent.node_id {
        return err(404, "node not found");
    }
    ok(&agent, &q, agent.node_json())
}

async fn node_allocs(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    block(&agent, &q).await;
    if id != agent.node_id {
        return err(404, "node not found");
    }
    let list: Vec<Value> = agent.read(|st| st.allocs.values().map(Alloc::to_api).collect());
    ok(&agent, &q, json!(list))
}

fn job_stub(st: &crate::state::State, j: &Job) -> Value {
    json!({
        "ID": j.ID, "ParentID": j.extra.get("ParentID").cloned().unwrap_or(json!("")), "Name": j.Name,
        "Namespace": j.Namespace, "Datacenters": j.Datacenters, "NodePool": j.NodePool, "Multiregion": null,
        "Type": j.Type, "Priority": j.priority(), "Periodic": false, "ParameterizedJob": false,
        "Stop": j.Stop, "Status": st.job_status(&j.ID), "StatusDescription": j.StatusDescription,
        "JobSummary": job_summary(st, j), "CreateIndex": j.CreateIndex, "ModifyIndex": j.ModifyIndex,
        "JobModifyIndex": j.JobModifyIndex, "SubmitTime": j.SubmitTime, "Meta": j.Meta,
    })
}

fn job_summary(st: &crate::state::State, j: &Job) -> Value {
    let mut groups = serde_json::Map::new();
    for g in &j.TaskGroups {
        let allocs: Vec<&Alloc> = st
            .job_allocs(&j.ID)
            .into_iter()
            .filter(|a| a.TaskGroup == g.Name)
            .collect();
        let count = |s: &str| allocs.iter().filter(|a| a.ClientStatus == s).count();
        let queued = st
            .evals
            .values()
            .filter(|e| e.JobID == j.ID && e.Status == "complete" && e.FailedTGAllocs.is_some())
            .max_by_key(|e| e.CreateIndex)
            .and_then(|e| e.QueuedAllocations.get(&g.Name).copied())
            .filter(|_| !allocs.iter().any(|a| a.live()))
            .unwrap_or(0);
        groups.insert(g.Name.clone(), json!({
            "Queued": queued, "Complete": count("complete"), "Failed": count("failed"),
            "Running": count("running"), "Starting": count("pending"), "Lost": count("lost"), "Unknown": 0
        }));
    }
    json!({"JobID": j.ID, "Namespace": j.Namespace, "Summary": groups,
           "Children": {"Pending": 0, "Running": 0, "Dead": 0}, "CreateIndex": j.CreateIndex, "ModifyIndex": j.ModifyIndex})
}

async fn jobs(State(agent): A, Query(q): Q) -> Response {
    block(&agent, &q).await;
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let list: Vec<Value> = agent.read(|st| {
        st.jobs
            .keys()
            .filter(|id| id.starts_with(&prefix))
            .filter_map(|id| st.job(id))
            .map(|j| job_stub(st, j))
            .collect()
    });
    ok(&agent, &q, json!(list))
}

/// Decodes a request body like Nomad's HTTP agent: Go JSON decoding into the `api` struct
/// (unknown keys dropped, logged here), then the agent-side checks and conversions.
fn decode_job_request(
    root: &'static str,
    body: &[u8],
    path_id: Option<&str>,
) -> Result<(Value, Job), ApiError> {
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| ApiError(400, format!("json: {e}")))?;
    let (req, dropped) = crate::decode::decode(root, &raw).map_err(|e| ApiError(400, e.0))?;
    for d in dropped {
        log::warn!("http: ignoring unknown field {d:?} in the request body (Nomad drops unknown fields silently)");
    }
    let job_v = req.get("Job").cloned().unwrap_or(Value::Null);
    if job_v.is_null() {
        return Err(ApiError(400, "Job must be specified".into()));
    }
    if job_v.get("ID").is_none_or(Value::is_null) {
        return Err(ApiError(400, "Job ID hasn't been provided".into()));
    }
    let mut job: Job = serde_json::from_value(job_v).map_err(|e| ApiError(400, e.to_string()))?;
    if let Some(id) = path_id {
        if job.ID != id {
            let msg = if root == "JobPlanRequest" {
                "Job ID does not match"
            } else {
                "Job ID does not match name"
            };
            return Err(ApiError(400, msg.into()));
        }
    }
    // ApiTgToStructsTG: volumes of a type other than host/csi are dropped.
    for g in &mut job.TaskGroups {
        if let Some(vols) = &mut g.Volumes {
            vols.retain(|name, v| {
                let keep = v.Type == "host" || v.Type == "csi";
                if !keep {
                    log::warn!("http: dropping volume {name:?} of group {:?}: Type {:?} is neither \"host\" nor \"csi\" (Nomad drops it silently)", g.Name, v.Type);
                }
                keep
            });
        }
    }
    if let Some(ns) = req
        .get("Namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        if job.Namespace.is_empty() {
            job.Namespace = ns.to_string();
        }
    }
    job::canonicalize(&mut job);
    if job.Namespace != "default" {
        return Err(ApiError(
            500,
            format!(
                "job {:?} is in nonexistent namespace {:?}",
                job.ID, job.Namespace
            ),
        ));
    }
    Ok((req, job))
}

async fn register_body(
    agent: Arc<Agent>,
    body: Bytes,
    path_id: Option<String>,
) -> Result<Value, ApiError> {
    let (_, job) = decode_job_request("JobRegisterRequest", &body, path_id.as_deref())?;
    let warnings = crate::validate::validate(&job, agent.cfg().memory_oversubscription)
        .map_err(|e| ApiError(500, e))?;
    agent.register(job, warnings)
}

async fn register(State(agent): A, Query(q): Q, body: Bytes) -> Response {
    match register_body(agent.clone(), body, None).await {
        Ok(v) => ok(&agent, &q, v),
        Err(e) => e.into_response(),
    }
}

async fn register_named(
    State(agent): A,
    Path(id): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    match register_body(agent.clone(), body, Some(id)).await {
        Ok(v) => ok(&agent, &q, v),
        Err(e) => e.into_response(),
    }
}

async fn job_get(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    block(&agent, &q).await;
    match agent.read(|st| {
        st.job(&id).map(|j| {
            let mut j = j.clone();
            j.Status = st.job_status(&id);
            j
        })
    }) {
        Some(j) => ok(&agent, &q, serde_json::to_value(j).unwrap_or_default()),
        None => err(404, "job not found"),
    }
}

async fn job_delete(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    match agent.deregister(&id, flag(&q, "purge")) {
        Ok(v) => ok(&agent, &q, v),
        Err(e) => e.into_response(),
    }
}

async fn job_plan(State(agent): A, Path(id): Path<String>, Query(q): Q, body: Bytes) -> Response {
    let (req, mut job) = match decode_job_request("JobPlanRequest", &body, Some(&id)) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let warnings = match crate::validate::validate(&job, agent.cfg().memory_oversubscription) {
        Ok(w) => w,
        Err(e) => return err(500, e),
    };
    let node = agent.node();
    let v = agent.read(|st| {
        let existing = st.job(&id).cloned();
        match &existing {
            Some(e) if !e.spec_changed(&job) => job.Version = e.Version,
            Some(e) => job.Version = e.Version + 1,
            None => job.Version = 0,
        }
        let allocs: Vec<&Alloc> = st.job_allocs(&id);
        let busy: BTreeSet<i64> = st
            .allocs
            .values()
            .filter(|a| !a.terminal_client())
            .flat_map(|a| a.Ports.iter().map(|p| p.Value))
            .collect();
        let p = crate::plan::plan(&job, &allocs, &node, &busy, &BTreeSet::new());
        let desired: serde_json::Map<String, Value> = p
            .desired
            .iter()
            .map(|(k, d)| (k.clone(), d.to_api()))
            .collect();
        let diff = if req.get("Diff").and_then(Value::as_bool).unwrap_or(false) {
            crate::diff::job_diff(existing.as_ref(), &job, &p.desired)
        } else {
            Value::Null
        };
        json!({
            "Annotations": {"DesiredTGUpdates": desired, "PreemptedAllocs": null},
            "FailedTGAllocs": if p.failed.is_empty() { Value::Null } else { json!(p.failed) },
            "JobModifyIndex": existing.map(|e| e.JobModifyIndex).unwrap_or(0),
            "CreatedEvals": null, "Diff": diff,
            "NextPeriodicLaunch": crate::state::ZERO_TIME, "Warnings": warnings.join("\n"),
            "Index": st.index,
        })
    });
    ok(&agent, &q, v)
}

async fn validate_job(State(agent): A, Query(q): Q, body: Bytes) -> Response {
    let res = decode_job_request("JobRegisterRequest", &body, None).and_then(|(_, j)| {
        crate::validate::validate(&j, agent.cfg().memory_oversubscription)
            .map_err(|e| ApiError(500, e))
    });
    let v = match res {
        Ok(w) => {
            json!({"DriverConfigValidated": false, "ValidationErrors": null, "Error": "", "Warnings": w.join("\n")})
        }
        Err(ApiError(_, e)) => {
            json!({"DriverConfigValidated": false, "ValidationErrors": [e.clone()], "Error": e, "Warnings": ""})
        }
    };
    ok(&agent, &q, v)
}

async fn job_sub(
    State(agent): A,
    Path((id, sub)): Path<(String, String)>,
    Query(q): Q,
) -> Response {
    block(&agent, &q).await;
    let c = agent.cfg();
    let res: Option<Value> = agent.read(|st| {
        let j = st.job(&id)?;
        Some(match sub.as_str() {
            "allocations" => json!(st
                .job_allocs(&id)
                .into_iter()
                .map(Alloc::stub)
                .collect::<Vec<_>>()),
            "deployment" => st
                .latest_deployment(&id)
                .map(|d| json!(d))
                .unwrap_or(Value::Null),
            "deployments" => {
                let mut list: Vec<&crate::state::Deployment> =
                    st.deployments.values().filter(|d| d.JobID == id).collect();
                list.sort_by_key(|d| std::cmp::Reverse(d.CreateIndex));
                json!(list)
            }
            "evaluations" => {
                let mut list: Vec<&crate::state::Eval> =
                    st.evals.values().filter(|e| e.JobID == id).collect();
                list.sort_by_key(|e| std::cmp::Reverse(e.CreateIndex));
                json!(list)
            }
            "versions" => {
                let mut versions = st.jobs.get(&id).cloned().unwrap_or_default();
                versions.reverse();
                json!({"Versions": versions, "Diffs": null})
            }
            "summary" => job_summary(st, j),
            "services" => {
                let list: Vec<Value> = st
                    .job_allocs(&id)
                    .into_iter()
                    .flat_map(|a| checks::registrations(a, &agent.node_ip, &c.datacenter))
                    .collect();
                json!(list)
            }
            _ => return None,
        })
    });
    match res {
        Some(v) => ok(&agent, &q, v),
        None if agent.read(|st| st.job(&id).is_none()) => err(404, "job not found"),
        None => err(404, "Invalid URL"),
    }
}

async fn allocations(State(agent): A, Query(q): Q) -> Response {
    block(&agent, &q).await;
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let list: Vec<Value> = agent.read(|st| {
        st.allocs
            .values()
            .filter(|a| a.ID.starts_with(&prefix))
            .map(Alloc::stub)
            .collect()
    });
    ok(&agent, &q, json!(list))
}

async fn allocation(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    block(&agent, &q).await;
    match agent.read(|st| st.allocs.get(&id).map(Alloc::to_api)) {
        Some(v) => ok(&agent, &q, v),
        None => err(404, "alloc not found"),
    }
}

async fn evaluations(State(agent): A, Query(q): Q) -> Response {
    block(&agent, &q).await;
    let list: Vec<Value> = agent.read(|st| st.evals.values().map(|e| json!(e)).collect());
    ok(&agent, &q, json!(list))
}

async fn evaluation(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    block(&agent, &q).await;
    match agent.read(|st| st.evals.get(&id).map(|e| json!(e))) {
        Some(v) => ok(&agent, &q, v),
        None => err(404, "eval not found"),
    }
}

async fn evaluation_allocs(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    block(&agent, &q).await;
    let list: Vec<Value> = agent.read(|st| {
        st.allocs
            .values()
            .filter(|a| a.EvalID == id)
            .map(Alloc::stub)
            .collect()
    });
    ok(&agent, &q, json!(list))
}

async fn deployments(State(agent): A, Query(q): Q) -> Response {
    block(&agent, &q).await;
    let list: Vec<Value> = agent.read(|st| st.deployments.values().map(|d| json!(d)).collect());
    ok(&agent, &q, json!(list))
}

async fn deployment(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    block(&agent, &q).await;
    match agent.read(|st| st.deployments.get(&id).map(|d| json!(d))) {
        Some(v) => ok(&agent, &q, v),
        None => err(404, "deployment not found"),
    }
}

fn all_registrations(agent: &Agent) -> Vec<Value> {
    let dc = agent.cfg().datacenter;
    agent.read(|st| {
        st.allocs
            .values()
            .flat_map(|a| checks::registrations(a, &agent.node_ip, &dc))
            .collect()
    })
}

async fn services(State(agent): A, Query(q): Q) -> Response {
    block(&agent, &q).await;
    let mut by_name: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in all_registrations(&agent) {
        let tags = by_name
            .entry(r["ServiceName"].as_str().unwrap_or_default().to_string())
            .or_default();
        for t in r["Tags"].as_array().into_iter().flatten() {
            tags.insert(t.as_str().unwrap_or_default().to_string());
        }
    }
    let list: Vec<Value> = by_name
        .into_iter()
        .map(|(n, t)| json!({"ServiceName": n, "Tags": t}))
        .collect();
    let body = if list.is_empty() {
        json!([])
    } else {
        json!([{"Namespace": "default", "Services": list}])
    };
    ok(&agent, &q, body)
}

async fn service(State(agent): A, Path(name): Path<String>, Query(q): Q) -> Response {
    block(&agent, &q).await;
    let list: Vec<Value> = all_registrations(&agent)
        .into_iter()
        .filter(|r| r["ServiceName"] == name.as_str())
        .collect();
    ok(&agent, &q, json!(list))
}

async fn alloc_checks(State(agent): A, Path(id): Path<String>, Query(q): Q) -> Response {
    if agent.read(|st| !st.allocs.contains_key(&id)) {
        return err(404, "alloc not found");
    }
    let v = agent
        .checks
        .lock()
        .expect("checks")
        .get(&id)
        .cloned()
        .unwrap_or_default();
    ok(&agent, &q, json!(v))
}

/// Everything a task wrote to `kind` so far: archived runs plus the current container.
async fn log_bytes(agent: &Agent, alloc: &str, task: &str, kind: &str) -> Vec<u8> {
    let mut data =
        std::fs::read(crate::runner::log_path(agent, alloc, task, kind)).unwrap_or_default();
    if let Some((out, errs)) =
        crate::docker::logs(&crate::docker::container_name(task, alloc)).await
    {
        data.extend(if kind == "stdout" { out } else { errs });
    }
    data
}

fn frame(offset: usize, data: &[u8], file: &str) -> Bytes {
    let v = json!({"Offset": offset, "Data": base64::engine::general_purpose::STANDARD.encode(data), "File": file});
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

async fn logs(State(agent): A, Path(alloc_id): Path<String>, Query(q): Q) -> Response {
    let task = q.get("task").cloned().unwrap_or_default();
    if task.is_empty() {
        return err(400, "must provide task name");
    }
    let parse_bool = |k: &str| -> Result<bool, String> {
        match q.get(k).map(String::as_str) {
            None | Some("") => Ok(false),
            Some("true" | "1" | "t" | "T" | "TRUE" | "True") => Ok(true),
            Some("false" | "0" | "f" | "F" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(format!(
                "failed to parse {k} field to boolean: strconv.ParseBool: parsing {v:?}: invalid syntax"
            )),
        }
    };
    let (follow, plain) = match (parse_bool("follow"), parse_bool("plain")) {
        (Ok(f), Ok(p)) => (f, p),
        (Err(e), _) | (_, Err(e)) => return err(400, e),
    };
    let kind = q.get("type").cloned().unwrap_or_default();
    if kind != "stdout" && kind != "stderr" {
        return err(400, "must provide log type (stdout/stderr)");
    }
    let offset: i64 = match q.get("offset").filter(|o| !o.is_empty()) {
        None => 0,
        Some(o) => match o.parse() {
            Ok(v) => v,
            Err(_) => return err(400, format!("failed to parse offset field to integer: strconv.ParseInt: parsing {o:?}: invalid syntax")),
        },
    };
    let origin = q.get("origin").cloned().unwrap_or_else(|| "start".into());
    if origin != "start" && origin != "end" {
        return err(400, "origin must be start or end");
    }
    let Some(alloc) = agent.read(|st| st.allocs.get(&alloc_id).cloned()) else {
        return err(404, format!("Unknown allocation {alloc_id:?}"));
    };
    if !alloc.TaskStates.contains_key(&task) {
        return err(400, format!("unknown task name {task:?}"));
    }
    let data = log_bytes(&agent, &alloc_id, &task, &kind).await;
    let start = if origin == "end" {
        data.len().saturating_sub(offset.max(0) as usize)
    } else {
        (offset.max(0) as usize).min(data.len())
    };
    let file = format!("alloc/logs/{task}.{kind}.0");
    let content_type = if plain {
        "text/plain; charset=utf-8"
    } else {
        "application/json"
    };
    let body = if !follow {
        if plain {
            Body::from(data[start..].to_vec())
        } else if start < data.len() {
            Body::from(frame(start, &data[start..], &file))
        } else {
            Body::empty()
        }
    } else {
        // Stream new output every half second until the allocation is terminal.
        let state = (
            agent.clone(),
            alloc_id.clone(),
            task.clone(),
            kind.clone(),
            start,
            true,
            0u32,
        );
        let stream = futures_util::stream::unfold(
            state,
            move |(agent, alloc_id, task, kind, pos, first, idle)| {
                let file = file.clone();
                async move {
                    if !first {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let data = log_bytes(&agent, &alloc_id, &task, &kind).await;
                    let terminal = agent
                        .read(|st| st.allocs.get(&alloc_id).is_none_or(|a| a.terminal_client()));
                    if data.len() > pos {
                        let chunk = if plain {
                            Bytes::from(data[pos..].to_vec())
                        } else {
                            frame(pos, &data[pos..], &file)
                        };
                        return Some((
                            Ok::<_, std::io::Error>(chunk),
                            (agent, alloc_id, task, kind, data.len(), false, 0),
                        ));
                    }
                    if terminal {
                        return None;
                    }
                    // Heartbeat frames (`{}`) keep idle streams alive, as Nomad's do.
                    let beat = if !plain && idle >= 20 {
                        Bytes::from_static(b"{}")
                    } else {
                        Bytes::new()
                    };
                    let idle = if beat.is_empty() { idle + 1 } else { 0 };
                    Some((Ok(beat), (agent, alloc_id, task, kind, pos, false, idle)))
                }
            },
        );
        Body::from_stream(stream)
    };
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("5"), None);
    }

    #[test]
    fn register_body_checks_match_nomads() {
        let e = decode_job_request(
            "JobRegisterRequest",
            br#"{"ID": "pds", "TaskGroups": []}"#,
            None,
        )
        .unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (400, "Job must be specified"));
        let e = decode_job_request("JobRegisterRequest", br#"{"Job": {"Name": "pds"}}"#, None)
            .unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (400, "Job ID hasn't been provided"));
        let e = decode_job_request(
            "JobRegisterRequest",
            br#"{"Job": {"ID": "pds"}}"#,
            Some("other"),
        )
        .unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (400, "Job ID does not match name"));
        let e = decode_job_request(
            "JobPlanRequest",
            br#"{"Job": {"ID": "pds"}}"#,
            Some("other"),
        )
        .unwrap_err();
        assert_eq!(e.1, "Job ID does not match");
        let e = decode_job_request(
            "JobRegisterRequest",
            br#"{"Job": {"ID": "pds", "Update": {"MinHealthyTime": "10s"}}}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(e.0, 400);
        assert!(e.1.contains("of type time.Duration"), "{}", e.1);
    }

    #[test]
    fn volumes_of_unknown_type_are_dropped_and_mounts_then_fail() {
        let body = br#"{"Job": {"ID": "pds", "TaskGroups": [{"Name": "pds",
            "Volumes": {"pds": {"Type": "Host", "Source": "pds"}},
            "Tasks": [{"Name": "pds", "Driver": "docker", "Config": {"image": "x"},
                       "VolumeMounts": [{"Volume": "pds", "Destination": "/pds"}]}]}]}}"#;
        let (_, job) = decode_job_request("JobRegisterRequest", body, None).unwrap();
        assert!(job.TaskGroups[0].Volumes.as_ref().unwrap().is_empty());
        let e = crate::validate::validate(&job, false).unwrap_err();
        assert!(
            e.contains("Volume Mount (0) references undefined volume pds"),
            "{e}"
        );
    }
}
