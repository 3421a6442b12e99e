//! `NomadApi`: the few calls of Nomad's HTTP API that pdsup makes, through the
//! SSH tunnel to the droplet's 127.0.0.1:4646.
//!
//! Field names follow NOMAD-API.md exactly (responses use Go field names; the
//! agent's `health` and `self` use lowercase top-level keys). Invariants:
//! - errors name the method, path, HTTP status and an excerpt of the *response*
//!   body, never the request body (a job body holds the PDS's secrets), and any
//!   secret of the job being sent is masked in the excerpt as well;
//! - no proxy from the environment: the address is a local tunnel end;
//! - every request has a short timeout, and the `wait_*` helpers poll with a
//!   deadline, report progress through a callback, and say on timeout which
//!   condition was not met.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::bail;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::job::Job;
use crate::secret::MASK;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of a response body an error quotes.
const EXCERPT_CHARS: usize = 400;
/// How much of a task's log `logs` fetches (from the end).
const LOG_TAIL_BYTES: u64 = 4096;
/// How many log lines a failure message quotes.
const LOG_TAIL_LINES: usize = 20;
const POLL: Duration = Duration::from_secs(1);
/// How long an allocation may stay unplaced, with the scheduler reporting why,
/// before `wait_job_*` gives up (the node was ready, so it will not fix itself).
const PLACEMENT_GRACE: Duration = Duration::from_secs(20);

/// An error from one API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Nomad API {method} {path}: {source}")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Nomad API {method} {path}: HTTP {status}: {excerpt}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        excerpt: String,
    },
    #[error("Nomad API {method} {path}: unexpected response ({detail}): {excerpt}")]
    Decode {
        method: Method,
        path: String,
        detail: String,
        excerpt: String,
    },
}

impl ApiError {
    /// The HTTP status of an answered request.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[derive(Clone, Debug)]
pub struct NomadApi {
    base: String,
    client: reqwest::Client,
}

/// `GET /v1/agent/health`: lowercase keys; a part is absent when the agent is not
/// a client (or not a server).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AgentHealth {
    #[serde(default)]
    pub client: Option<HealthPart>,
    #[serde(default)]
    pub server: Option<HealthPart>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct HealthPart {
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub message: String,
}

impl AgentHealth {
    pub fn is_healthy(&self) -> bool {
        self.problem().is_none()
    }

    /// Why the agent is unhealthy, or `None`.
    pub fn problem(&self) -> Option<String> {
        let mut problems = Vec::new();
        for (name, part) in [("client", &self.client), ("server", &self.server)] {
            if let Some(p) = part {
                if !p.ok {
                    problems.push(format!("{name}: {}", p.message));
                }
            }
        }
        if self.client.is_none() && self.server.is_none() {
            problems.push("neither client nor server reported".into());
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// What pdsup reads from `GET /v1/agent/self`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentSelf {
    pub version: String,
    pub node_name: String,
    /// From `stats.client.node_id`, on client agents.
    pub node_id: Option<String>,
    /// The client's configured `host_volume` blocks.
    pub host_volumes: Vec<HostVolume>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostVolume {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// `GET /v1/nodes` entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
}

/// `GET /v1/node/:id`, the parts pdsup checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `initializing`, `ready`, `down`, `disconnected`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub status_description: String,
    #[serde(default)]
    pub scheduling_eligibility: String,
    #[serde(default, deserialize_with = "null_default")]
    pub drivers: BTreeMap<String, DriverInfo>,
    #[serde(default, deserialize_with = "null_default")]
    pub host_volumes: BTreeMap<String, HostVolume>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DriverInfo {
    #[serde(default)]
    pub detected: bool,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default)]
    pub health_description: String,
}

impl Node {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }

    /// Whether the docker driver is detected and healthy.
    pub fn docker_ok(&self) -> bool {
        self.drivers
            .get("docker")
            .is_some_and(|d| d.detected && d.healthy)
    }

    pub fn host_volume_names(&self) -> Vec<&str> {
        self.host_volumes.keys().map(String::as_str).collect()
    }
}

/// The `Type` of a plan's job diff. `None`: re-submitting changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffType {
    None,
    Added,
    Deleted,
    Edited,
    Other(String),
}

impl DiffType {
    pub fn parse(s: &str) -> Self {
        match s {
            "None" => DiffType::None,
            "Added" => DiffType::Added,
            "Deleted" => DiffType::Deleted,
            "Edited" => DiffType::Edited,
            other => DiffType::Other(other.to_string()),
        }
    }

    pub fn is_unchanged(&self) -> bool {
        *self == DiffType::None
    }
}

impl fmt::Display for DiffType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffType::None => f.write_str("None"),
            DiffType::Added => f.write_str("Added"),
            DiffType::Deleted => f.write_str("Deleted"),
            DiffType::Edited => f.write_str("Edited"),
            DiffType::Other(s) => f.write_str(s),
        }
    }
}

/// What a dry-run plan says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanResult {
    pub diff: DiffType,
    /// Why task groups could not be placed, one line per group ("" when placeable).
    pub failed_placements: Vec<String>,
    pub warnings: String,
}

/// The evaluation a registration created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalId(pub String);

impl fmt::Display for EvalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `GET /v1/job/:id/allocations` entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "JobID", default)]
    pub job_id: String,
    #[serde(default)]
    pub job_version: u64,
    #[serde(default)]
    pub task_group: String,
    /// `run`, `stop`, `evict`.
    #[serde(default)]
    pub desired_status: String,
    /// `pending`, `running`, `complete`, `failed`, `lost`, `unknown`.
    #[serde(default)]
    pub client_status: String,
    #[serde(default)]
    pub client_description: String,
    #[serde(default, deserialize_with = "null_default")]
    pub task_states: BTreeMap<String, TaskState>,
    #[serde(default)]
    pub deployment_status: Option<AllocDeploymentStatus>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub create_time: i64,
}

impl AllocStub {
    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }

    /// `DeploymentStatus.Healthy`: `None` until Nomad has decided.
    pub fn healthy(&self) -> Option<bool> {
        self.deployment_status.as_ref().and_then(|d| d.healthy)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskState {
    /// `pending`, `running`, `dead`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub restarts: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub events: Vec<TaskEvent>,
}

impl TaskState {
    pub fn last_event(&self) -> Option<&TaskEvent> {
        self.events.last()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskEvent {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub time: i64,
    #[serde(default)]
    pub display_message: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub driver_error: String,
}

impl TaskEvent {
    /// The best human text Nomad gave for the event.
    pub fn text(&self) -> &str {
        [&self.display_message, &self.driver_error, &self.message]
            .into_iter()
            .find(|s| !s.is_empty())
            .map(String::as_str)
            .unwrap_or("")
    }
}

impl fmt::Display for TaskEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text() {
            "" => f.write_str(&self.kind),
            text => write!(f, "{}: {text}", self.kind),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocDeploymentStatus {
    #[serde(default)]
    pub healthy: Option<bool>,
}

/// `GET /v1/job/:id/deployment`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Deployment {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub job_version: u64,
    /// `running`, `successful`, `failed`, `cancelled`, ...
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub status_description: String,
}

/// `GET /v1/job/:id/evaluations` entries: what the scheduler said.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Evaluation {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub job_modify_index: u64,
    #[serde(default)]
    pub create_index: u64,
    #[serde(rename = "FailedTGAllocs", default, deserialize_with = "null_default")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
}

/// Why the scheduler could not place a task group.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocMetric {
    #[serde(default)]
    pub nodes_evaluated: u64,
    #[serde(default)]
    pub nodes_filtered: u64,
    #[serde(default)]
    pub nodes_exhausted: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub constraint_filtered: BTreeMap<String, u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub class_filtered: BTreeMap<String, u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub dimension_exhausted: BTreeMap<String, u64>,
}

impl fmt::Display for AllocMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut reasons: Vec<String> = Vec::new();
        for (what, n) in self.constraint_filtered.iter().chain(&self.class_filtered) {
            reasons.push(format!("{what} (filtered {n} node(s))"));
        }
        for (what, n) in &self.dimension_exhausted {
            reasons.push(format!("not enough {what} (on {n} node(s))"));
        }
        if reasons.is_empty() {
            reasons.push(format!(
                "{} node(s) evaluated, {} filtered, {} exhausted",
                self.nodes_evaluated, self.nodes_filtered, self.nodes_exhausted
            ));
        }
        f.write_str(&reasons.join(", "))
    }
}

/// Which log of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Nomad encodes empty Go maps and slices as `null`.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved kept).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The start of a response body for an error message: one line, bounded, with
/// the given secrets masked.
fn excerpt(body: &[u8], secrets: &[&str]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(s, MASK);
    }
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(EXCERPT_CHARS) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None if one_line.is_empty() => "(empty body)".into(),
        None => one_line,
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl NomadApi {
    /// A client for the Nomad HTTP API at `addr` (the local end of the tunnel).
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_base(format!("http://{addr}"))
    }

    /// A client for the Nomad HTTP API at a base URL such as `http://127.0.0.1:4646`.
    pub fn with_base(base: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            // Only fails when the TLS backend cannot initialise: a broken build.
            .expect("building the HTTP client");
        NomadApi {
            base: base.into().trim_end_matches('/').to_string(),
            client,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request and reads the whole answer. A transport error names
    /// the method and path, never the body.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> ApiResult<Reply> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        let transport = |source| ApiError::Transport {
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        log::debug!("nomad {method} {path}: {status}");
        Ok(Reply { status, body })
    }

    fn status_error(method: Method, path: &str, reply: &Reply, secrets: &[&str]) -> ApiError {
        ApiError::Status {
            method,
            path: path.to_string(),
            status: reply.status.as_u16(),
            excerpt: excerpt(&reply.body, secrets),
        }
    }

    fn decode<T: DeserializeOwned>(
        method: Method,
        path: &str,
        reply: &Reply,
        secrets: &[&str],
    ) -> ApiResult<T> {
        serde_json::from_slice(&reply.body).map_err(|e| ApiError::Decode {
            method,
            path: path.to_string(),
            detail: e.to_string(),
            excerpt: excerpt(&reply.body, secrets),
        })
    }

    /// GET and decode a 2xx JSON answer.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> ApiResult<T> {
        let reply = self.send(Method::GET, path, None).await?;
        if !reply.status.is_success() {
            return Err(Self::status_error(Method::GET, path, &reply, &[]));
        }
        Self::decode(Method::GET, path, &reply, &[])
    }

    /// GET with 404 meaning `None` (and a JSON `null` too).
    async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> ApiResult<Option<T>> {
        let reply = self.send(Method::GET, path, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(Self::status_error(Method::GET, path, &reply, &[]));
        }
        Self::decode(Method::GET, path, &reply, &[])
    }

    /// `GET /v1/agent/health`. An unhealthy agent answers 500 with the same JSON:
    /// that is a result, not an error.
    pub async fn agent_health(&self) -> ApiResult<AgentHealth> {
        let path = "/v1/agent/health";
        let reply = self.send(Method::GET, path, None).await?;
        if reply.status.is_success() || reply.status == StatusCode::INTERNAL_SERVER_ERROR {
            if let Ok(health) = serde_json::from_slice::<AgentHealth>(&reply.body) {
                return Ok(health);
            }
        }
        if reply.status.is_success() {
            return Self::decode(Method::GET, path, &reply, &[]);
        }
        Err(Self::status_error(Method::GET, path, &reply, &[]))
    }

    /// `GET /v1/agent/self`: the version and the client's configured host volumes.
    pub async fn agent_self(&self) -> ApiResult<AgentSelf> {
        let v: Value = self.get("/v1/agent/self").await?;
        let config = &v["config"];
        let host_volumes = match &config["Client"]["HostVolumes"] {
            Value::Array(items) => items
                .iter()
                .filter_map(|i| serde_json::from_value::<HostVolume>(i.clone()).ok())
                .collect(),
            // Tolerate a map keyed by name too.
            Value::Object(map) => map
                .iter()
                .filter_map(|(name, i)| {
                    let mut h = serde_json::from_value::<HostVolume>(i.clone()).ok()?;
                    if h.name.is_empty() {
                        h.name = name.clone();
                    }
                    Some(h)
                })
                .collect(),
            _ => Vec::new(),
        };
        let node_id = v["stats"]["client"]["node_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(AgentSelf {
            version: config["Version"]["Version"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            node_name: config["NodeName"].as_str().unwrap_or_default().to_string(),
            node_id,
            host_volumes,
        })
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> ApiResult<Vec<NodeStub>> {
        let nodes: Option<Vec<NodeStub>> = self.get("/v1/nodes").await?;
        Ok(nodes.unwrap_or_default())
    }

    /// `GET /v1/node/:id`; `None` if there is no such node.
    pub async fn node(&self, id: &str) -> ApiResult<Option<Node>> {
        self.get_opt(&format!("/v1/node/{}", enc(id))).await
    }

    /// This agent's own node: the one `agent/self` names, else the only node
    /// of the cluster. `None` while the client has not registered.
    pub async fn local_node(&self) -> ApiResult<Option<Node>> {
        let nodes = self.nodes().await?;
        if nodes.is_empty() {
            return Ok(None);
        }
        let me = self.agent_self().await.ok();
        let pick = me
            .as_ref()
            .and_then(|me| {
                nodes
                    .iter()
                    .find(|n| me.node_id.as_deref() == Some(n.id.as_str()))
                    .or_else(|| {
                        nodes
                            .iter()
                            .find(|n| !me.node_name.is_empty() && n.name == me.node_name)
                    })
            })
            .or_else(|| (nodes.len() == 1).then(|| &nodes[0]));
        match pick {
            Some(stub) => self.node(&stub.id).await,
            None => Ok(None),
        }
    }

    /// A dry-run plan of `job` with its diff against the registered version.
    pub async fn plan(&self, job: &Job) -> ApiResult<PlanResult> {
        let path = format!("/v1/job/{}/plan", enc(&job.id));
        let body = json!({ "Job": job.job_json(), "Diff": true });
        let secrets = job.secret_values();
        let reply = self.send(Method::POST, &path, Some(&body)).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(PlanResult {
                diff: DiffType::Added,
                failed_placements: Vec::new(),
                warnings: String::new(),
            });
        }
        if !reply.status.is_success() {
            return Err(Self::status_error(Method::POST, &path, &reply, &secrets));
        }
        let v: Value = Self::decode(Method::POST, &path, &reply, &secrets)?;
        let diff = match v["Diff"]["Type"].as_str() {
            Some(t) => DiffType::parse(t),
            // No diff at all: nothing to compare with, i.e. a new job.
            None => DiffType::Added,
        };
        let failed: BTreeMap<String, AllocMetric> = match &v["FailedTGAllocs"] {
            Value::Object(_) => {
                serde_json::from_value(v["FailedTGAllocs"].clone()).unwrap_or_default()
            }
            _ => BTreeMap::new(),
        };
        Ok(PlanResult {
            diff,
            failed_placements: failed
                .iter()
                .map(|(tg, m)| format!("group {tg}: {m}"))
                .collect(),
            warnings: v["Warnings"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// What submitting `job` would change: `None` means nothing.
    pub async fn plan_diff(&self, job: &Job) -> ApiResult<DiffType> {
        Ok(self.plan(job).await?.diff)
    }

    /// `POST /v1/jobs`. Registration warnings are logged.
    pub async fn register(&self, job: &Job) -> ApiResult<EvalId> {
        let path = "/v1/jobs";
        let body = job.to_api_json();
        let secrets = job.secret_values();
        let reply = self.send(Method::POST, path, Some(&body)).await?;
        if !reply.status.is_success() {
            return Err(Self::status_error(Method::POST, path, &reply, &secrets));
        }
        let v: Value = Self::decode(Method::POST, path, &reply, &secrets)?;
        if let Some(w) = v["Warnings"].as_str().filter(|w| !w.is_empty()) {
            log::warn!("Nomad accepted job {} with warnings: {w}", job.id);
        }
        Ok(EvalId(v["EvalID"].as_str().unwrap_or_default().to_string()))
    }

    /// `DELETE /v1/job/:id`: stops the job (and with `purge`, forgets it).
    /// A job that does not exist is not an error.
    pub async fn deregister(&self, id: &str, purge: bool) -> ApiResult<Option<EvalId>> {
        let path = format!("/v1/job/{}?purge={purge}", enc(id));
        let reply = self.send(Method::DELETE, &path, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(Self::status_error(Method::DELETE, &path, &reply, &[]));
        }
        let v: Value = Self::decode(Method::DELETE, &path, &reply, &[])?;
        Ok(Some(EvalId(
            v["EvalID"].as_str().unwrap_or_default().to_string(),
        )))
    }

    /// `GET /v1/job/:id` as raw JSON (it holds secrets in `Env`: do not print it);
    /// `None` if there is no such job.
    pub async fn job(&self, id: &str) -> ApiResult<Option<Value>> {
        Ok(self
            .get_opt::<Value>(&format!("/v1/job/{}", enc(id)))
            .await?
            .filter(|v| !v.is_null()))
    }

    /// `GET /v1/job/:id/allocations`.
    pub async fn allocations(&self, job: &str) -> ApiResult<Vec<AllocStub>> {
        let allocs: Option<Vec<AllocStub>> = self
            .get_opt(&format!("/v1/job/{}/allocations", enc(job)))
            .await?;
        Ok(allocs.unwrap_or_default())
    }

    /// `GET /v1/job/:id/deployment`: the latest deployment, if any.
    pub async fn deployment(&self, job: &str) -> ApiResult<Option<Deployment>> {
        self.get_opt(&format!("/v1/job/{}/deployment", enc(job)))
            .await
    }

    /// `GET /v1/job/:id/evaluations`; empty if the endpoint or the job is missing.
    pub async fn evaluations(&self, job: &str) -> ApiResult<Vec<Evaluation>> {
        let evals: Option<Vec<Evaluation>> = self
            .get_opt(&format!("/v1/job/{}/evaluations", enc(job)))
            .await?;
        Ok(evals.unwrap_or_default())
    }

    /// `GET /v1/service/:name`: where the service's instances are.
    pub async fn service(&self, name: &str) -> ApiResult<Vec<(String, u16)>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Registration {
            #[serde(default)]
            address: String,
            #[serde(default)]
            port: u16,
        }
        let regs: Option<Vec<Registration>> =
            self.get_opt(&format!("/v1/service/{}", enc(name))).await?;
        Ok(regs
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.address, r.port))
            .collect())
    }

    /// The last ~4 KB of a task's stdout or stderr, as text.
    pub async fn logs(&self, alloc: &str, task: &str, stream: LogStream) -> ApiResult<String> {
        let path = format!(
            "/v1/client/fs/logs/{}?task={}&type={}&plain=true&origin=end&offset={LOG_TAIL_BYTES}",
            enc(alloc),
            enc(task),
            stream.as_str()
        );
        let reply = self.send(Method::GET, &path, None).await?;
        if !reply.status.is_success() {
            return Err(Self::status_error(Method::GET, &path, &reply, &[]));
        }
        Ok(String::from_utf8_lossy(&reply.body).into_owned())
    }

    /// One look at whether the local node can run pdsup's jobs.
    pub async fn node_readiness(&self, volumes: &[&str]) -> Readiness {
        let health = match self.agent_health().await {
            Ok(h) => h,
            Err(e) => {
                return Readiness::NotReady(format!("Nomad's HTTP API does not answer ({e})"))
            }
        };
        if let Some(problem) = health.problem() {
            return Readiness::NotReady(format!("the Nomad agent is not healthy ({problem})"));
        }
        let node = match self.local_node().await {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Readiness::NotReady(
                    "the Nomad client has not registered its node yet".into(),
                )
            }
            Err(e) => return Readiness::NotReady(format!("the node list is not available ({e})")),
        };
        if !node.is_ready() {
            let why = if node.status_description.is_empty() {
                String::new()
            } else {
                format!(": {}", node.status_description)
            };
            return Readiness::NotReady(format!(
                "node {} is {}{why}, not ready",
                node.name, node.status
            ));
        }
        match node.drivers.get("docker") {
            None => {
                return Readiness::NotReady(format!(
                    "node {} has not detected the docker driver",
                    node.name
                ))
            }
            Some(d) if !d.detected => {
                return Readiness::NotReady(format!(
                    "node {} has not detected the docker driver ({})",
                    node.name, d.health_description
                ))
            }
            Some(d) if !d.healthy => {
                return Readiness::NotReady(format!(
                    "the docker driver on node {} is not healthy ({})",
                    node.name, d.health_description
                ))
            }
            Some(_) => {}
        }
        let missing: Vec<&str> = volumes
            .iter()
            .copied()
            .filter(|v| !node.host_volumes.contains_key(*v))
            .collect();
        if !missing.is_empty() {
            let have = node.host_volume_names();
            return Readiness::NotReady(format!(
                "node {} has not fingerprinted the host volume(s) {} (it has: {})",
                node.name,
                missing.join(", "),
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ));
        }
        Readiness::Ready(node)
    }

    /// Waits until the agent is healthy, its node ready, the docker driver
    /// detected and healthy, and `volumes` fingerprinted as host volumes.
    pub async fn wait_node_ready(
        &self,
        volumes: &[&str],
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> crate::error::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let reason = match self.node_readiness(volumes).await {
                Readiness::Ready(_) => return Ok(()),
                Readiness::NotReady(reason) => reason,
            };
            if reason != last {
                progress(&format!("waiting for Nomad: {reason}"));
                last = reason;
            }
            if Instant::now() >= deadline {
                bail!(
                    TimedOut,
                    "the Nomad node was not ready after {}s: {last}",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the job's current version is running and healthy.
    pub async fn wait_job_healthy(
        &self,
        job: &str,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> crate::error::Result<()> {
        let Some(spec) = self.job(job).await? else {
            bail!(Api, "job {job} is not registered with Nomad");
        };
        let version = spec["Version"].as_u64().unwrap_or(0);
        self.wait_job_version_healthy(job, version, timeout, progress)
            .await
    }

    /// Waits until the newest allocation of `version` of `job` runs and is
    /// healthy (or that version's deployment succeeded). Fails early, quoting
    /// Nomad's event and the task's last log lines, when the allocation fails,
    /// a task hits a `Driver Failure` (an image that cannot be pulled), or
    /// the scheduler cannot place it.
    pub async fn wait_job_version_healthy(
        &self,
        job: &str,
        version: u64,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> crate::error::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        let mut unplaced_since: Option<Instant> = None;
        loop {
            let status = match self.job_health(job, version).await {
                Ok(s) => s,
                Err(e) => JobHealth::Waiting(format!("Nomad's API does not answer ({e})")),
            };
            let text = match status {
                JobHealth::Healthy => return Ok(()),
                JobHealth::Failed(failure) => return Err(failure.into()),
                JobHealth::Unplaceable(why) => {
                    let since = *unplaced_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= PLACEMENT_GRACE {
                        bail!(Unhealthy, "Nomad cannot place job {job}: {why}");
                    }
                    format!("Nomad cannot place it yet: {why}")
                }
                JobHealth::Waiting(text) => {
                    unplaced_since = None;
                    text
                }
            };
            if text != last {
                progress(&format!("job {job}: {text}"));
                last = text;
            }
            if Instant::now() >= deadline {
                bail!(
                    TimedOut,
                    "job {job} (version {version}) was not healthy after {}s: {last}",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One look at a job version's health.
    pub async fn job_health(&self, job: &str, version: u64) -> ApiResult<JobHealth> {
        let allocs = self.allocations(job).await?;
        let newest = allocs
            .iter()
            .filter(|a| a.job_version == version)
            .max_by_key(|a| (a.desired_status == "run", a.create_index, a.create_time));
        let Some(alloc) = newest else {
            return self.unplaced(job, version, &allocs).await;
        };
        let images = self.task_images(job).await;
        // A failure the task has not since recovered from (no `Started` after it).
        let fatal = alloc.task_states.iter().find_map(|(task, state)| {
            let events = &state.events;
            let i = events.iter().rposition(|e| {
                matches!(
                    e.kind.as_str(),
                    "Driver Failure" | "Setup Failure" | "Failed Validation"
                )
            })?;
            let recovered = events[i + 1..].iter().any(|e| e.kind == "Started");
            (!recovered).then(|| {
                (
                    task.clone(),
                    events[i].clone(),
                    StartFailure::of(&events[..=i]),
                )
            })
        });
        if let Some((task, event, cause)) = fatal {
            let message = format!(
                "job {job}: allocation {} failed to start task {task}{}: {event}",
                alloc.short_id(),
                image_note(&images, &task)
            );
            let message = self.with_logs(message, alloc).await;
            return Ok(JobHealth::Failed(JobFailed { message, cause }));
        }
        match alloc.client_status.as_str() {
            "failed" | "lost" | "complete" => {
                let message = format!(
                    "job {job}: allocation {} is {}{}{}",
                    alloc.short_id(),
                    alloc.client_status,
                    describe(&alloc.client_description),
                    task_summary(alloc, &images)
                );
                return Ok(JobHealth::Failed(JobFailed::other(
                    self.with_logs(message, alloc).await,
                )));
            }
            _ => {}
        }
        match alloc.healthy() {
            Some(true) if alloc.client_status == "running" => return Ok(JobHealth::Healthy),
            Some(false) => {
                let message = format!(
                    "job {job}: allocation {} is unhealthy (its checks did not pass in time){}",
                    alloc.short_id(),
                    task_summary(alloc, &images)
                );
                return Ok(JobHealth::Failed(JobFailed::other(
                    self.with_logs(message, alloc).await,
                )));
            }
            _ => {}
        }
        let deployment = self.deployment(job).await?;
        match &deployment {
            Some(d) if d.job_version == version => match d.status.as_str() {
                "successful" if alloc.client_status == "running" => return Ok(JobHealth::Healthy),
                "failed" => {
                    let message = format!(
                        "job {job}: deployment {} failed{}{}",
                        d.id.get(..8).unwrap_or(&d.id),
                        describe(&d.status_description),
                        task_summary(alloc, &images)
                    );
                    return Ok(JobHealth::Failed(JobFailed::other(
                        self.with_logs(message, alloc).await,
                    )));
                }
                "cancelled" => {
                    return Ok(JobHealth::Failed(JobFailed::other(format!(
                        "job {job}: deployment of version {version} was cancelled{}",
                        describe(&d.status_description)
                    ))))
                }
                _ => {}
            },
            // A job without deployments (none ever created): running tasks are
            // all the health Nomad will report.
            None if alloc.client_status == "running"
                && !alloc.task_states.is_empty()
                && alloc.task_states.values().all(|t| t.state == "running") =>
            {
                return Ok(JobHealth::Healthy)
            }
            _ => {}
        }
        let mut text = format!("allocation {} {}", alloc.short_id(), alloc.client_status);
        if alloc.client_status == "running" {
            text.push_str(", waiting for it to be healthy");
        }
        for (task, state) in &alloc.task_states {
            if let Some(e) = state.last_event() {
                text.push_str(&format!("; {task}: {e}"));
            }
        }
        Ok(JobHealth::Waiting(text))
    }

    /// No allocation of the version yet: ask the scheduler why.
    async fn unplaced(
        &self,
        job: &str,
        version: u64,
        allocs: &[AllocStub],
    ) -> ApiResult<JobHealth> {
        // The scheduler's answer for this version: the newest evaluation that
        // reports failed placements (the blocked evaluation it leaves behind may not).
        let modify_index = match self.job(job).await {
            Ok(Some(spec)) => spec["JobModifyIndex"].as_u64().unwrap_or(0),
            _ => 0,
        };
        let evals = self.evaluations(job).await.unwrap_or_default();
        let failed = evals
            .iter()
            .filter(|e| !e.failed_tg_allocs.is_empty() && e.job_modify_index >= modify_index)
            .max_by_key(|e| e.create_index);
        if let Some(eval) = failed {
            let why: Vec<String> = eval
                .failed_tg_allocs
                .iter()
                .map(|(tg, m)| format!("group {tg}: {m}"))
                .collect();
            return Ok(JobHealth::Unplaceable(why.join("; ")));
        }
        let older = if allocs.is_empty() {
            String::new()
        } else {
            format!(" ({} allocation(s) of older versions)", allocs.len())
        };
        Ok(JobHealth::Waiting(format!(
            "waiting for an allocation of version {version}{older}"
        )))
    }

    /// Task name → docker image, from the registered job.
    async fn task_images(&self, job: &str) -> BTreeMap<String, String> {
        let mut images = BTreeMap::new();
        if let Ok(Some(spec)) = self.job(job).await {
            for group in spec["TaskGroups"].as_array().into_iter().flatten() {
                for task in group["Tasks"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(image)) =
                        (task["Name"].as_str(), task["Config"]["image"].as_str())
                    {
                        images.insert(name.to_string(), image.to_string());
                    }
                }
            }
        }
        images
    }

    /// Appends the tasks' last stderr lines (stdout when stderr is empty).
    async fn with_logs(&self, mut message: String, alloc: &AllocStub) -> String {
        for task in alloc.task_states.keys() {
            for stream in [LogStream::Stderr, LogStream::Stdout] {
                let Ok(text) = self.logs(&alloc.id, task, stream).await else {
                    continue;
                };
                let tail = last_lines(&text, LOG_TAIL_LINES);
                if !tail.is_empty() {
                    message.push_str(&format!(
                        "\nlast {} lines of task {task}:\n",
                        stream.as_str()
                    ));
                    for line in tail.lines() {
                        message.push_str("  ");
                        message.push_str(line);
                        message.push('\n');
                    }
                    break;
                }
            }
        }
        message.trim_end().to_string()
    }
}

/// The result of one readiness check of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready(Node),
    NotReady(String),
}

/// The result of one look at a job version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobHealth {
    Healthy,
    /// Will not get better by waiting.
    Failed(JobFailed),
    /// The scheduler reported why it cannot place the job.
    Unplaceable(String),
    Waiting(String),
}

/// A job version that will not become healthy by waiting, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobFailed {
    /// Nomad's event or status, with the task's last log lines.
    pub message: String,
    pub cause: StartFailure,
}

impl JobFailed {
    fn other(message: String) -> Self {
        JobFailed {
            message,
            cause: StartFailure::Other,
        }
    }
}

/// What stopped a task, as far as Nomad's events tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFailure {
    /// The driver could not pull the task's image.
    ImagePull,
    Other,
}

impl StartFailure {
    /// Classifies the last of `events` (a fatal one): a `Driver Failure` right
    /// after the driver's `Downloading image` event, or one the docker driver
    /// words as a failed pull, is an image that cannot be pulled.
    pub fn of(events: &[TaskEvent]) -> Self {
        let Some((failure, before)) = events.split_last() else {
            return StartFailure::Other;
        };
        let downloading = before
            .last()
            .is_some_and(|e| e.kind == "Driver" && e.text() == "Downloading image");
        if failure.kind == "Driver Failure"
            && (downloading || failure.text().starts_with("Failed to pull"))
        {
            StartFailure::ImagePull
        } else {
            StartFailure::Other
        }
    }
}

/// A job that did not come up: [`ErrorKind::Unhealthy`](crate::error::ErrorKind::Unhealthy).
impl From<JobFailed> for crate::error::Error {
    fn from(e: JobFailed) -> Self {
        crate::error::Error::from_source(crate::error::ErrorKind::Unhealthy, e)
    }
}

fn describe(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

fn image_note(images: &BTreeMap<String, String>, task: &str) -> String {
    images
        .get(task)
        .map(|i| format!(" (image {i})"))
        .unwrap_or_default()
}

/// "; task pds (image X) dead: Terminated: Exit Code: 1" for each task.
fn task_summary(alloc: &AllocStub, images: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (task, state) in &alloc.task_states {
        out.push_str(&format!(
            "; task {task}{} {}",
            image_note(images, task),
            state.state
        ));
        if state.restarts > 0 {
            out.push_str(&format!(" after {} restart(s)", state.restarts));
        }
        if let Some(e) = state.last_event() {
            out.push_str(&format!(": {e}"));
        }
    }
    out
}

impl From<ApiError> for crate::error::Error {
    fn from(e: ApiError) -> Self {
        let kind = match &e {
            ApiError::Transport { source, .. } if source.is_timeout() => {
                crate::error::ErrorKind::TimedOut
            }
            _ => crate::error::ErrorKind::Api,
        };
        crate::error::Error::from_source(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_parses_lowercase_keys() {
        let ok: AgentHealth = serde_json::from_str(
            r#"{"client":{"ok":true,"message":"ok"},"server":{"ok":true,"message":"ok"}}"#,
        )
        .unwrap();
        assert!(ok.is_healthy());
        let bad: AgentHealth =
            serde_json::from_str(r#"{"client":{"ok":false,"message":"no known servers"}}"#)
                .unwrap();
        assert_eq!(bad.problem().unwrap(), "client: no known servers");
        assert!(!AgentHealth::default().is_healthy());
    }

    #[test]
    fn node_parses_drivers_and_volumes() {
        let node: Node = serde_json::from_value(json!({
            "ID": "5b1f", "Name": "droplet", "Status": "ready", "SchedulingEligibility": "eligible",
            "Drivers": {
                "docker": {"Attributes": null, "Detected": true, "Healthy": true, "HealthDescription": "Healthy"},
                "exec": {"Detected": false, "Healthy": false}
            },
            "HostVolumes": {"pds": {"Name": "pds", "Path": "/srv/nomad/pds", "ReadOnly": false}},
            "Attributes": {"driver.docker": "1"}
        }))
        .unwrap();
        assert!(node.is_ready());
        assert!(node.docker_ok());
        assert_eq!(node.host_volume_names(), ["pds"]);
        assert_eq!(node.host_volumes["pds"].path, "/srv/nomad/pds");
        let bare: Node =
            serde_json::from_value(json!({"ID": "x", "Drivers": null, "HostVolumes": null}))
                .unwrap();
        assert!(!bare.docker_ok());
    }

    #[test]
    fn alloc_stub_parses() {
        let allocs: Vec<AllocStub> = serde_json::from_value(json!([{
            "ID": "0123456789abcdef", "JobID": "pds", "JobVersion": 2, "TaskGroup": "pds",
            "DesiredStatus": "run", "ClientStatus": "pending", "CreateIndex": 17,
            "TaskStates": {"pds": {"State": "pending", "Failed": false, "Restarts": 0, "Events": [
                {"Type": "Received", "Time": 1, "DisplayMessage": "Task received by client"},
                {"Type": "Driver Failure", "Time": 2, "DisplayMessage": "Failed to pull `nope:1`: not found"}
            ]}},
            "DeploymentStatus": {"Healthy": null, "Canary": false}
        }]))
        .unwrap();
        let a = &allocs[0];
        assert_eq!(a.short_id(), "01234567");
        assert_eq!(a.job_version, 2);
        assert_eq!(a.healthy(), None);
        let last = a.task_states["pds"].last_event().unwrap();
        assert_eq!(last.kind, "Driver Failure");
        assert_eq!(
            last.to_string(),
            "Driver Failure: Failed to pull `nope:1`: not found"
        );
        let none: Vec<AllocStub> =
            serde_json::from_value(json!([{"ID": "a", "TaskStates": null}])).unwrap();
        assert!(none[0].task_states.is_empty());
    }

    #[test]
    fn placement_failure_reads_well() {
        let eval: Evaluation = serde_json::from_value(json!({
            "ID": "e", "Status": "complete", "CreateIndex": 3,
            "FailedTGAllocs": {"pds": {"NodesEvaluated": 1, "NodesFiltered": 1,
                "ConstraintFiltered": {"missing compatible host volumes": 1}, "DimensionExhausted": null}}
        }))
        .unwrap();
        assert_eq!(
            eval.failed_tg_allocs["pds"].to_string(),
            "missing compatible host volumes (filtered 1 node(s))"
        );
    }

    #[test]
    fn excerpts_are_short_single_line_and_masked() {
        let body = format!("bad job\n  env PDS_JWT_SECRET=s3cr3t {}", "x".repeat(1000));
        let e = excerpt(body.as_bytes(), &["s3cr3t"]);
        assert!(
            e.starts_with("bad job env PDS_JWT_SECRET=******** x"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        assert!(e.chars().count() <= EXCERPT_CHARS + 1);
        assert_eq!(excerpt(b"", &[]), "(empty body)");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("pds"), "pds");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn diff_types() {
        assert!(DiffType::parse("None").is_unchanged());
        assert_eq!(DiffType::parse("Edited"), DiffType::Edited);
        assert!(!DiffType::parse("Added").is_unchanged());
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let text = (1..=30)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let tail = last_lines(&text, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
    }
}
