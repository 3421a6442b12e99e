//! The agent: start-up (config, data dir, node identity, listeners, sd_notify, adoption of
//! running containers), signals, and every state change (register, deregister, allocation
//! updates from task runners, health, deployments, rescheduling). State changes happen under one
//! lock, are persisted, and bump the index that blocking queries wait on.

use crate::config::{self, AgentConfig};
use crate::job::{Job, SEC};
use crate::plan::{self, Node};
use crate::state::{
    now_ns, rfc3339, Alloc, AllocDeploymentStatus, AllocPort, Deployment, DeploymentState, Eval,
    State, TaskState,
};
use crate::{docker, logging, notify, runner};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

pub struct Runner {
    pub stop: watch::Sender<bool>,
    pub done: watch::Receiver<bool>,
}

#[derive(Clone, Debug, Default)]
pub struct DockerInfo {
    pub detected: bool,
    pub healthy: bool,
    pub version: String,
    pub description: String,
    pub update_time: i64,
    pub node_modify_index: u64,
}

pub struct Agent {
    pub cfg: RwLock<AgentConfig>,
    pub node_id: String,
    /// The address task ports bind to and services advertise (`client.network_interface`).
    pub node_ip: String,
    pub state: Mutex<State>,
    pub index_tx: watch::Sender<u64>,
    pub runners: Mutex<HashMap<String, Runner>>,
    /// Check results per allocation, keyed by check ID (Nomad's `/v1/client/allocation/:id/checks`).
    pub checks: Mutex<HashMap<String, BTreeMap<String, Value>>>,
    pub docker: Mutex<DockerInfo>,
    pub start_time: i64,
}

/// An HTTP error: status and Nomad's plain-text body.
#[derive(Debug)]
pub struct ApiError(pub u16, pub String);

enum Action {
    Start { alloc: String, after: Vec<String> },
    Stop { alloc: String },
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Agent {
    pub fn cfg(&self) -> AgentConfig {
        self.cfg.read().expect("cfg lock").clone()
    }

    pub fn docker_info(&self) -> DockerInfo {
        self.docker.lock().expect("docker lock").clone()
    }

    pub fn attributes(&self) -> BTreeMap<String, String> {
        let cfg = self.cfg();
        let d = self.docker_info();
        let mut a = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            a.insert(k.to_string(), v);
        };
        put("kernel.name", "linux".into());
        put(
            "os.name",
            os_release("ID").unwrap_or_else(|| "linux".into()),
        );
        put("os.version", os_release("VERSION_ID").unwrap_or_default());
        put(
            "cpu.arch",
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        );
        put("nomad.version", crate::VERSION.into());
        put("nomad.revision", "pdsup-test-double".into());
        put("nomad.service_discovery", "true".into());
        put("nomad.advertise.address", cfg.advertise.http.clone());
        put("unique.hostname", config::hostname());
        put("unique.network.ip-address", self.node_ip.clone());
        if d.detected {
            put("driver.docker", "1".into());
            put("driver.docker.version", d.version.clone());
            put(
                "driver.docker.volumes.enabled",
                cfg.docker_volumes_enabled.to_string(),
            );
            put(
                "driver.docker.privileged.enabled",
                cfg.docker_allow_privileged.to_string(),
            );
        }
        a
    }

    pub fn node(&self) -> Node {
        Node::from_config(
            &self.cfg(),
            &self.node_id,
            self.docker_info().healthy,
            self.attributes(),
        )
    }

    fn publish(&self, st: &State, data_dir: &std::path::Path) {
        if let Err(e) = st.save(data_dir) {
            log::error!("agent: failed to persist state: {e}");
        }
        self.index_tx.send_replace(st.index);
    }

    /// Runs `f` on the state under the lock, then persists and publishes the new index.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let data_dir = self.cfg().data_dir;
        let mut st = self.state.lock().expect("state lock");
        let r = f(&mut st);
        self.publish(&st, &data_dir);
        r
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().expect("state lock"))
    }

    fn busy_ports(st: &State) -> BTreeSet<i64> {
        st.allocs
            .values()
            .filter(|a| !a.terminal_client() || a.DesiredStatus == "run")
            .flat_map(|a| a.Ports.iter().map(|p| p.Value))
            .collect()
    }

    fn pick_port(&self, busy: &BTreeSet<i64>) -> i64 {
        for _ in 0..200 {
            let p = 20000 + (uuid::Uuid::new_v4().as_u128() % 12000) as i64;
            if busy.contains(&p) {
                continue;
            }
            if std::net::TcpListener::bind((self.node_ip.as_str(), p as u16)).is_ok() {
                return p;
            }
        }
        20000 + (uuid::Uuid::new_v4().as_u128() % 12000) as i64
    }

    /// `POST /v1/jobs`: Nomad's `Job.Register`. An unchanged job keeps its version and
    /// `JobModifyIndex`; an evaluation is created either way.
    pub fn register(
        self: &Arc<Self>,
        mut job: Job,
        warnings: Vec<String>,
    ) -> Result<Value, ApiError> {
        if !self.cfg().server_enabled {
            return Err(ApiError(500, "No cluster leader".into()));
        }
        let (resp, actions) = self.mutate(|st| {
            let existing = st.job(&job.ID).cloned();
            let job_modify_index = match &existing {
                Some(e) if !e.spec_changed(&job) => e.JobModifyIndex,
                _ => {
                    let idx = st.next_index();
                    job.Version = existing.as_ref().map(|e| e.Version + 1).unwrap_or(0);
                    job.CreateIndex = existing.as_ref().map(|e| e.CreateIndex).unwrap_or(idx);
                    job.ModifyIndex = idx;
                    job.JobModifyIndex = idx;
                    job.SubmitTime = now_ns();
                    job.Stable = false;
                    job.Status = "pending".into();
                    st.jobs.entry(job.ID.clone()).or_default().push(job.clone());
                    idx
                }
            };
            let (eval, actions) = self.evaluate(st, &job.ID, "job-register", &BTreeSet::new());
            let resp = json!({
                "EvalID": eval.ID, "EvalCreateIndex": eval.CreateIndex,
                "JobModifyIndex": job_modify_index, "Warnings": warnings.join("\n"),
                "Index": eval.CreateIndex, "LastContact": 0, "KnownLeader": false, "NextToken": ""
            });
            (resp, actions)
        });
        self.execute(actions);
        Ok(resp)
    }

    /// `DELETE /v1/job/:id`: stop (a new version with `Stop: true`), or purge.
    pub fn deregister(self: &Arc<Self>, id: &str, purge: bool) -> Result<Value, ApiError> {
        let (resp, actions) = self.mutate(|st| {
            let Some(current) = st.job(id).cloned() else {
                return Err(ApiError(404, "job not found".into()));
            };
            let mut modify = current.JobModifyIndex;
            if !current.Stop {
                let idx = st.next_index();
                let mut stopped = current.clone();
                stopped.Stop = true;
                stopped.Version += 1;
                stopped.ModifyIndex = idx;
                stopped.JobModifyIndex = idx;
                stopped.SubmitTime = now_ns();
                stopped.Stable = false;
                st.jobs.get_mut(id).expect("job").push(stopped);
                modify = idx;
            }
            let (eval, actions) = self.evaluate(st, id, "job-deregister", &BTreeSet::new());
            if purge {
                st.jobs.remove(id);
                st.deployments.retain(|_, d| d.JobID != id);
            }
            Ok((
                json!({
                    "EvalID": eval.ID, "EvalCreateIndex": eval.CreateIndex, "JobModifyIndex": modify,
                    "VolumeEvalID": "", "VolumeEvalIndex": 0,
                    "Index": eval.CreateIndex, "LastContact": 0, "KnownLeader": false, "NextToken": ""
                }),
                actions,
            ))
        })?;
        self.execute(actions);
        if purge {
            let id = id.to_string();
            let agent = self.clone();
            // Purged allocations are garbage-collected once their runners have stopped.
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                loop {
                    let pending = agent.read(|st| {
                        st.allocs
                            .values()
                            .filter(|a| a.JobID == id)
                            .any(|a| !a.terminal_client())
                    });
                    if !pending {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                agent.mutate(|st| {
                    st.next_index();
                    st.allocs.retain(|_, a| a.JobID != id);
                });
            });
        }
        Ok(resp)
    }

    /// Plans the current version of `job_id` and applies it. Returns the evaluation.
    fn evaluate(
        &self,
        st: &mut State,
        job_id: &str,
        triggered_by: &str,
        reschedule: &BTreeSet<String>,
    ) -> (Eval, Vec<Action>) {
        let job = st.job(job_id).cloned().expect("job exists");
        let node = self.node();
        let allocs: Vec<Alloc> = st.job_allocs(job_id).into_iter().cloned().collect();
        let refs: Vec<&Alloc> = allocs.iter().collect();
        let busy = Self::busy_ports(st);
        let p = plan::plan(&job, &refs, &node, &busy, reschedule);
        let idx = st.next_index();
        let now = now_ns();
        let mut eval = Eval {
            ID: uuid(),
            Namespace: job.Namespace.clone(),
            Priority: job.priority(),
            Type: job.Type.clone(),
            TriggeredBy: triggered_by.into(),
            JobID: job.ID.clone(),
            JobModifyIndex: job.JobModifyIndex,
            Status: "complete".into(),
            WaitUntil: crate::state::ZERO_TIME.into(),
            QueuedAllocations: job.TaskGroups.iter().map(|g| (g.Name.clone(), 0)).collect(),
            SnapshotIndex: idx,
            CreateIndex: idx,
            ModifyIndex: idx,
            CreateTime: now,
            ModifyTime: now,
            ..Default::default()
        };
        let mut actions = Vec::new();

        // A deployment for a new job version that changes allocations.
        let updates_version = p.place.iter().any(|pl| {
            pl.previous
                .as_ref()
                .is_none_or(|prev| !reschedule.contains(prev))
        }) || !p.in_place.is_empty();
        let mut deployment_id = String::new();
        if job.Type == "service" && !job.Stop && updates_version {
            let exists = st
                .deployments
                .values()
                .find(|d| d.JobID == job.ID && d.JobVersion == job.Version);
            deployment_id = match exists {
                Some(d) => d.ID.clone(),
                None => {
                    for d in st
                        .deployments
                        .values_mut()
                        .filter(|d| d.JobID == job.ID && d.active())
                    {
                        d.Status = "cancelled".into();
                        d.StatusDescription = "Cancelled due to newer version of job".into();
                        d.ModifyIndex = idx;
                        d.ModifyTime = now;
                    }
                    let d = new_deployment(&job, idx, now);
                    let id = d.ID.clone();
                    st.deployments.insert(id.clone(), d);
                    id
                }
            };
            eval.DeploymentID = deployment_id.clone();
        }

        for (id, desc) in &p.stop {
            if let Some(a) = st.allocs.get_mut(id) {
                a.DesiredStatus = "stop".into();
                a.DesiredDescription = desc.clone();
                a.ModifyIndex = idx;
                a.AllocModifyIndex = idx;
                a.ModifyTime = now;
                actions.push(Action::Stop { alloc: id.clone() });
            }
        }
        for id in &p.in_place {
            if let Some(a) = st.allocs.get_mut(id) {
                a.Job = job.clone();
                a.JobVersion = job.Version;
                a.ModifyIndex = idx;
                a.AllocModifyIndex = idx;
                a.ModifyTime = now;
                if !deployment_id.is_empty() {
                    a.DeploymentID = deployment_id.clone();
                }
            }
        }
        let mut busy = Self::busy_ports(st);
        for pl in &p.place {
            let g = job.group(&pl.group).expect("group");
            let mut ports = Vec::new();
            for (port, is_static) in g.ports() {
                let value = if is_static {
                    port.Value
                } else {
                    self.pick_port(&busy)
                };
                busy.insert(value);
                ports.push(AllocPort {
                    Label: port.Label.clone(),
                    Value: value,
                    To: port.To,
                    HostIP: self.node_ip.clone(),
                });
            }
            let mut a = Alloc {
                ID: uuid(),
                EvalID: eval.ID.clone(),
                Name: format!("{}.{}[{}]", job.ID, g.Name, pl.index),
                Namespace: job.Namespace.clone(),
                NodeID: node.id.clone(),
                NodeName: node.name.clone(),
                JobID: job.ID.clone(),
                JobVersion: job.Version,
                TaskGroup: g.Name.clone(),
                Job: job.clone(),
                DesiredStatus: "run".into(),
                ClientStatus: "pending".into(),
                ClientDescription: "No tasks have started".into(),
                TaskStates: g
                    .Tasks
                    .iter()
                    .map(|t| (t.Name.clone(), TaskState::default()))
                    .collect(),
                DeploymentID: deployment_id.clone(),
                PreviousAllocation: pl.previous.clone().unwrap_or_default(),
                Ports: ports,
                CreateIndex: idx,
                ModifyIndex: idx,
                AllocModifyIndex: idx,
                CreateTime: now,
                ModifyTime: now,
                ..Default::default()
            };
            let mut after = Vec::new();
            if let Some(prev_id) = &pl.previous {
                after.push(prev_id.clone());
                if let Some(prev) = st.allocs.get_mut(prev_id) {
                    prev.NextAllocation = a.ID.clone();
                    prev.ModifyIndex = idx;
                    if reschedule.contains(prev_id) {
                        let mut events = prev.RescheduleEvents.clone();
                        events.push(json!({"RescheduleTime": now, "PrevAllocID": prev_id, "PrevNodeID": prev.NodeID, "Delay": reschedule_delay(prev)}));
                        a.RescheduleEvents = events;
                        a.DeploymentID = prev.DeploymentID.clone();
                    }
                }
            }
            actions.push(Action::Start {
                alloc: a.ID.clone(),
                after,
            });
            st.allocs.insert(a.ID.clone(), a);
        }
        if !p.failed.is_empty() {
            let blocked = Eval {
                ID: uuid(),
                Status: "blocked".into(),
                StatusDescription: "created to place remaining allocations".into(),
                TriggeredBy: "queued-allocs".into(),
                PreviousEval: eval.ID.clone(),
                ..eval.clone()
            };
            eval.BlockedEval = blocked.ID.clone();
            eval.FailedTGAllocs = Some(p.failed.clone().into_iter().collect());
            for (g, n) in &p.queued {
                eval.QueuedAllocations.insert(g.clone(), *n);
            }
            st.evals.insert(blocked.ID.clone(), blocked);
        } else {
            for e in st
                .evals
                .values_mut()
                .filter(|e| e.JobID == job.ID && e.Status == "blocked")
            {
                e.Status = "complete".into();
                e.StatusDescription = "evaluation reblocked and unblocked".into();
                e.ModifyIndex = idx;
                e.ModifyTime = now;
            }
        }
        st.evals.insert(eval.ID.clone(), eval.clone());
        if !deployment_id.is_empty() {
            refresh_deployment(st, &deployment_id);
        }
        self.refresh_job_status(st, &job.ID);
        (eval, actions)
    }

    fn refresh_job_status(&self, st: &mut State, id: &str) {
        let status = st.job_status(id);
        if let Some(j) = st.job_mut(id) {
            j.Status = status;
        }
    }

    fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Stop { alloc } => {
                    let runners = self.runners.lock().expect("runners");
                    match runners.get(&alloc) {
                        Some(r) => {
                            let _ = r.stop.send(true);
                        }
                        None => {
                            drop(runners);
                            runner::spawn_cleanup(self.clone(), alloc);
                        }
                    }
                }
                Action::Start { alloc, after } => {
                    let waits: Vec<watch::Receiver<bool>> = {
                        let runners = self.runners.lock().expect("runners");
                        after
                            .iter()
                            .filter_map(|id| runners.get(id).map(|r| r.done.clone()))
                            .collect()
                    };
                    let r = runner::spawn(self.clone(), alloc.clone(), false, waits);
                    self.runners.lock().expect("runners").insert(alloc, r);
                }
            }
        }
    }

    /// Applies a task runner's change to an allocation and derives what follows from it:
    /// the client status, an unhealthy mark for the deployment, a reschedule.
    pub fn update_alloc(self: &Arc<Self>, id: &str, f: impl FnOnce(&mut Alloc)) {
        let reschedule = self.mutate(|st| {
            let idx = st.next_index();
            let a = st.allocs.get_mut(id)?;
            let before = a.ClientStatus.clone();
            f(a);
            let (status, desc) = derive_client_status(a);
            a.ClientStatus = status.into();
            a.ClientDescription = desc.into();
            a.ModifyIndex = idx;
            a.ModifyTime = now_ns();
            let failed_now = before != "failed" && a.ClientStatus == "failed";
            let mut dep = None;
            if failed_now
                && !a.DeploymentID.is_empty()
                && a.DeploymentStatus
                    .as_ref()
                    .and_then(|d| d.Healthy)
                    .is_none()
            {
                a.DeploymentStatus = Some(AllocDeploymentStatus {
                    Healthy: Some(false),
                    Timestamp: rfc3339(now_ns()),
                    Canary: false,
                    ModifyIndex: idx,
                });
                dep = Some(a.DeploymentID.clone());
            }
            let resched = (failed_now && a.live()).then(|| (a.ID.clone(), reschedule_delay(a)));
            let job_id = a.JobID.clone();
            if let Some(d) = dep {
                refresh_deployment(st, &d);
            }
            self.refresh_job_status(st, &job_id);
            resched
        });
        if let Some((id, delay)) = reschedule {
            self.schedule_reschedule(id, delay);
        }
    }

    pub fn set_alloc_health(&self, id: &str, healthy: bool) {
        self.mutate(|st| {
            let idx = st.next_index();
            let Some(a) = st.allocs.get_mut(id) else {
                return;
            };
            if a.DeploymentStatus
                .as_ref()
                .and_then(|d| d.Healthy)
                .is_some()
            {
                return;
            }
            a.DeploymentStatus = Some(AllocDeploymentStatus {
                Healthy: Some(healthy),
                Timestamp: rfc3339(now_ns()),
                Canary: false,
                ModifyIndex: idx,
            });
            a.ModifyIndex = idx;
            let d = a.DeploymentID.clone();
            refresh_deployment(st, &d);
        });
    }

    /// Nomad reschedules a failed service allocation after the reschedule policy's delay.
    fn schedule_reschedule(self: &Arc<Self>, alloc_id: String, delay_ns: i64) {
        let agent = self.clone();
        log::info!(
            "scheduler: allocation {alloc_id} failed; rescheduling in {}",
            crate::job::go_dur(delay_ns)
        );
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_nanos(delay_ns.max(0) as u64)).await;
            let actions = agent.mutate(|st| {
                let Some(a) = st.allocs.get(&alloc_id) else {
                    return Vec::new();
                };
                let job_id = a.JobID.clone();
                let ok = a.live()
                    && a.ClientStatus == "failed"
                    && st.job(&job_id).is_some_and(|j| !j.Stop);
                if !ok {
                    return Vec::new();
                }
                let set: BTreeSet<String> = [alloc_id.clone()].into();
                agent.evaluate(st, &job_id, "alloc-failure", &set).1
            });
            agent.execute(actions);
        });
    }

    /// Adopts allocations from the previous run and places what is missing (node update).
    fn startup(self: &Arc<Self>) {
        let (adopt, cleanup, failed, jobs) = self.read(|st| {
            let adopt: Vec<String> = st
                .allocs
                .values()
                .filter(|a| a.DesiredStatus == "run" && !a.terminal_client())
                .map(|a| a.ID.clone())
                .collect();
            let cleanup: Vec<String> = st
                .allocs
                .values()
                .filter(|a| a.DesiredStatus != "run" && !a.terminal_client())
                .map(|a| a.ID.clone())
                .collect();
            let failed: Vec<(String, i64)> = st
                .allocs
                .values()
                .filter(|a| a.live() && a.ClientStatus == "failed")
                .map(|a| (a.ID.clone(), reschedule_delay(a)))
                .collect();
            let jobs: Vec<String> = st.jobs.keys().cloned().collect();
            (adopt, cleanup, failed, jobs)
        });
        for id in adopt {
            log::info!("client: adopting allocation {id}");
            let r = runner::spawn(self.clone(), id.clone(), true, Vec::new());
            self.runners.lock().expect("runners").insert(id, r);
        }
        for id in cleanup {
            runner::spawn_cleanup(self.clone(), id);
        }
        for (id, delay) in failed {
            self.schedule_reschedule(id, delay);
        }
        self.reevaluate(&jobs, "node-update");
    }

    /// Re-plans jobs whose placement is incomplete (blocked evaluations), e.g. after the
    /// docker driver became healthy or the agent restarted with a new host volume.
    pub fn reevaluate(self: &Arc<Self>, jobs: &[String], trigger: &str) {
        let node = self.node();
        for id in jobs {
            let actions = self.mutate(|st| {
                let Some(job) = st.job(id).cloned() else {
                    return Vec::new();
                };
                let allocs: Vec<Alloc> = st.job_allocs(id).into_iter().cloned().collect();
                let refs: Vec<&Alloc> = allocs.iter().collect();
                let p = plan::plan(&job, &refs, &node, &Self::busy_ports(st), &BTreeSet::new());
                if p.place.is_empty() && p.stop.is_empty() {
                    return Vec::new();
                }
                self.evaluate(st, id, trigger, &BTreeSet::new()).1
            });
            self.execute(actions);
        }
    }

    /// Nomad's deployment watcher on a failed deployment whose group has
    /// `auto_revert`: the latest stable version of the job is registered again
    /// as a new version (evaluation triggered by `rollback`), and the failed
    /// deployment's description says so ("... - rolling back to job version N").
    /// Without a stable version, or when it has the same spec, nothing is
    /// registered and the description says that instead. A job submitted again
    /// since (a newer version) is left alone.
    fn auto_revert_failed_deployments(self: &Arc<Self>) {
        let actions = self.mutate(|st| {
            let failed: Vec<String> = st
                .deployments
                .values()
                .filter(|d| d.Status == "failed" && !d.StatusDescription.contains(" - "))
                .filter(|d| d.TaskGroups.values().any(|g| g.AutoRevert))
                .map(|d| d.ID.clone())
                .collect();
            let mut actions = Vec::new();
            for id in failed {
                let d = st.deployments[&id].clone();
                let Some(current) = st.job(&d.JobID).cloned() else {
                    continue;
                };
                if current.Version != d.JobVersion || current.Stop {
                    continue;
                }
                let stable = st.jobs[&d.JobID]
                    .iter()
                    .rev()
                    .find(|j| j.Stable && j.Version != current.Version)
                    .cloned();
                let suffix = match &stable {
                    None => " - no stable job version to auto revert to".to_string(),
                    Some(s) if !s.spec_changed(&current) => format!(
                        " - not rolling back to stable job version {} as current job has same specification",
                        s.Version
                    ),
                    Some(s) => format!(" - rolling back to job version {}", s.Version),
                };
                let idx = st.next_index();
                if let Some(dep) = st.deployments.get_mut(&id) {
                    dep.StatusDescription.push_str(&suffix);
                    dep.ModifyIndex = idx;
                    dep.ModifyTime = now_ns();
                }
                let Some(mut job) = stable.filter(|s| s.spec_changed(&current)) else {
                    continue;
                };
                job.Version = current.Version + 1;
                job.CreateIndex = current.CreateIndex;
                job.ModifyIndex = idx;
                job.JobModifyIndex = idx;
                job.SubmitTime = now_ns();
                job.Stable = false;
                job.Status = "pending".into();
                st.jobs.entry(job.ID.clone()).or_default().push(job.clone());
                let (_, more) = self.evaluate(st, &job.ID, "rollback", &BTreeSet::new());
                actions.extend(more);
            }
            actions
        });
        self.execute(actions);
    }

    /// Deployments that made no progress in time fail (`ProgressDeadline`).
    fn check_progress_deadlines(&self) {
        let now = now_ns();
        let overdue: Vec<String> = self.read(|st| {
            st.deployments
                .values()
                .filter(|d| d.active())
                .filter(|d| {
                    d.TaskGroups.values().any(|s| {
                        s.ProgressDeadline > 0
                            && s.HealthyAllocs < s.DesiredTotal
                            && chrono::DateTime::parse_from_rfc3339(&s.RequireProgressBy)
                                .map(|t| t.timestamp_nanos_opt().unwrap_or(i64::MAX) < now)
                                .unwrap_or(false)
                    })
                })
                .map(|d| d.ID.clone())
                .collect()
        });
        if overdue.is_empty() {
            return;
        }
        self.mutate(|st| {
            let idx = st.next_index();
            for id in overdue {
                if let Some(d) = st.deployments.get_mut(&id) {
                    d.Status = "failed".into();
                    d.StatusDescription = "Failed due to progress deadline".into();
                    d.ModifyIndex = idx;
                    d.ModifyTime = now;
                }
            }
        });
    }

    async fn fingerprint_docker(&self) -> bool {
        let detected = which("docker");
        let (healthy, version, description) = if !detected {
            (false, String::new(), String::new())
        } else {
            match docker::server_version().await {
                Ok(v) => (true, v, "Healthy".to_string()),
                Err(e) => {
                    log::warn!("driver.docker: failed to connect to docker daemon: {e}");
                    (
                        false,
                        String::new(),
                        "Failed to connect to docker daemon".to_string(),
                    )
                }
            }
        };
        let changed = {
            let mut d = self.docker.lock().expect("docker lock");
            let changed = d.healthy != healthy || d.detected != detected || d.version != version;
            if changed || d.update_time == 0 {
                *d = DockerInfo {
                    detected,
                    healthy,
                    version,
                    description,
                    update_time: now_ns(),
                    node_modify_index: d.node_modify_index,
                };
            }
            changed
        };
        if changed {
            let idx = self.mutate(|st| st.next_index());
            self.docker.lock().expect("docker lock").node_modify_index = idx;
        }
        changed
    }

    pub fn node_json(&self) -> Value {
        let cfg = self.cfg();
        let d = self.docker_info();
        let attrs = self.attributes();
        let host_volumes: serde_json::Map<String, Value> = cfg
            .host_volumes
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    json!({"Name": v.name, "Path": v.path, "ReadOnly": v.read_only, "ID": ""}),
                )
            })
            .collect();
        let docker_attrs = if d.detected {
            json!({"driver.docker": "1", "driver.docker.version": d.version, "driver.docker.volumes.enabled": cfg.docker_volumes_enabled.to_string()})
        } else {
            Value::Null
        };
        let mut meta = cfg.client_meta.clone();
        meta.entry("connect.sidecar_image".into())
            .or_insert_with(|| "docker.io/envoyproxy/envoy:v${NOMAD_envoy_version}".into());
        json!({
            "ID": self.node_id, "SecretID": "", "Datacenter": cfg.datacenter, "Name": cfg.node_name,
            "HTTPAddr": cfg.advertise.http, "TLSEnabled": false, "Attributes": attrs,
            "NodeResources": {"Cpu": {"CpuShares": 2000, "TotalCpuCores": num_cpus(), "ReservableCpuCores": null},
                              "Memory": {"MemoryMB": mem_mb()}, "Disk": {"DiskMB": 10000},
                              "Networks": [{"Mode": "host", "Device": cfg.network_interface, "IP": self.node_ip, "CIDR": format!("{}/32", self.node_ip), "MBits": 1000}],
                              "NodeNetworks": null, "Devices": null, "MinDynamicPort": 20000, "MaxDynamicPort": 32000},
            "ReservedResources": {"Cpu": {"CpuShares": 0}, "Memory": {"MemoryMB": 0}, "Disk": {"DiskMB": 0}, "Networks": {"ReservedHostPorts": ""}},
            "Resources": null, "Reserved": null, "Links": null, "Meta": meta,
            "NodeClass": cfg.node_class, "NodePool": cfg.node_pool, "ComputedClass": "v1:nomad-double",
            "CgroupParent": "", "Drain": false, "DrainStrategy": null, "SchedulingEligibility": "eligible",
            "Status": "ready", "StatusDescription": "", "StatusUpdatedAt": self.start_time / 1_000_000_000,
            "Events": [{"Message": "Node registered", "Subsystem": "Cluster", "Details": null, "Timestamp": rfc3339(self.start_time), "CreateIndex": 0}],
            "Drivers": {"docker": {"Attributes": docker_attrs, "Detected": d.detected, "Healthy": d.healthy,
                                   "HealthDescription": d.description, "UpdateTime": rfc3339(d.update_time)}},
            "CSIControllerPlugins": null, "CSINodePlugins": null, "HostVolumes": host_volumes,
            "GCVolumesOnNodeGC": false, "HostNetworks": null, "LastDrain": null, "NodeMaxAllocs": 0,
            "LastMissedHeartbeatIndex": 0, "LastAllocUpdateIndex": 0,
            "CreateIndex": 1, "ModifyIndex": d.node_modify_index.max(1),
        })
    }

    pub fn node_stub(&self, resources: bool, os: bool) -> Value {
        let n = self.node_json();
        let address = self
            .cfg()
            .advertise
            .http
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or_default();
        let mut stub = json!({
            "Address": address, "ID": n["ID"], "Datacenter": n["Datacenter"], "Name": n["Name"],
            "NodeClass": n["NodeClass"], "NodePool": n["NodePool"], "Version": crate::VERSION, "Drain": false,
            "SchedulingEligibility": "eligible", "Status": "ready", "StatusDescription": "",
            "Drivers": n["Drivers"], "HostVolumes": n["HostVolumes"], "LastDrain": null,
            "CreateIndex": n["CreateIndex"], "ModifyIndex": n["ModifyIndex"],
        });
        if os {
            stub["Attributes"] = json!({"os.name": n["Attributes"]["os.name"]});
        }
        if resources {
            stub["NodeResources"] = n["NodeResources"].clone();
            stub["ReservedResources"] = n["ReservedResources"].clone();
        }
        stub
    }
}

fn new_deployment(job: &Job, idx: u64, now: i64) -> Deployment {
    let groups = job
        .TaskGroups
        .iter()
        .map(|g| {
            let u = g.update();
            let pd = u.ProgressDeadline.unwrap_or(0);
            (
                g.Name.clone(),
                DeploymentState {
                    AutoRevert: u.AutoRevert.unwrap_or(false),
                    AutoPromote: u.AutoPromote.unwrap_or(false),
                    ProgressDeadline: pd,
                    RequireProgressBy: if pd > 0 {
                        rfc3339(now + pd)
                    } else {
                        crate::state::ZERO_TIME.into()
                    },
                    DesiredTotal: g.count(),
                    ..Default::default()
                },
            )
        })
        .collect();
    Deployment {
        ID: uuid(),
        Namespace: job.Namespace.clone(),
        JobID: job.ID.clone(),
        JobVersion: job.Version,
        JobModifyIndex: job.JobModifyIndex,
        JobSpecModifyIndex: job.JobModifyIndex,
        JobCreateIndex: job.CreateIndex,
        IsMultiregion: false,
        TaskGroups: groups,
        Status: "running".into(),
        StatusDescription: "Deployment is running".into(),
        EvalPriority: job.priority(),
        CreateIndex: idx,
        ModifyIndex: idx,
        CreateTime: now,
        ModifyTime: now,
    }
}

/// Recounts a deployment from its allocations and decides `successful` / `failed`.
fn refresh_deployment(st: &mut State, id: &str) {
    let Some(mut d) = st.deployments.get(id).cloned() else {
        return;
    };
    if !d.active() {
        return;
    }
    let now = now_ns();
    let mut all_healthy = true;
    let mut any_unhealthy = false;
    for (tg, s) in d.TaskGroups.iter_mut() {
        let allocs: Vec<&Alloc> = st
            .allocs
            .values()
            .filter(|a| a.DeploymentID == id && &a.TaskGroup == tg)
            .collect();
        let healthy = allocs
            .iter()
            .filter(|a| a.DeploymentStatus.as_ref().and_then(|x| x.Healthy) == Some(true))
            .count() as i64;
        let unhealthy = allocs
            .iter()
            .filter(|a| a.DeploymentStatus.as_ref().and_then(|x| x.Healthy) == Some(false))
            .count() as i64;
        if healthy > s.HealthyAllocs && s.ProgressDeadline > 0 {
            s.RequireProgressBy = rfc3339(now + s.ProgressDeadline);
        }
        s.PlacedAllocs = allocs.len() as i64;
        s.HealthyAllocs = healthy;
        s.UnhealthyAllocs = unhealthy;
        any_unhealthy |= unhealthy > 0;
        all_healthy &= healthy >= s.DesiredTotal;
    }
    if any_unhealthy {
        d.Status = "failed".into();
        d.StatusDescription = "Failed due to unhealthy allocations".into();
    } else if all_healthy {
        d.Status = "successful".into();
        d.StatusDescription = "Deployment completed successfully".into();
        if let Some(versions) = st.jobs.get_mut(&d.JobID) {
            for j in versions.iter_mut().filter(|j| j.Version == d.JobVersion) {
                j.Stable = true;
            }
        }
    }
    d.ModifyIndex = st.index;
    d.ModifyTime = now;
    st.deployments.insert(id.to_string(), d);
}

fn derive_client_status(a: &Alloc) -> (&'static str, &'static str) {
    let states: Vec<&TaskState> = a.TaskStates.values().collect();
    let all_dead = !states.is_empty() && states.iter().all(|s| s.State == "dead");
    let any_failed = states.iter().any(|s| s.Failed);
    if all_dead && any_failed {
        ("failed", "Failed tasks")
    } else if all_dead {
        ("complete", "All tasks have completed")
    } else if !states.is_empty() && states.iter().all(|s| s.State == "running") {
        ("running", "Tasks are running")
    } else {
        ("pending", "No tasks have started")
    }
}

/// The service default reschedule policy: 30s, doubling per previous reschedule, at most 1h.
fn reschedule_delay(a: &Alloc) -> i64 {
    let policy = a
        .Job
        .group(&a.TaskGroup)
        .and_then(|g| g.ReschedulePolicy.clone())
        .unwrap_or(Value::Null);
    let base = policy
        .get("Delay")
        .and_then(Value::as_i64)
        .unwrap_or(30 * SEC);
    let max = policy
        .get("MaxDelay")
        .and_then(Value::as_i64)
        .unwrap_or(3600 * SEC);
    let n = a.RescheduleEvents.len().min(16) as u32;
    (base.saturating_mul(1i64 << n)).min(max)
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

fn os_release(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}="))
            .map(|v| v.trim_matches('"').to_string())
    })
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn mem_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024)
}

fn node_id(data_dir: &std::path::Path) -> Result<String, String> {
    let p = data_dir.join("client").join("client-id");
    if let Ok(id) = std::fs::read_to_string(&p) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    std::fs::create_dir_all(p.parent().expect("parent")).map_err(|e| e.to_string())?;
    let id = uuid();
    std::fs::write(&p, &id).map_err(|e| e.to_string())?;
    Ok(id)
}

/// `nomad agent -config ...`
pub fn run(paths: Vec<String>) -> ExitCode {
    let cfg = match config::load(&paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("==> {e}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(&cfg.log_level);
    println!("==> Loaded configuration from {}", cfg.files.join(", "));
    println!("==> Starting Nomad agent... (pdsup test double, not HashiCorp Nomad)");
    if let Err(e) = config::check_host_volumes(&cfg) {
        eprintln!("==> {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::fs::create_dir_all(&cfg.data_dir) {
        eprintln!(
            "==> Error starting agent: failed to create data_dir {}: {e}",
            cfg.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let node_id = match node_id(&cfg.data_dir) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("==> Error starting agent: client setup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = match State::load(&cfg.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("==> Error starting agent: failed to restore state: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("==> Error starting agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(serve(paths, cfg, node_id, state));
    // Dropping the runtime kills `docker wait` children; the containers keep running.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

async fn serve(paths: Vec<String>, cfg: AgentConfig, node_id: String, state: State) -> ExitCode {
    let mut listeners = Vec::new();
    for addr in &cfg.http_addrs {
        match tokio::net::TcpListener::bind((addr.as_str(), cfg.http_port)).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("==> Error starting http server: failed to start HTTP listener: listen tcp {addr}:{}: bind: {e}", cfg.http_port);
                return ExitCode::FAILURE;
            }
        }
    }
    let node_ip = if cfg.network_interface.is_empty() {
        crate::netutil::default_ip().to_string()
    } else {
        match crate::netutil::interface_ip(&cfg.network_interface) {
            Some(ip) => ip.to_string(),
            None => {
                eprintln!(
                    "==> Error starting agent: client setup failed: fingerprinting failed: no IPv4 address on network_interface {:?}",
                    cfg.network_interface
                );
                return ExitCode::FAILURE;
            }
        }
    };
    let (index_tx, _) = watch::channel(state.index);
    let agent = Arc::new(Agent {
        cfg: RwLock::new(cfg.clone()),
        node_id,
        node_ip,
        state: Mutex::new(state),
        index_tx,
        runners: Mutex::new(HashMap::new()),
        checks: Mutex::new(HashMap::new()),
        docker: Mutex::new(DockerInfo::default()),
        start_time: now_ns(),
    });
    agent.fingerprint_docker().await;

    println!("==> Nomad agent configuration:\n");
    println!(
        "       Advertise Addrs: HTTP: {}; RPC: {}; Serf: {}",
        cfg.advertise.http, cfg.advertise.rpc, cfg.advertise.serf
    );
    println!(
        "            Bind Addrs: HTTP: [{}]",
        cfg.http_addrs
            .iter()
            .map(|a| format!("{a}:{}", cfg.http_port))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("                Client: true");
    println!("             Log Level: {}", cfg.log_level);
    println!("               Node Id: {}", agent.node_id);
    println!(
        "                Region: {} (DC: {})",
        cfg.region, cfg.datacenter
    );
    println!("                Server: {}", cfg.server_enabled);
    println!(
        "               Version: {} (pdsup test double, not HashiCorp Nomad)\n",
        crate::VERSION
    );
    println!("==> Nomad agent started! Log data will stream in below:\n");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = crate::api::router(agent.clone());
    let mut servers = Vec::new();
    for l in listeners {
        let mut rx = shutdown_rx.clone();
        let app = app.clone();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    notify::notify("READY=1");
    log::info!(
        "agent: HTTP API listening on {:?} port {}",
        cfg.http_addrs,
        cfg.http_port
    );
    agent.startup();

    let bg = agent.clone();
    tokio::spawn(async move {
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            bg.check_progress_deadlines();
            bg.auto_revert_failed_deployments();
            tick += 1;
            if tick.is_multiple_of(15) && bg.fingerprint_docker().await && bg.docker_info().healthy
            {
                let jobs: Vec<String> = bg.read(|st| st.jobs.keys().cloned().collect());
                bg.reevaluate(&jobs, "node-update");
            }
        }
    });

    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("==> Error starting agent: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    loop {
        tokio::select! {
            _ = int.recv() => { log::info!("agent: Caught signal: interrupt"); break; }
            _ = term.recv() => { log::info!("agent: Caught signal: terminated"); break; }
            _ = hup.recv() => {
                log::info!("agent: Caught signal: hangup; reloading configuration");
                notify::notify("RELOADING=1");
                reload(&agent, &paths);
                notify::notify("READY=1");
            }
        }
    }
    notify::notify("STOPPING=1");
    let _ = shutdown_tx.send(true);
    for s in servers {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s).await;
    }
    agent.mutate(|_| ());
    log::info!("agent: shutdown complete; task containers keep running");
    ExitCode::SUCCESS
}

/// SIGHUP: Nomad reloads the log level and a few other settings; host volumes, ports and
/// addresses need a restart, which it logs.
fn reload(agent: &Agent, paths: &[String]) {
    match config::load(paths) {
        Err(e) => log::error!("agent: failed to reload configs: {e}"),
        Ok(new) => {
            let mut cur = agent.cfg.write().expect("cfg lock");
            if new.host_volumes != cur.host_volumes
                || new.http_port != cur.http_port
                || new.http_addrs != cur.http_addrs
            {
                log::warn!(
                    "agent: host volume, port or address changes take effect only after a restart"
                );
            }
            logging::set_level(&new.log_level);
            cur.log_level = new.log_level;
            log::info!("agent: reloaded configuration");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_status_follows_task_states() {
        let mut a = Alloc::default();
        a.TaskStates.insert("t".into(), TaskState::default());
        assert_eq!(derive_client_status(&a).0, "pending");
        a.TaskStates.get_mut("t").unwrap().State = "running".into();
        assert_eq!(derive_client_status(&a), ("running", "Tasks are running"));
        let s = a.TaskStates.get_mut("t").unwrap();
        s.State = "dead".into();
        s.Failed = true;
        assert_eq!(derive_client_status(&a).0, "failed");
        a.TaskStates.get_mut("t").unwrap().Failed = false;
        assert_eq!(derive_client_status(&a).0, "complete");
    }

    #[test]
    fn reschedule_delay_doubles() {
        let mut a = Alloc::default();
        assert_eq!(reschedule_delay(&a), 30 * SEC);
        a.RescheduleEvents = vec![Value::Null; 2];
        assert_eq!(reschedule_delay(&a), 120 * SEC);
        a.RescheduleEvents = vec![Value::Null; 10];
        assert_eq!(reschedule_delay(&a), 3600 * SEC);
    }
}
