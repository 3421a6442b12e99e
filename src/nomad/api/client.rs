//! The HTTP client: one request per call, errors that quote the response and
//! never the request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::types::*;
use super::{ApiError, ApiResult};
use crate::nomad::job::Job;
use crate::secret::MASK;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of a response body an error quotes.
const EXCERPT_CHARS: usize = 400;
/// How much of a task's log `logs` fetches (from the end).
const LOG_TAIL_BYTES: u64 = 4096;

#[derive(Clone, Debug)]
pub struct NomadApi {
    base: String,
    client: reqwest::Client,
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

/// An HTTP client for APIs reached through SSH tunnels on loopback: never
/// through a proxy from the environment, and quick to give up connecting (a
/// tunnel answers at once or not at all). Requests set their own timeouts.
pub fn plain_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        // Only fails when the TLS backend cannot initialise: a broken build.
        .expect("building the HTTP client")
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}
impl NomadApi {
    /// A client for the Nomad HTTP API at `addr` (the local end of the tunnel).
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_client(addr, plain_http_client())
    }

    /// The same over an HTTP client the run shares (building one loads the
    /// system's CA roots, which a run needs to do once at most).
    pub fn with_client(addr: SocketAddr, client: reqwest::Client) -> Self {
        NomadApi {
            base: format!("http://{addr}"),
            client,
        }
    }

    /// A client for the Nomad HTTP API at a base URL such as `http://127.0.0.1:4646`.
    pub fn with_base(base: impl Into<String>) -> Self {
        NomadApi {
            base: base.into().trim_end_matches('/').to_string(),
            client: plain_http_client(),
        }
    }

    /// Sends one request and reads the whole answer. A transport error names
    /// the method and path, never the body.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> ApiResult<Reply> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
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

    /// `GET /v1/jobs`: the IDs of every job Nomad knows (stopped ones too).
    pub async fn job_ids(&self) -> ApiResult<Vec<String>> {
        let jobs: Vec<Value> = self.get("/v1/jobs").await?;
        Ok(jobs
            .iter()
            .filter_map(|j| j["ID"].as_str().map(str::to_string))
            .collect())
    }

    /// The last ~4 KB of a task's stdout or stderr, as text.
    pub async fn logs(&self, alloc: &str, task: &str, stream: LogStream) -> ApiResult<String> {
        let tail = self.log_tail(alloc, task, stream, LOG_TAIL_BYTES).await?;
        Ok(String::from_utf8_lossy(&tail).into_owned())
    }

    /// The last `tail_bytes` of a task's stdout or stderr (`pdsup logs`).
    pub async fn log_tail(
        &self,
        alloc: &str,
        task: &str,
        stream: LogStream,
        tail_bytes: u64,
    ) -> ApiResult<Vec<u8>> {
        let path = format!(
            "/v1/client/fs/logs/{}?task={}&type={}&plain=true&origin=end&offset={tail_bytes}",
            enc(alloc),
            enc(task),
            stream.as_str()
        );
        let reply = self.send(Method::GET, &path, None).await?;
        if !reply.status.is_success() {
            return Err(Self::status_error(Method::GET, &path, &reply, &[]));
        }
        Ok(reply.body)
    }

    /// Follows a task's stdout or stderr from `tail_bytes` before its end,
    /// handing each chunk to `sink` until the allocation ends (Nomad closes
    /// the stream) or the caller drops the future.
    pub async fn follow_log(
        &self,
        alloc: &str,
        task: &str,
        stream: LogStream,
        tail_bytes: u64,
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> ApiResult<()> {
        let path = format!(
            "/v1/client/fs/logs/{}?task={}&type={}&plain=true&follow=true&origin=end&offset={tail_bytes}",
            enc(alloc),
            enc(task),
            stream.as_str()
        );
        // A client without the API client's overall timeout: the stream lasts.
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("a plain HTTP client builds");
        let transport = |source: reqwest::Error| ApiError::Transport {
            method: Method::GET,
            path: path.clone(),
            source,
        };
        let mut resp = client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            let reply = Reply { status, body };
            return Err(Self::status_error(Method::GET, &path, &reply, &[]));
        }
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            sink(&chunk);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
