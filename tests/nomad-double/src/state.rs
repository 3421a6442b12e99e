//! The agent's state: jobs (all versions), allocations, evaluations and deployments, with a raft
//! -like index, persisted as one JSON file in `data_dir` so that jobs survive an agent restart.
//! The structs use Nomad's field names, so most responses serialize them directly.

#![allow(non_snake_case)]

use crate::job::Job;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub fn rfc3339(ns: i64) -> String {
    if ns == 0 {
        return ZERO_TIME.into();
    }
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct TaskEvent {
    pub Type: String,
    pub Time: i64,
    pub Message: String,
    pub DisplayMessage: String,
    pub Details: BTreeMap<String, String>,
    pub FailsTask: bool,
    pub RestartReason: String,
    pub SetupError: String,
    pub DriverError: String,
    pub DriverMessage: String,
    pub ExitCode: i64,
    pub Signal: i64,
    pub KillReason: String,
    pub KillTimeout: i64,
    pub KillError: String,
    pub StartDelay: i64,
    pub DownloadError: String,
    pub ValidationError: String,
    pub DiskLimit: i64,
    pub FailedSibling: String,
    pub VaultError: String,
    pub TaskSignalReason: String,
    pub TaskSignal: String,
    pub GenericSource: String,
}

impl TaskEvent {
    pub fn new(ty: &str, display: impl Into<String>) -> Self {
        TaskEvent {
            Type: ty.into(),
            Time: now_ns(),
            DisplayMessage: display.into(),
            ..Default::default()
        }
    }

    pub fn detail(mut self, k: &str, v: impl Into<String>) -> Self {
        self.Details.insert(k.into(), v.into());
        self
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct TaskState {
    pub State: String,
    pub Failed: bool,
    pub Restarts: u64,
    pub LastRestart: String,
    pub StartedAt: String,
    pub FinishedAt: String,
    pub Events: Vec<TaskEvent>,
    pub Paused: String,
}

impl Default for TaskState {
    fn default() -> Self {
        TaskState {
            State: "pending".into(),
            Failed: false,
            Restarts: 0,
            LastRestart: ZERO_TIME.into(),
            StartedAt: ZERO_TIME.into(),
            FinishedAt: ZERO_TIME.into(),
            Events: Vec::new(),
            Paused: String::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct AllocDeploymentStatus {
    pub Healthy: Option<bool>,
    pub Timestamp: String,
    pub Canary: bool,
    pub ModifyIndex: u64,
}

/// A port assigned to an allocation: `Value` is the host port, `To` the container port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct AllocPort {
    pub Label: String,
    pub Value: i64,
    pub To: i64,
    pub HostIP: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Alloc {
    pub ID: String,
    pub EvalID: String,
    pub Name: String,
    pub Namespace: String,
    pub NodeID: String,
    pub NodeName: String,
    pub JobID: String,
    pub JobVersion: u64,
    pub TaskGroup: String,
    pub Job: Job,
    pub DesiredStatus: String,
    pub DesiredDescription: String,
    pub ClientStatus: String,
    pub ClientDescription: String,
    pub TaskStates: BTreeMap<String, TaskState>,
    pub DeploymentID: String,
    pub DeploymentStatus: Option<AllocDeploymentStatus>,
    pub PreviousAllocation: String,
    pub NextAllocation: String,
    pub FollowupEvalID: String,
    pub RescheduleEvents: Vec<Value>,
    pub Ports: Vec<AllocPort>,
    pub CreateIndex: u64,
    pub ModifyIndex: u64,
    pub AllocModifyIndex: u64,
    pub CreateTime: i64,
    pub ModifyTime: i64,
}

impl Alloc {
    pub fn terminal_client(&self) -> bool {
        matches!(self.ClientStatus.as_str(), "complete" | "failed" | "lost")
    }

    /// Still wanted and not replaced: the allocations a scheduler counts.
    pub fn live(&self) -> bool {
        self.DesiredStatus == "run" && self.NextAllocation.is_empty()
    }

    pub fn index(&self) -> u64 {
        self.Name
            .rsplit_once('[')
            .and_then(|(_, r)| r.trim_end_matches(']').parse().ok())
            .unwrap_or(0)
    }

    fn allocated_resources(&self) -> Value {
        let group = self.Job.group(&self.TaskGroup);
        let tasks: serde_json::Map<String, Value> = group
            .map(|g| {
                g.Tasks
                    .iter()
                    .map(|t| {
                        (
                            t.Name.clone(),
                            json!({
                                "Cpu": {"CpuShares": t.cpu(), "ReservedCores": null},
                                "Memory": {"MemoryMB": t.memory_mb(), "MemoryMaxMB": 0},
                                "Networks": null, "Devices": null
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ip = self
            .Ports
            .first()
            .map(|p| p.HostIP.clone())
            .unwrap_or_default();
        let (mut reserved, mut dynamic) = (Vec::new(), Vec::new());
        if let Some(g) = group {
            for (p, is_static) in g.ports() {
                let v = self
                    .Ports
                    .iter()
                    .find(|a| a.Label == p.Label)
                    .map(|a| a.Value)
                    .unwrap_or(0);
                let port =
                    json!({"Label": p.Label, "Value": v, "To": p.To, "HostNetwork": "default"});
                if is_static {
                    reserved.push(port)
                } else {
                    dynamic.push(port)
                }
            }
        }
        let networks = if group.is_some_and(|g| g.Networks.as_ref().is_some_and(|n| !n.is_empty()))
        {
            json!([{"Mode": "host", "Device": "", "CIDR": "", "IP": ip, "MBits": 0, "DNS": null,
                    "ReservedPorts": reserved, "DynamicPorts": dynamic, "Hostname": ""}])
        } else {
            Value::Null
        };
        json!({
            "Tasks": tasks,
            "TaskLifecycles": null,
            "Shared": {"Networks": networks, "DiskMB": 300, "Ports": self.Ports},
        })
    }

    /// `GET /v1/allocation/:id`
    pub fn to_api(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        let m = v.as_object_mut().expect("object");
        m.remove("Ports");
        m.remove("RescheduleEvents");
        m.insert("JobType".into(), json!(self.Job.Type));
        m.insert("AllocatedResources".into(), self.allocated_resources());
        m.insert("DesiredTransition".into(), json!({"Migrate": null, "Reschedule": null, "ForceReschedule": null, "NoShutdownDelay": null}));
        m.insert("RescheduleTracker".into(), self.reschedule_tracker());
        m.insert("PreemptedAllocations".into(), Value::Null);
        m.insert("PreemptedByAllocation".into(), json!(""));
        m.insert("Resources".into(), Value::Null);
        m.insert("SignedIdentities".into(), Value::Null);
        v
    }

    fn reschedule_tracker(&self) -> Value {
        if self.RescheduleEvents.is_empty() {
            Value::Null
        } else {
            json!({"Events": self.RescheduleEvents, "LastReschedule": ""})
        }
    }

    /// `AllocListStub`, as in `GET /v1/job/:id/allocations`.
    pub fn stub(&self) -> Value {
        json!({
            "ID": self.ID, "EvalID": self.EvalID, "Name": self.Name, "Namespace": self.Namespace,
            "NodeID": self.NodeID, "NodeName": self.NodeName, "JobID": self.JobID,
            "JobType": self.Job.Type, "JobVersion": self.JobVersion, "TaskGroup": self.TaskGroup,
            "AllocatedResources": self.allocated_resources(),
            "DesiredStatus": self.DesiredStatus, "DesiredDescription": self.DesiredDescription,
            "ClientStatus": self.ClientStatus, "ClientDescription": self.ClientDescription,
            "DesiredTransition": {"Migrate": null, "Reschedule": null, "ForceReschedule": null, "NoShutdownDelay": null},
            "TaskStates": self.TaskStates, "DeploymentStatus": self.DeploymentStatus,
            "FollowupEvalID": self.FollowupEvalID, "NextAllocation": self.NextAllocation,
            "RescheduleTracker": self.reschedule_tracker(),
            "PreemptedAllocations": null, "PreemptedByAllocation": "",
            "CreateIndex": self.CreateIndex, "ModifyIndex": self.ModifyIndex,
            "CreateTime": self.CreateTime, "ModifyTime": self.ModifyTime,
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Eval {
    pub ID: String,
    pub Namespace: String,
    pub Priority: i64,
    pub Type: String,
    pub TriggeredBy: String,
    pub JobID: String,
    pub JobModifyIndex: u64,
    pub NodeID: String,
    pub NodeModifyIndex: u64,
    pub DeploymentID: String,
    pub Status: String,
    pub StatusDescription: String,
    pub Wait: i64,
    pub WaitUntil: String,
    pub NextEval: String,
    pub PreviousEval: String,
    pub BlockedEval: String,
    pub RelatedEvals: Option<Value>,
    pub FailedTGAllocs: Option<BTreeMap<String, Value>>,
    pub ClassEligibility: Option<Value>,
    pub EscapedComputedClass: bool,
    pub QuotaLimitReached: String,
    pub AnnotatePlan: bool,
    pub QueuedAllocations: BTreeMap<String, i64>,
    pub LeaderACL: String,
    pub SnapshotIndex: u64,
    pub CreateIndex: u64,
    pub ModifyIndex: u64,
    pub CreateTime: i64,
    pub ModifyTime: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct DeploymentState {
    pub AutoRevert: bool,
    pub AutoPromote: bool,
    pub ProgressDeadline: i64,
    pub RequireProgressBy: String,
    pub Promoted: bool,
    pub PlacedCanaries: Option<Vec<String>>,
    pub DesiredCanaries: i64,
    pub DesiredTotal: i64,
    pub PlacedAllocs: i64,
    pub HealthyAllocs: i64,
    pub UnhealthyAllocs: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Deployment {
    pub ID: String,
    pub Namespace: String,
    pub JobID: String,
    pub JobVersion: u64,
    pub JobModifyIndex: u64,
    pub JobSpecModifyIndex: u64,
    pub JobCreateIndex: u64,
    pub IsMultiregion: bool,
    pub TaskGroups: BTreeMap<String, DeploymentState>,
    pub Status: String,
    pub StatusDescription: String,
    pub EvalPriority: i64,
    pub CreateIndex: u64,
    pub ModifyIndex: u64,
    pub CreateTime: i64,
    pub ModifyTime: i64,
}

impl Deployment {
    pub fn active(&self) -> bool {
        matches!(
            self.Status.as_str(),
            "running" | "paused" | "pending" | "initializing" | "blocked"
        )
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
pub struct State {
    pub index: u64,
    /// Every version of every job, oldest first; the last one is current.
    pub jobs: BTreeMap<String, Vec<Job>>,
    pub allocs: BTreeMap<String, Alloc>,
    pub evals: BTreeMap<String, Eval>,
    pub deployments: BTreeMap<String, Deployment>,
}

impl State {
    pub fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id).and_then(|v| v.last())
    }

    pub fn job_mut(&mut self, id: &str) -> Option<&mut Job> {
        self.jobs.get_mut(id).and_then(|v| v.last_mut())
    }

    pub fn job_allocs(&self, id: &str) -> Vec<&Alloc> {
        let mut v: Vec<&Alloc> = self.allocs.values().filter(|a| a.JobID == id).collect();
        v.sort_by_key(|a| a.CreateIndex);
        v
    }

    pub fn latest_deployment(&self, job_id: &str) -> Option<&Deployment> {
        self.deployments
            .values()
            .filter(|d| d.JobID == job_id)
            .max_by_key(|d| d.CreateIndex)
    }

    /// Job status as Nomad derives it: `pending` with nothing placed, `running` while any
    /// allocation is non-terminal, `dead` once everything is terminal (or the job is stopped).
    pub fn job_status(&self, id: &str) -> String {
        let Some(job) = self.job(id) else {
            return String::new();
        };
        let allocs = self.job_allocs(id);
        if allocs.iter().any(|a| !a.terminal_client()) {
            return "running".into();
        }
        if job.Stop || !allocs.is_empty() {
            return "dead".into();
        }
        "pending".into()
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("nomad-double").join("state.json")
    }

    pub fn load(data_dir: &Path) -> Result<State, String> {
        let p = Self::path(data_dir);
        match std::fs::read(&p) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // Jobs carry their env (secrets included): owner-only, like Nomad's state files.
        let p = Self::path(data_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p.parent().expect("parent"))?;
        let tmp = p.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(self)?)?;
        drop(f);
        std::fs::rename(tmp, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::default();
        s.next_index();
        s.jobs.insert(
            "pds".into(),
            vec![crate::job::job_from(json!({"ID": "pds", "TaskGroups": []}))],
        );
        s.save(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(State::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = State::load(dir.path()).unwrap();
        assert_eq!(back.index, 1);
        assert_eq!(back.job("pds").unwrap().ID, "pds");
        assert_eq!(back.job_status("pds"), "pending");
    }

    #[test]
    fn alloc_shapes() {
        let a = Alloc {
            ID: "a".into(),
            Name: "pds.pds[0]".into(),
            Ports: vec![AllocPort {
                Label: "http".into(),
                Value: 23456,
                To: 3000,
                HostIP: "127.0.0.1".into(),
            }],
            ..Default::default()
        };
        assert_eq!(a.index(), 0);
        let stub = a.stub();
        for k in [
            "ID",
            "JobID",
            "JobVersion",
            "TaskGroup",
            "ClientStatus",
            "DesiredStatus",
            "TaskStates",
            "DeploymentStatus",
            "CreateTime",
            "ModifyTime",
        ] {
            assert!(stub.get(k).is_some(), "stub lacks {k}");
        }
        assert_eq!(stub["DeploymentStatus"], Value::Null);
        let full = a.to_api();
        assert_eq!(
            full["AllocatedResources"]["Shared"]["Ports"][0]["Value"],
            23456
        );
        assert!(full.get("Ports").is_none());
        assert_eq!(rfc3339(0), ZERO_TIME);
    }
}
