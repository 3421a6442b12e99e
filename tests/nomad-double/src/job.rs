//! The job model (Nomad's field names) and its canonicalization (server-side defaults).
//!
//! Fields the double acts on are typed; every other field that survived decoding is carried in
//! `extra` so that `GET /v1/job/:id` returns it and plan diffs see it. Pointer fields with a
//! Nomad default are `Option`s until [`canonicalize`] fills them in.

#![allow(non_snake_case)]

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub const SEC: i64 = 1_000_000_000;
pub const MIN: i64 = 60 * SEC;

pub type Extra = Map<String, Value>;
pub type StrMap = BTreeMap<String, String>;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Job {
    pub Region: String,
    pub Namespace: String,
    pub ID: String,
    pub Name: String,
    pub Type: String,
    pub Priority: Option<i64>,
    pub AllAtOnce: bool,
    pub Datacenters: Vec<String>,
    pub NodePool: String,
    pub Constraints: Option<Vec<Constraint>>,
    pub TaskGroups: Vec<TaskGroup>,
    pub Update: Option<UpdateStrategy>,
    pub Periodic: Option<Value>,
    pub ParameterizedJob: Option<Value>,
    pub Meta: Option<StrMap>,
    pub Stop: bool,
    pub Status: String,
    pub StatusDescription: String,
    pub Stable: bool,
    pub Version: u64,
    pub SubmitTime: i64,
    pub CreateIndex: u64,
    pub ModifyIndex: u64,
    pub JobModifyIndex: u64,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Constraint {
    pub LTarget: String,
    pub RTarget: String,
    pub Operand: String,
}

impl Constraint {
    /// Nomad's `Constraint.String()`, the key of `ConstraintFiltered`.
    pub fn key(&self) -> String {
        format!("{} {} {}", self.LTarget, self.Operand, self.RTarget)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct UpdateStrategy {
    pub Stagger: Option<i64>,
    pub MaxParallel: Option<i64>,
    pub HealthCheck: Option<String>,
    pub MinHealthyTime: Option<i64>,
    pub HealthyDeadline: Option<i64>,
    pub ProgressDeadline: Option<i64>,
    pub Canary: Option<i64>,
    pub AutoRevert: Option<bool>,
    pub AutoPromote: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct RestartPolicy {
    pub Interval: Option<i64>,
    pub Attempts: Option<i64>,
    pub Delay: Option<i64>,
    pub Mode: Option<String>,
    pub RenderTemplates: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct TaskGroup {
    pub Name: String,
    pub Count: Option<i64>,
    pub Constraints: Option<Vec<Constraint>>,
    pub Tasks: Vec<Task>,
    pub Volumes: Option<BTreeMap<String, VolumeRequest>>,
    pub RestartPolicy: Option<RestartPolicy>,
    pub ReschedulePolicy: Option<Value>,
    pub EphemeralDisk: Option<Value>,
    pub Update: Option<UpdateStrategy>,
    pub Migrate: Option<Value>,
    pub Networks: Option<Vec<NetworkResource>>,
    pub Meta: Option<StrMap>,
    pub Services: Option<Vec<Service>>,
    pub ShutdownDelay: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct NetworkResource {
    pub Mode: String,
    pub ReservedPorts: Option<Vec<Port>>,
    pub DynamicPorts: Option<Vec<Port>>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Port {
    pub Label: String,
    pub Value: i64,
    pub To: i64,
    pub HostNetwork: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Service {
    pub Name: String,
    pub Tags: Option<Vec<String>>,
    pub PortLabel: String,
    pub AddressMode: String,
    pub Address: String,
    pub Checks: Option<Vec<ServiceCheck>>,
    pub Connect: Option<Value>,
    pub TaskName: String,
    pub OnUpdate: String,
    pub Provider: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ServiceCheck {
    pub Name: String,
    pub Type: String,
    pub Path: String,
    pub Protocol: String,
    pub PortLabel: String,
    pub AddressMode: String,
    pub Interval: i64,
    pub Timeout: i64,
    pub Method: String,
    pub Header: Option<BTreeMap<String, Vec<String>>>,
    pub TaskName: String,
    pub OnUpdate: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct VolumeRequest {
    pub Name: String,
    pub Type: String,
    pub Source: String,
    pub ReadOnly: bool,
    pub AccessMode: String,
    pub AttachmentMode: String,
    pub PerAlloc: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Task {
    pub Name: String,
    pub Driver: String,
    pub User: String,
    pub Config: Option<Map<String, Value>>,
    pub Env: Option<StrMap>,
    pub Services: Option<Vec<Service>>,
    pub Resources: Option<Resources>,
    pub RestartPolicy: Option<RestartPolicy>,
    pub KillTimeout: Option<i64>,
    pub LogConfig: Option<Value>,
    pub VolumeMounts: Option<Vec<VolumeMount>>,
    pub Templates: Option<Vec<Value>>,
    pub Artifacts: Option<Vec<Value>>,
    pub Vault: Option<Value>,
    pub Lifecycle: Option<Value>,
    pub Meta: Option<StrMap>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Resources {
    pub CPU: Option<i64>,
    pub Cores: Option<i64>,
    pub MemoryMB: Option<i64>,
    pub MemoryMaxMB: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct VolumeMount {
    pub Volume: String,
    pub Destination: String,
    pub ReadOnly: bool,
    pub PropagationMode: String,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Job {
    pub fn priority(&self) -> i64 {
        self.Priority.unwrap_or(50)
    }

    pub fn group(&self, name: &str) -> Option<&TaskGroup> {
        self.TaskGroups.iter().find(|g| g.Name == name)
    }

    /// The job without server-set fields, for Nomad's `SpecChanged` comparison and plan diffs.
    pub fn spec(&self) -> Job {
        let mut j = self.clone();
        j.Status.clear();
        j.StatusDescription.clear();
        j.Stable = false;
        j.Version = 0;
        j.SubmitTime = 0;
        j.CreateIndex = 0;
        j.ModifyIndex = 0;
        j.JobModifyIndex = 0;
        for k in ["NomadTokenID", "VersionTag", "ConsulToken", "VaultToken"] {
            j.extra.remove(k);
        }
        j
    }

    pub fn spec_changed(&self, other: &Job) -> bool {
        self.spec() != other.spec()
    }
}

impl TaskGroup {
    pub fn count(&self) -> i64 {
        self.Count.unwrap_or(1)
    }

    pub fn update(&self) -> UpdateStrategy {
        self.Update.clone().unwrap_or_default()
    }

    /// Every port of the group network: (label, static value or 0, to).
    pub fn ports(&self) -> Vec<(Port, bool)> {
        let mut out = Vec::new();
        for n in self.Networks.iter().flatten() {
            for p in n.ReservedPorts.iter().flatten() {
                out.push((p.clone(), true));
            }
            for p in n.DynamicPorts.iter().flatten() {
                out.push((p.clone(), false));
            }
        }
        out
    }

    /// Group services and task services, each with the task it belongs to (`None` = group).
    pub fn all_services(&self) -> Vec<(Option<&Task>, &Service)> {
        let mut out: Vec<(Option<&Task>, &Service)> =
            self.Services.iter().flatten().map(|s| (None, s)).collect();
        for t in &self.Tasks {
            out.extend(t.Services.iter().flatten().map(|s| (Some(t), s)));
        }
        out
    }
}

impl Task {
    pub fn config(&self) -> Map<String, Value> {
        self.Config.clone().unwrap_or_default()
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        self.RestartPolicy.clone().unwrap_or_default()
    }

    pub fn kill_timeout(&self) -> i64 {
        self.KillTimeout.unwrap_or(5 * SEC)
    }

    pub fn memory_mb(&self) -> i64 {
        self.Resources
            .as_ref()
            .and_then(|r| r.MemoryMB)
            .unwrap_or(300)
    }

    pub fn cpu(&self) -> i64 {
        self.Resources.as_ref().and_then(|r| r.CPU).unwrap_or(100)
    }
}

fn default_update() -> UpdateStrategy {
    UpdateStrategy {
        Stagger: Some(30 * SEC),
        MaxParallel: Some(1),
        HealthCheck: Some("checks".into()),
        MinHealthyTime: Some(10 * SEC),
        HealthyDeadline: Some(5 * MIN),
        ProgressDeadline: Some(10 * MIN),
        Canary: Some(0),
        AutoRevert: Some(false),
        AutoPromote: Some(false),
    }
}

fn merge_update(base: &UpdateStrategy, over: &UpdateStrategy) -> UpdateStrategy {
    UpdateStrategy {
        Stagger: over.Stagger.or(base.Stagger),
        MaxParallel: over.MaxParallel.or(base.MaxParallel),
        HealthCheck: over.HealthCheck.clone().or(base.HealthCheck.clone()),
        MinHealthyTime: over.MinHealthyTime.or(base.MinHealthyTime),
        HealthyDeadline: over.HealthyDeadline.or(base.HealthyDeadline),
        ProgressDeadline: over.ProgressDeadline.or(base.ProgressDeadline),
        Canary: over.Canary.or(base.Canary),
        AutoRevert: over.AutoRevert.or(base.AutoRevert),
        AutoPromote: over.AutoPromote.or(base.AutoPromote),
    }
}

fn merge_restart(base: &RestartPolicy, over: &RestartPolicy) -> RestartPolicy {
    RestartPolicy {
        Interval: over.Interval.or(base.Interval),
        Attempts: over.Attempts.or(base.Attempts),
        Delay: over.Delay.or(base.Delay),
        Mode: over.Mode.clone().or(base.Mode.clone()),
        RenderTemplates: over.RenderTemplates.or(base.RenderTemplates),
    }
}

fn default_restart(job_type: &str) -> RestartPolicy {
    let batch = job_type == "batch" || job_type == "sysbatch";
    RestartPolicy {
        Interval: Some(if batch { 24 * 60 * MIN } else { 30 * MIN }),
        Attempts: Some(if batch { 3 } else { 2 }),
        Delay: Some(15 * SEC),
        Mode: Some("fail".into()),
        RenderTemplates: Some(false),
    }
}

fn canonicalize_service(s: &mut Service, default_name: String) {
    if s.Name.is_empty() {
        s.Name = default_name;
    }
    if s.Provider.is_empty() {
        s.Provider = "consul".into();
    }
    if s.AddressMode.is_empty() {
        s.AddressMode = "auto".into();
    }
    if s.OnUpdate.is_empty() {
        s.OnUpdate = "require_healthy".into();
    }
    for c in s.Checks.iter_mut().flatten() {
        if c.Name.is_empty() {
            c.Name = format!("service: {:?} check", s.Name);
        }
        if c.OnUpdate.is_empty() {
            c.OnUpdate = s.OnUpdate.clone();
        }
    }
}

/// Applies the defaults that Nomad's `Canonicalize` and admission hooks fill in, including the
/// implicit service-discovery constraints (`${attr.consul.version} semver >= 1.8.0` for consul
/// services, `${attr.nomad.service_discovery} = true` for nomad services).
pub fn canonicalize(job: &mut Job) {
    if job.Name.is_empty() {
        job.Name = job.ID.clone();
    }
    if job.Namespace.is_empty() {
        job.Namespace = "default".into();
    }
    if job.Region.is_empty() {
        job.Region = "global".into();
    }
    if job.Type.is_empty() {
        job.Type = "service".into();
    }
    if job.Priority.is_none() {
        job.Priority = Some(50);
    }
    if job.NodePool.is_empty() {
        job.NodePool = "default".into();
    }
    if job.Datacenters.is_empty() {
        job.Datacenters = vec!["*".into()];
    }
    let service_like = job.Type == "service" || job.Type == "system";
    let job_update = match &job.Update {
        Some(u) => merge_update(&default_update(), u),
        None if job.Type == "service" => default_update(),
        None => UpdateStrategy::default(),
    };
    if job.Update.is_some() || job.Type == "service" {
        job.Update = Some(job_update.clone());
    }
    let job_id = job.ID.clone();
    let job_type = job.Type.clone();
    for g in &mut job.TaskGroups {
        if g.Count.is_none() {
            g.Count = Some(1);
        }
        if service_like {
            g.Update = Some(match &g.Update {
                Some(u) => merge_update(&job_update, u),
                None => job_update.clone(),
            });
        }
        let restart = match &g.RestartPolicy {
            Some(r) => merge_restart(&default_restart(&job_type), r),
            None => default_restart(&job_type),
        };
        g.RestartPolicy = Some(restart.clone());
        if job_type == "service" {
            let mut policy = serde_json::json!({"Attempts": 0, "Interval": 0, "Delay": 30 * SEC,
                "DelayFunction": "exponential", "MaxDelay": 3600 * SEC, "Unlimited": true});
            for (k, v) in g
                .ReschedulePolicy
                .iter()
                .filter_map(Value::as_object)
                .flatten()
            {
                if !v.is_null() {
                    policy[k] = v.clone();
                }
            }
            g.ReschedulePolicy = Some(policy);
        }
        if g.EphemeralDisk.is_none() {
            g.EphemeralDisk =
                Some(serde_json::json!({"Sticky": false, "Migrate": false, "SizeMB": 300}));
        }
        let gname = g.Name.clone();
        for s in g.Services.iter_mut().flatten() {
            canonicalize_service(s, format!("{job_id}-{gname}"));
        }
        for t in &mut g.Tasks {
            t.RestartPolicy = Some(match &t.RestartPolicy {
                Some(r) => merge_restart(&restart, r),
                None => restart.clone(),
            });
            if t.KillTimeout.is_none() {
                t.KillTimeout = Some(5 * SEC);
            }
            if t.LogConfig.is_none() {
                t.LogConfig = Some(
                    serde_json::json!({"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": false}),
                );
            }
            let res = t.Resources.get_or_insert_with(Resources::default);
            if res.CPU.is_none() && res.Cores.unwrap_or(0) == 0 {
                res.CPU = Some(100);
            }
            if res.Cores.is_none() {
                res.Cores = Some(0);
            }
            if res.MemoryMB.is_none() {
                res.MemoryMB = Some(300);
            }
            let tname = t.Name.clone();
            for s in t.Services.iter_mut().flatten() {
                canonicalize_service(s, format!("{job_id}-{gname}-{tname}"));
            }
        }
        // Implicit constraints from the admission hook, added once per provider.
        let providers: Vec<String> = g
            .all_services()
            .iter()
            .map(|(_, s)| s.Provider.clone())
            .collect();
        for p in providers {
            let c = if p == "nomad" {
                Constraint {
                    LTarget: "${attr.nomad.service_discovery}".into(),
                    RTarget: "true".into(),
                    Operand: "=".into(),
                }
            } else {
                Constraint {
                    LTarget: "${attr.consul.version}".into(),
                    RTarget: ">= 1.8.0".into(),
                    Operand: "semver".into(),
                }
            };
            let list = g.Constraints.get_or_insert_with(Vec::new);
            if !list.contains(&c) {
                list.push(c);
            }
        }
    }
}

/// Test helper: decode + canonicalize a job JSON value.
#[cfg(test)]
pub fn job_from(v: Value) -> Job {
    let (canon, _) = crate::decode::decode("Job", &v).unwrap();
    let mut j: Job = serde_json::from_value(canon).unwrap();
    canonicalize(&mut j);
    j
}

/// Go's `time.Duration.String()`, used in Nomad's messages ("30m0s", "15s", "500ms").
pub fn go_dur(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    fn frac(v: u64, unit: u64, suffix: &str) -> String {
        let (whole, rem) = (v / unit, v % unit);
        if rem == 0 {
            return format!("{whole}{suffix}");
        }
        let width = unit.to_string().len() - 1;
        let f = format!("{rem:0width$}");
        format!("{whole}.{}{suffix}", f.trim_end_matches('0'))
    }
    const S: u64 = 1_000_000_000;
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        frac(u, 1_000, "µs")
    } else if u < S {
        frac(u, 1_000_000, "ms")
    } else {
        let (h, m) = (u / (3600 * S), (u / (60 * S)) % 60);
        let secs = frac(u % (60 * S), S, "s");
        if h > 0 {
            format!("{h}h{m}m{secs}")
        } else if m > 0 {
            format!("{m}m{secs}")
        } else {
            secs
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations() {
        assert_eq!(go_dur(30 * MIN), "30m0s");
        assert_eq!(go_dur(15 * SEC), "15s");
        assert_eq!(go_dur(3600 * SEC), "1h0m0s");
        assert_eq!(go_dur(1_500_000_000), "1.5s");
        assert_eq!(go_dur(500_000_000), "500ms");
        assert_eq!(go_dur(0), "0s");
    }

    #[test]
    fn defaults_are_nomads() {
        let j = job_from(json!({
            "ID": "pds",
            "TaskGroups": [{"Name": "pds", "Tasks": [{"Name": "pds", "Driver": "docker"}],
                            "Services": [{"Provider": "nomad", "PortLabel": "http"}]}]
        }));
        assert_eq!(j.Name, "pds");
        assert_eq!(j.Type, "service");
        assert_eq!(j.Priority, Some(50));
        assert_eq!(j.Datacenters, vec!["*"]);
        let g = &j.TaskGroups[0];
        assert_eq!(g.Count, Some(1));
        let u = g.update();
        assert_eq!(u.MinHealthyTime, Some(10 * SEC));
        assert_eq!(u.HealthyDeadline, Some(5 * MIN));
        assert_eq!(u.HealthCheck.as_deref(), Some("checks"));
        let r = g.Tasks[0].restart_policy();
        assert_eq!(
            (r.Attempts, r.Interval, r.Delay, r.Mode.as_deref()),
            (Some(2), Some(30 * MIN), Some(15 * SEC), Some("fail"))
        );
        assert_eq!(g.Tasks[0].memory_mb(), 300);
        assert_eq!(g.Services.as_ref().unwrap()[0].Name, "pds-pds");
        assert_eq!(
            g.Constraints.as_ref().unwrap()[0].key(),
            "${attr.nomad.service_discovery} = true"
        );
        // Canonicalizing twice changes nothing: a re-submit compares equal.
        let mut again = j.clone();
        canonicalize(&mut again);
        assert!(!again.spec_changed(&j));
    }

    #[test]
    fn consul_is_the_default_provider() {
        let j = job_from(
            json!({"ID": "x", "TaskGroups": [{"Name": "g", "Services": [{"Name": "web"}], "Tasks": []}]}),
        );
        let g = &j.TaskGroups[0];
        assert_eq!(g.Services.as_ref().unwrap()[0].Provider, "consul");
        assert_eq!(
            g.Constraints.as_ref().unwrap()[0].key(),
            "${attr.consul.version} semver >= 1.8.0"
        );
    }

    #[test]
    fn unknown_fields_survive_in_extra_and_responses() {
        let j = job_from(json!({"ID": "x", "Meta": {"a": "b"}, "Spreads": [], "TaskGroups": []}));
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["Meta"]["a"], "b");
        assert_eq!(v["Spreads"], json!([]));
        assert_eq!(v["Priority"], 50);
    }
}
