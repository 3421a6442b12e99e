//! Plan diffs (`POST /v1/job/:id/plan` with `Diff: true`) in Nomad's `JobDiff` shape. The
//! double compares canonical job specs; a job submitted twice identically has Type `None`.
//! Primitive fields become `FieldDiff`s, string maps `Name[key]` fields, nested objects
//! `ObjectDiff`s with flattened field names (`Config.image`, `ports[0]`).

use crate::job::Job;
use crate::plan::DesiredUpdates;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        Value::Null => {}
        other => {
            out.insert(prefix.to_string(), scalar(other).unwrap_or_default());
        }
    }
}

fn change_type(old: Option<&String>, new: Option<&String>) -> Option<&'static str> {
    let blank = |s: Option<&String>| s.is_none_or(|s| s.is_empty());
    match (old, new) {
        (a, b) if a == b => None,
        (a, _) if blank(a) => Some("Added"),
        (_, b) if blank(b) => Some("Deleted"),
        _ => Some("Edited"),
    }
}

fn field_diffs(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<Value> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (o, n) = (old.get(k), new.get(k));
            change_type(o, n).map(|t| {
                json!({"Type": t, "Name": k, "Old": o.cloned().unwrap_or_default(),
                       "New": n.cloned().unwrap_or_default(), "Annotations": null})
            })
        })
        .collect()
}

fn is_str_map(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| m.values().all(|x| scalar(x).is_some()))
}

/// Diffs two objects, skipping `skip` keys. Returns (fields, objects).
fn object_diff(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    skip: &[&str],
) -> (Vec<Value>, Vec<Value>) {
    let keys: BTreeSet<&String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| !skip.contains(&k.as_str()))
        .collect();
    let (mut fo, mut fnew) = (BTreeMap::new(), BTreeMap::new());
    let mut objects = Vec::new();
    for k in keys {
        let (o, n) = (
            old.get(k).unwrap_or(&Value::Null),
            new.get(k).unwrap_or(&Value::Null),
        );
        if let (Some(so), Some(sn)) = (scalar(o), scalar(n)) {
            fo.insert(k.clone(), so);
            fnew.insert(k.clone(), sn);
        } else if (o.is_null() || is_str_map(o)) && (n.is_null() || is_str_map(n)) {
            for (mk, mv) in o.as_object().into_iter().flatten() {
                fo.insert(format!("{k}[{mk}]"), scalar(mv).unwrap_or_default());
            }
            for (mk, mv) in n.as_object().into_iter().flatten() {
                fnew.insert(format!("{k}[{mk}]"), scalar(mv).unwrap_or_default());
            }
        } else {
            let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
            flatten("", o, &mut a);
            flatten("", n, &mut b);
            let fields = field_diffs(&a, &b);
            if !fields.is_empty() {
                let t = if a.is_empty() {
                    "Added"
                } else if b.is_empty() {
                    "Deleted"
                } else {
                    "Edited"
                };
                objects.push(json!({"Type": t, "Name": k, "Fields": fields, "Objects": null}));
            }
        }
    }
    (field_diffs(&fo, &fnew), objects)
}

fn overall(fields: &[Value], objects: &[Value], children: &[Value]) -> &'static str {
    if fields.is_empty() && objects.is_empty() && children.iter().all(|c| c["Type"] == "None") {
        "None"
    } else {
        "Edited"
    }
}

fn by_name(v: &Value, list: &str) -> BTreeMap<String, Map<String, Value>> {
    v.get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_object())
        .map(|m| {
            (
                m.get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                m.clone(),
            )
        })
        .collect()
}

fn updates_json(u: Option<&DesiredUpdates>) -> Value {
    let Some(u) = u else { return Value::Null };
    let mut m = Map::new();
    for (k, v) in [
        ("ignore", u.ignore),
        ("create", u.place),
        ("destroy", u.stop),
        ("in-place update", u.in_place),
        ("create/destroy update", u.destructive),
    ] {
        if v > 0 {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

/// Nomad's `JobDiff` between the registered job (if any) and the submitted one.
pub fn job_diff(old: Option<&Job>, new: &Job, updates: &BTreeMap<String, DesiredUpdates>) -> Value {
    let empty = Value::Object(Map::new());
    let o = old
        .map(|j| serde_json::to_value(j.spec()).unwrap_or_default())
        .unwrap_or(empty.clone());
    let n = serde_json::to_value(new.spec()).unwrap_or_default();
    let (fields, objects) = object_diff(
        o.as_object().expect("obj"),
        n.as_object().expect("obj"),
        &["TaskGroups"],
    );
    let (og, ng) = (by_name(&o, "TaskGroups"), by_name(&n, "TaskGroups"));
    let names: BTreeSet<&String> = og.keys().chain(ng.keys()).collect();
    let mut groups = Vec::new();
    for name in names {
        let empty_map = Map::new();
        let (a, b) = (
            og.get(name).unwrap_or(&empty_map),
            ng.get(name).unwrap_or(&empty_map),
        );
        let (gf, go) = object_diff(a, b, &["Tasks", "Name"]);
        let (ot, nt) = (
            by_name(&Value::Object(a.clone()), "Tasks"),
            by_name(&Value::Object(b.clone()), "Tasks"),
        );
        let tnames: BTreeSet<&String> = ot.keys().chain(nt.keys()).collect();
        let mut tasks = Vec::new();
        for t in tnames {
            let (ta, tb) = (
                ot.get(t).unwrap_or(&empty_map),
                nt.get(t).unwrap_or(&empty_map),
            );
            let (tf, to) = object_diff(ta, tb, &["Name"]);
            let (ty, ann) = if !ot.contains_key(t) {
                ("Added", json!(["forces create"]))
            } else if !nt.contains_key(t) {
                ("Deleted", json!(["forces destroy"]))
            } else if tf.is_empty() && to.is_empty() {
                ("None", Value::Null)
            } else {
                ("Edited", json!(["forces create/destroy update"]))
            };
            tasks.push(
                json!({"Type": ty, "Name": t, "Fields": tf, "Objects": to, "Annotations": ann}),
            );
        }
        let ty = if !og.contains_key(name) {
            "Added"
        } else if !ng.contains_key(name) {
            "Deleted"
        } else {
            overall(&gf, &go, &tasks)
        };
        groups.push(json!({"Type": ty, "Name": name, "Fields": gf, "Objects": go, "Tasks": tasks, "Updates": updates_json(updates.get(name))}));
    }
    let ty = if old.is_none() {
        "Added"
    } else {
        overall(&fields, &objects, &groups)
    };
    json!({"Type": ty, "ID": new.ID, "Fields": fields, "Objects": objects, "TaskGroups": groups})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::job_from;

    fn pds(image: &str) -> Job {
        job_from(json!({
            "ID": "pds", "Meta": {"owner": "me"},
            "TaskGroups": [{"Name": "pds", "Tasks": [{"Name": "pds", "Driver": "docker",
                "Config": {"image": image, "ports": ["http"]}, "Env": {"A": "1"}}]}]
        }))
    }

    #[test]
    fn identical_jobs_diff_to_none() {
        let mut stored = pds("a");
        stored.Version = 3;
        stored.JobModifyIndex = 40;
        stored.Status = "running".into();
        let d = job_diff(Some(&stored), &pds("a"), &BTreeMap::new());
        assert_eq!(d["Type"], "None", "{d:#}");
        assert_eq!(d["TaskGroups"][0]["Type"], "None");
    }

    #[test]
    fn changes_are_named() {
        let d = job_diff(Some(&pds("a")), &pds("b"), &BTreeMap::new());
        assert_eq!(d["Type"], "Edited");
        let task = &d["TaskGroups"][0]["Tasks"][0];
        assert_eq!(task["Type"], "Edited");
        assert_eq!(task["Annotations"], json!(["forces create/destroy update"]));
        assert_eq!(task["Objects"][0]["Name"], "Config");
        assert_eq!(
            task["Objects"][0]["Fields"][0],
            json!({"Type": "Edited", "Name": "image", "Old": "a", "New": "b", "Annotations": null})
        );

        let mut env = pds("a");
        env.TaskGroups[0].Tasks[0]
            .Env
            .as_mut()
            .unwrap()
            .insert("B".into(), "2".into());
        let d = job_diff(Some(&pds("a")), &env, &BTreeMap::new());
        assert_eq!(
            d["TaskGroups"][0]["Tasks"][0]["Fields"][0]["Name"],
            "Env[B]"
        );
        assert_eq!(d["TaskGroups"][0]["Tasks"][0]["Fields"][0]["Type"], "Added");
    }

    #[test]
    fn new_jobs_are_added() {
        let u: BTreeMap<String, DesiredUpdates> = [(
            "pds".to_string(),
            DesiredUpdates {
                place: 1,
                ..Default::default()
            },
        )]
        .into();
        let d = job_diff(None, &pds("a"), &u);
        assert_eq!(d["Type"], "Added");
        assert_eq!(d["TaskGroups"][0]["Type"], "Added");
        assert_eq!(d["TaskGroups"][0]["Updates"], json!({"create": 1}));
    }
}
