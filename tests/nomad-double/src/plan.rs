//! Scheduling as a pure function: given the submitted job, the node and the job's allocations,
//! decide what to stop, update in place, replace and place, and why a group cannot be placed
//! (Nomad's `AllocMetric`, e.g. `ConstraintFiltered: {"missing compatible host volumes": 1}`).
//! Used by both register (then applied) and `plan` (only reported).

use crate::config::AgentConfig;
use crate::job::{Constraint, Job, TaskGroup};
use crate::state::Alloc;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What the scheduler knows about the (single) node.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub region: String,
    pub node_class: String,
    pub node_pool: String,
    pub docker_healthy: bool,
    pub attributes: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub host_volumes: Vec<crate::config::HostVolume>,
}

impl Node {
    pub fn from_config(
        cfg: &AgentConfig,
        id: &str,
        docker_healthy: bool,
        attributes: BTreeMap<String, String>,
    ) -> Node {
        Node {
            id: id.into(),
            name: cfg.node_name.clone(),
            datacenter: cfg.datacenter.clone(),
            region: cfg.region.clone(),
            node_class: cfg.node_class.clone(),
            node_pool: cfg.node_pool.clone(),
            docker_healthy,
            attributes,
            meta: cfg.client_meta.clone(),
            host_volumes: cfg.host_volumes.clone(),
        }
    }

    fn resolve(&self, target: &str) -> Option<String> {
        let Some(inner) = target.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else {
            return Some(target.to_string());
        };
        if let Some(a) = inner.strip_prefix("attr.") {
            return self.attributes.get(a).cloned();
        }
        if let Some(m) = inner.strip_prefix("meta.") {
            return self.meta.get(m).cloned();
        }
        match inner {
            "node.unique.id" => Some(self.id.clone()),
            "node.unique.name" => Some(self.name.clone()),
            "node.datacenter" => Some(self.datacenter.clone()),
            "node.region" => Some(self.region.clone()),
            "node.class" => Some(self.node_class.clone()),
            "node.pool" => Some(self.node_pool.clone()),
            _ => None,
        }
    }

    /// Evaluates a constraint against this node, like Nomad's `checkConstraint`.
    pub fn satisfies(&self, c: &Constraint) -> bool {
        let l = self.resolve(&c.LTarget);
        let r = self.resolve(&c.RTarget);
        match c.Operand.as_str() {
            "" | "=" | "==" | "is" => l.is_some() && l == r,
            "!=" | "not" => l != r,
            "is_set" => l.is_some(),
            "is_not_set" => l.is_none(),
            "semver" | "version" => match (l, r) {
                (Some(l), Some(r)) => version_matches(&l, &r),
                _ => false,
            },
            "set_contains" | "set_contains_all" => match (l, r) {
                (Some(l), Some(r)) => {
                    let have: BTreeSet<&str> = l.split(',').map(str::trim).collect();
                    r.split(',').map(str::trim).all(|x| have.contains(x))
                }
                _ => false,
            },
            "set_contains_any" => match (l, r) {
                (Some(l), Some(r)) => {
                    let have: BTreeSet<&str> = l.split(',').map(str::trim).collect();
                    r.split(',').map(str::trim).any(|x| have.contains(x))
                }
                _ => false,
            },
            // One node: distinctness always holds.
            "distinct_hosts" | "distinct_property" => true,
            other => {
                log::warn!("scheduler: constraint operand {other:?} is not implemented by the test double; treating it as satisfied");
                true
            }
        }
    }
}

fn parse_version(s: &str) -> Vec<u64> {
    s.trim()
        .trim_start_matches('v')
        .split(['-', '+'])
        .next()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// `">= 1.8.0, < 2"` style version constraints.
fn version_matches(have: &str, constraint: &str) -> bool {
    let h = parse_version(have);
    constraint.split(',').all(|part| {
        let part = part.trim();
        let (op, v) = ["> =", ">=", "<=", "!=", ">", "<", "=", "~>"]
            .iter()
            .find_map(|op| part.strip_prefix(op).map(|v| (*op, v)))
            .unwrap_or(("=", part));
        let want = parse_version(v);
        let ord = h.cmp(&want);
        match op {
            ">=" | "> =" => ord.is_ge(),
            "<=" => ord.is_le(),
            ">" => ord.is_gt(),
            "<" => ord.is_lt(),
            "!=" => ord.is_ne(),
            "~>" => ord.is_ge() && h.first() == want.first(),
            _ => ord.is_eq(),
        }
    })
}

fn glob_match(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((pre, post)) => {
            s.len() >= pre.len() + post.len() && s.starts_with(pre) && s.ends_with(post)
        }
    }
}

fn metric() -> serde_json::Map<String, Value> {
    json!({
        "NodesEvaluated": 0, "NodesFiltered": 0, "NodesInPool": 1, "NodePool": "default",
        "NodesAvailable": {}, "ClassFiltered": null, "ConstraintFiltered": null,
        "NodesExhausted": 0, "ClassExhausted": null, "DimensionExhausted": null,
        "QuotaExhausted": null, "ResourcesExhausted": null, "Scores": null,
        "ScoreMetaData": null, "AllocationTime": 0, "CoalescedFailures": 0
    })
    .as_object()
    .cloned()
    .expect("object")
}

/// Whether the group fits the node; `Err` is Nomad's `AllocMetric` for `FailedTGAllocs`.
/// `busy_ports` are host ports held by other allocations.
pub fn feasible(
    job: &Job,
    g: &TaskGroup,
    node: &Node,
    busy_ports: &BTreeSet<i64>,
) -> Result<(), Value> {
    let mut m = metric();
    m.insert("NodePool".into(), json!(job.NodePool));
    let in_dc = job
        .Datacenters
        .iter()
        .any(|d| glob_match(d, &node.datacenter));
    let avail: serde_json::Map<String, Value> = job
        .Datacenters
        .iter()
        .map(|d| {
            (
                d.clone(),
                json!(if glob_match(d, &node.datacenter) {
                    1
                } else {
                    0
                }),
            )
        })
        .collect();
    m.insert("NodesAvailable".into(), Value::Object(avail));
    let in_pool = job.NodePool == "all" || job.NodePool == node.node_pool;
    if !in_pool {
        m.insert("NodesInPool".into(), json!(0));
    }
    if !in_dc || !in_pool {
        return Err(Value::Object(m));
    }
    m.insert("NodesEvaluated".into(), json!(1));
    let filtered = |mut m: serde_json::Map<String, Value>, key: String| {
        m.insert("NodesFiltered".into(), json!(1));
        m.insert("ConstraintFiltered".into(), json!({ key: 1 }));
        Err(Value::Object(m))
    };
    for c in job.Constraints.iter().flatten() {
        if !node.satisfies(c) {
            return filtered(m, c.key());
        }
    }
    if g.Tasks
        .iter()
        .any(|t| t.Driver != "docker" || !node.docker_healthy)
    {
        return filtered(m, "missing drivers".into());
    }
    let task_constraints = g.Tasks.iter().flat_map(|t| {
        t.extra
            .get("Constraints")
            .and_then(|v| serde_json::from_value::<Vec<Constraint>>(v.clone()).ok())
            .unwrap_or_default()
    });
    for c in g
        .Constraints
        .iter()
        .flatten()
        .cloned()
        .chain(task_constraints)
    {
        if !node.satisfies(&c) {
            return filtered(m, c.key());
        }
    }
    for v in g.Volumes.iter().flat_map(|v| v.values()) {
        if v.Type != "host" {
            continue;
        }
        let ok = node
            .host_volumes
            .iter()
            .any(|hv| hv.name == v.Source && (v.ReadOnly || !hv.read_only));
        if !ok {
            return filtered(m, "missing compatible host volumes".into());
        }
    }
    for (p, is_static) in g.ports() {
        if is_static && busy_ports.contains(&p.Value) {
            m.insert("NodesExhausted".into(), json!(1));
            m.insert(
                "DimensionExhausted".into(),
                json!({ format!("network: reserved port collision {}={}", p.Label, p.Value): 1 }),
            );
            return Err(Value::Object(m));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredUpdates {
    pub ignore: u64,
    pub place: u64,
    pub stop: u64,
    pub in_place: u64,
    pub destructive: u64,
}

impl DesiredUpdates {
    pub fn to_api(&self) -> Value {
        json!({
            "Ignore": self.ignore, "Place": self.place, "Migrate": 0, "Stop": self.stop,
            "InPlaceUpdate": self.in_place, "DestructiveUpdate": self.destructive,
            "Canary": 0, "Preemptions": 0
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub group: String,
    pub index: u64,
    /// The allocation this one replaces (destructive update or reschedule).
    pub previous: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub stop: Vec<(String, String)>,
    pub in_place: Vec<String>,
    pub place: Vec<Placement>,
    pub desired: BTreeMap<String, DesiredUpdates>,
    pub failed: BTreeMap<String, Value>,
    pub queued: BTreeMap<String, i64>,
}

impl Plan {
    #[cfg(test)]
    pub fn changes_anything(&self) -> bool {
        !self.stop.is_empty() || !self.in_place.is_empty() || !self.place.is_empty()
    }
}

/// Whether a group changed in a way that needs new allocations (anything but `Count`).
pub fn destructive(old: Option<&TaskGroup>, new: &TaskGroup) -> bool {
    let Some(old) = old else { return true };
    let strip = |g: &TaskGroup| {
        let mut g = g.clone();
        g.Count = None;
        g
    };
    strip(old) != strip(new)
}

/// Reconciles `job` (already versioned) with its allocations. `reschedule` names failed
/// allocations whose reschedule delay has passed: they get replacements.
pub fn plan(
    job: &Job,
    allocs: &[&Alloc],
    node: &Node,
    busy_ports: &BTreeSet<i64>,
    reschedule: &BTreeSet<String>,
) -> Plan {
    let mut plan = Plan::default();
    let live: Vec<&Alloc> = allocs.iter().copied().filter(|a| a.live()).collect();
    for a in &live {
        if job.Stop || job.group(&a.TaskGroup).is_none() {
            plan.stop
                .push((a.ID.clone(), "alloc not needed due to job update".into()));
            plan.desired.entry(a.TaskGroup.clone()).or_default().stop += 1;
        }
    }
    if job.Stop {
        return plan;
    }
    for g in &job.TaskGroups {
        let mut d = DesiredUpdates::default();
        let mut mine: Vec<&Alloc> = live
            .iter()
            .copied()
            .filter(|a| a.TaskGroup == g.Name)
            .collect();
        mine.sort_by_key(|a| (a.index(), a.CreateIndex));
        let count = g.count().max(0) as usize;
        let mut places = Vec::new();
        let mut keep = 0usize;
        let mut used_idx: BTreeSet<u64> = BTreeSet::new();
        for a in &mine {
            if keep >= count {
                plan.stop
                    .push((a.ID.clone(), "alloc not needed due to job update".into()));
                d.stop += 1;
                continue;
            }
            keep += 1;
            used_idx.insert(a.index());
            if reschedule.contains(&a.ID) && a.ClientStatus == "failed" {
                places.push(Placement {
                    group: g.Name.clone(),
                    index: a.index(),
                    previous: Some(a.ID.clone()),
                });
                d.place += 1;
            } else if a.JobVersion == job.Version {
                d.ignore += 1;
            } else if destructive(a.Job.group(&g.Name), g) {
                places.push(Placement {
                    group: g.Name.clone(),
                    index: a.index(),
                    previous: Some(a.ID.clone()),
                });
                d.destructive += 1;
            } else {
                plan.in_place.push(a.ID.clone());
                d.in_place += 1;
            }
        }
        let mut next = 0u64;
        while keep < count {
            while used_idx.contains(&next) {
                next += 1;
            }
            used_idx.insert(next);
            places.push(Placement {
                group: g.Name.clone(),
                index: next,
                previous: None,
            });
            d.place += 1;
            keep += 1;
        }
        if !places.is_empty() {
            // A replaced allocation frees its own static ports.
            let mut busy = busy_ports.clone();
            for p in places.iter().filter_map(|p| p.previous.as_ref()) {
                if let Some(a) = mine.iter().find(|a| &a.ID == p) {
                    for port in &a.Ports {
                        busy.remove(&port.Value);
                    }
                }
            }
            match feasible(job, g, node, &busy) {
                Ok(()) => {
                    for p in &places {
                        if let Some(prev) = &p.previous {
                            if !reschedule.contains(prev) {
                                plan.stop.push((
                                    prev.clone(),
                                    "alloc is being updated due to job update".into(),
                                ));
                            }
                        }
                    }
                    plan.place.extend(places);
                }
                Err(mut metric) => {
                    // Nothing is placed, and the allocations to be replaced keep running.
                    metric["CoalescedFailures"] = json!(places.len() as i64 - 1);
                    plan.failed.insert(g.Name.clone(), metric);
                    plan.queued.insert(g.Name.clone(), places.len() as i64);
                }
            }
        }
        plan.desired.insert(g.Name.clone(), d);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostVolume;
    use crate::job::job_from;

    pub fn node() -> Node {
        let mut attributes = BTreeMap::new();
        attributes.insert("nomad.service_discovery".into(), "true".into());
        attributes.insert("kernel.name".into(), "linux".into());
        Node {
            id: "node-1".into(),
            name: "droplet".into(),
            datacenter: "dc1".into(),
            region: "global".into(),
            node_class: String::new(),
            node_pool: "default".into(),
            docker_healthy: true,
            attributes,
            meta: BTreeMap::new(),
            host_volumes: vec![HostVolume {
                name: "pds".into(),
                path: "/srv/nomad/pds".into(),
                read_only: false,
            }],
        }
    }

    fn job(v: serde_json::Value) -> Job {
        job_from(v)
    }

    fn pds(extra: impl FnOnce(&mut serde_json::Value)) -> Job {
        let mut v = json!({
            "ID": "pds", "Datacenters": ["dc1"],
            "TaskGroups": [{"Name": "pds",
                "Networks": [{"DynamicPorts": [{"Label": "http", "To": 3000}]}],
                "Services": [{"Name": "pds", "Provider": "nomad", "PortLabel": "http"}],
                "Volumes": {"pds": {"Type": "host", "Source": "pds"}},
                "Tasks": [{"Name": "pds", "Driver": "docker", "Config": {"image": "x"},
                           "VolumeMounts": [{"Volume": "pds", "Destination": "/pds"}]}]}]
        });
        extra(&mut v);
        job(v)
    }

    #[test]
    fn places_a_new_job() {
        let p = plan(
            &pds(|_| {}),
            &[],
            &node(),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert!(p.failed.is_empty(), "{:?}", p.failed);
        assert_eq!(p.place.len(), 1);
        assert_eq!(p.desired["pds"].place, 1);
    }

    #[test]
    fn missing_host_volume_is_constraint_filtered() {
        let j = pds(|v| v["TaskGroups"][0]["Volumes"]["pds"]["Source"] = json!("data"));
        let p = plan(&j, &[], &node(), &BTreeSet::new(), &BTreeSet::new());
        assert!(p.place.is_empty());
        assert_eq!(
            p.failed["pds"]["ConstraintFiltered"],
            json!({"missing compatible host volumes": 1})
        );
        assert_eq!(p.failed["pds"]["NodesEvaluated"], 1);
        assert_eq!(p.queued["pds"], 1);
    }

    #[test]
    fn consul_services_cannot_be_placed() {
        let j = pds(|v| v["TaskGroups"][0]["Services"][0]["Provider"] = json!(""));
        let p = plan(&j, &[], &node(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(
            p.failed["pds"]["ConstraintFiltered"],
            json!({"${attr.consul.version} semver >= 1.8.0": 1})
        );
    }

    #[test]
    fn wrong_datacenter_and_driver() {
        let j = pds(|v| v["Datacenters"] = json!(["ams3"]));
        let p = plan(&j, &[], &node(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(p.failed["pds"]["NodesEvaluated"], 0);
        assert_eq!(p.failed["pds"]["NodesAvailable"], json!({"ams3": 0}));

        let j = pds(|v| v["TaskGroups"][0]["Tasks"][0]["Driver"] = json!("exec"));
        let p = plan(&j, &[], &node(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(
            p.failed["pds"]["ConstraintFiltered"],
            json!({"missing drivers": 1})
        );
    }

    #[test]
    fn identical_jobs_are_ignored_and_changed_ones_replaced() {
        let j = pds(|_| {});
        let a = Alloc {
            ID: "a1".into(),
            Name: "pds.pds[0]".into(),
            TaskGroup: "pds".into(),
            DesiredStatus: "run".into(),
            ClientStatus: "running".into(),
            JobVersion: 0,
            Job: j.clone(),
            ..Default::default()
        };
        let p = plan(&j, &[&a], &node(), &BTreeSet::new(), &BTreeSet::new());
        assert!(!p.changes_anything());
        assert_eq!(p.desired["pds"].ignore, 1);

        let mut j2 = pds(|v| v["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = json!("y"));
        j2.Version = 1;
        let p = plan(&j2, &[&a], &node(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(p.desired["pds"].destructive, 1);
        assert_eq!(p.place[0].previous.as_deref(), Some("a1"));
        assert_eq!(p.stop[0].0, "a1");

        let mut j3 = pds(|v| v["Priority"] = json!(70));
        j3.Version = 1;
        let p = plan(&j3, &[&a], &node(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(p.in_place, vec!["a1"]);

        let mut stopped = j.clone();
        stopped.Stop = true;
        let p = plan(&stopped, &[&a], &node(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(p.stop.len(), 1);
    }

    #[test]
    fn static_port_collisions_exhaust_the_node() {
        let j = pds(|v| {
            v["TaskGroups"][0]["Networks"] =
                json!([{"ReservedPorts": [{"Label": "http", "Value": 8080}]}])
        });
        let busy: BTreeSet<i64> = [8080].into();
        let p = plan(&j, &[], &node(), &busy, &BTreeSet::new());
        assert_eq!(
            p.failed["pds"]["DimensionExhausted"],
            json!({"network: reserved port collision http=8080": 1})
        );
    }

    #[test]
    fn versions() {
        assert!(version_matches("1.10.5", ">= 1.8.0"));
        assert!(!version_matches("1.7.0", ">= 1.8.0"));
        assert!(version_matches("1.8.0", ">= 1.8.0, < 2"));
    }
}
