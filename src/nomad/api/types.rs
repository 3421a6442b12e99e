//! What Nomad's API answers, the parts pdsup reads (Go field names).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn diff_types() {
        assert!(DiffType::parse("None").is_unchanged());
        assert_eq!(DiffType::parse("Edited"), DiffType::Edited);
        assert!(!DiffType::parse("Added").is_unchanged());
    }
}
