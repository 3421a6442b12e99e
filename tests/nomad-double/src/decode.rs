//! Request-body decoding with the semantics of Go's `encoding/json` decoding into Nomad's `api`
//! structs, which is what bites a client:
//!
//! - keys match field names case-insensitively (exact match preferred);
//! - unknown keys are dropped silently by Nomad (the double logs each at warn level, with its path,
//!   so a test can see why a field "did nothing");
//! - a wrong JSON type is a 400 with Go's message, e.g. `json: cannot unmarshal string into Go
//!   struct field ServiceCheck.Job.TaskGroups.Services.Checks.Interval of type time.Duration`;
//! - `time.Duration` must be an integer number of nanoseconds.
//!
//! The output is the same JSON with canonical field names and unknown keys removed.

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    Int,
    Uint,
    Bool,
    Dur,
    /// Anything (driver config, opaque blocks the double does not model).
    Any,
    Obj(&'static str),
    Arr(&'static Ty),
    Map(&'static Ty),
}

impl Ty {
    fn go_name(&self) -> String {
        match self {
            Ty::Str => "string".into(),
            Ty::Int => "int".into(),
            Ty::Uint => "uint64".into(),
            Ty::Bool => "bool".into(),
            Ty::Dur => "time.Duration".into(),
            Ty::Any => "interface {}".into(),
            Ty::Obj(n) => format!("api.{n}"),
            Ty::Arr(t) => format!("[]{}", t.go_name()),
            Ty::Map(t) => format!("map[string]{}", t.go_name()),
        }
    }
}

use Ty::*;

const STRS: Ty = Arr(&Str);
const STR_MAP: Ty = Map(&Str);

/// Field tables of the `api` structs (names exactly as in Nomad's Go source).
fn fields(name: &str) -> &'static [(&'static str, Ty)] {
    match name {
        "JobRegisterRequest" => &[
            ("Job", Obj("Job")),
            ("Submission", Any),
            ("EnforceIndex", Bool),
            ("JobModifyIndex", Uint),
            ("PolicyOverride", Bool),
            ("PreserveCounts", Bool),
            ("EvalPriority", Int),
            ("Region", Str),
            ("Namespace", Str),
            ("SecretID", Str),
            ("IdempotencyToken", Str),
        ],
        "JobPlanRequest" => &[
            ("Job", Obj("Job")),
            ("Diff", Bool),
            ("PolicyOverride", Bool),
            ("Region", Str),
            ("Namespace", Str),
            ("SecretID", Str),
        ],
        "Job" => &[
            ("Region", Str),
            ("Namespace", Str),
            ("ID", Str),
            ("Name", Str),
            ("Type", Str),
            ("Priority", Int),
            ("AllAtOnce", Bool),
            ("Datacenters", STRS),
            ("NodePool", Str),
            ("Constraints", Arr(&Obj("Constraint"))),
            ("Affinities", Arr(&Obj("Affinity"))),
            ("TaskGroups", Arr(&Obj("TaskGroup"))),
            ("Update", Obj("UpdateStrategy")),
            ("Multiregion", Any),
            ("Spreads", Arr(&Obj("Spread"))),
            ("Periodic", Any),
            ("ParameterizedJob", Any),
            ("Reschedule", Obj("ReschedulePolicy")),
            ("Migrate", Obj("MigrateStrategy")),
            ("Meta", STR_MAP),
            ("UI", Any),
            ("Stop", Bool),
            ("ParentID", Str),
            ("Dispatched", Bool),
            ("DispatchIdempotencyToken", Str),
            ("Payload", Str),
            ("ConsulNamespace", Str),
            ("VaultNamespace", Str),
            ("NomadTokenID", Str),
            ("Status", Str),
            ("StatusDescription", Str),
            ("Stable", Bool),
            ("Version", Uint),
            ("SubmitTime", Int),
            ("CreateIndex", Uint),
            ("ModifyIndex", Uint),
            ("JobModifyIndex", Uint),
            ("VersionTag", Any),
            ("ConsulToken", Str),
            ("VaultToken", Str),
        ],
        "Constraint" => &[("LTarget", Str), ("RTarget", Str), ("Operand", Str)],
        "Affinity" => &[
            ("LTarget", Str),
            ("RTarget", Str),
            ("Operand", Str),
            ("Weight", Int),
        ],
        "Spread" => &[
            ("Attribute", Str),
            ("Weight", Int),
            ("SpreadTarget", Arr(&Obj("SpreadTarget"))),
        ],
        "SpreadTarget" => &[("Value", Str), ("Percent", Int)],
        "TaskGroup" => &[
            ("Name", Str),
            ("Count", Int),
            ("Constraints", Arr(&Obj("Constraint"))),
            ("Affinities", Arr(&Obj("Affinity"))),
            ("Tasks", Arr(&Obj("Task"))),
            ("Spreads", Arr(&Obj("Spread"))),
            ("Volumes", Map(&Obj("VolumeRequest"))),
            ("RestartPolicy", Obj("RestartPolicy")),
            ("Disconnect", Obj("DisconnectStrategy")),
            ("ReschedulePolicy", Obj("ReschedulePolicy")),
            ("EphemeralDisk", Obj("EphemeralDisk")),
            ("Update", Obj("UpdateStrategy")),
            ("Migrate", Obj("MigrateStrategy")),
            ("Networks", Arr(&Obj("NetworkResource"))),
            ("Meta", STR_MAP),
            ("Services", Arr(&Obj("Service"))),
            ("ShutdownDelay", Dur),
            ("StopAfterClientDisconnect", Dur),
            ("MaxClientDisconnect", Dur),
            ("Scaling", Any),
            ("Consul", Any),
            ("PreventRescheduleOnLost", Bool),
        ],
        "DisconnectStrategy" => &[
            ("LostAfter", Dur),
            ("StopOnClientAfter", Dur),
            ("Replace", Bool),
            ("Reconcile", Str),
        ],
        "EphemeralDisk" => &[("Sticky", Bool), ("Migrate", Bool), ("SizeMB", Int)],
        "MigrateStrategy" => &[
            ("MaxParallel", Int),
            ("HealthCheck", Str),
            ("MinHealthyTime", Dur),
            ("HealthyDeadline", Dur),
        ],
        "ReschedulePolicy" => &[
            ("Attempts", Int),
            ("Interval", Dur),
            ("Delay", Dur),
            ("DelayFunction", Str),
            ("MaxDelay", Dur),
            ("Unlimited", Bool),
        ],
        "RestartPolicy" => &[
            ("Interval", Dur),
            ("Attempts", Int),
            ("Delay", Dur),
            ("Mode", Str),
            ("RenderTemplates", Bool),
        ],
        "UpdateStrategy" => &[
            ("Stagger", Dur),
            ("MaxParallel", Int),
            ("HealthCheck", Str),
            ("MinHealthyTime", Dur),
            ("HealthyDeadline", Dur),
            ("ProgressDeadline", Dur),
            ("Canary", Int),
            ("AutoRevert", Bool),
            ("AutoPromote", Bool),
        ],
        "NetworkResource" => &[
            ("Mode", Str),
            ("Device", Str),
            ("CIDR", Str),
            ("IP", Str),
            ("DNS", Obj("DNSConfig")),
            ("ReservedPorts", Arr(&Obj("Port"))),
            ("DynamicPorts", Arr(&Obj("Port"))),
            ("Hostname", Str),
            ("MBits", Int),
            ("CNI", Any),
        ],
        "DNSConfig" => &[("Servers", STRS), ("Searches", STRS), ("Options", STRS)],
        "Port" => &[
            ("Label", Str),
            ("Value", Int),
            ("To", Int),
            ("HostNetwork", Str),
            ("IgnoreCollision", Bool),
        ],
        "Service" => &[
            ("Name", Str),
            ("Tags", STRS),
            ("CanaryTags", STRS),
            ("EnableTagOverride", Bool),
            ("PortLabel", Str),
            ("AddressMode", Str),
            ("Address", Str),
            ("Checks", Arr(&Obj("ServiceCheck"))),
            ("CheckRestart", Obj("CheckRestart")),
            ("Connect", Any),
            ("Meta", STR_MAP),
            ("CanaryMeta", STR_MAP),
            ("TaggedAddresses", STR_MAP),
            ("TaskName", Str),
            ("OnUpdate", Str),
            ("Identity", Any),
            ("Weights", Any),
            ("Provider", Str),
            ("Cluster", Str),
            ("Kind", Str),
        ],
        "ServiceCheck" => &[
            ("Name", Str),
            ("Type", Str),
            ("Command", Str),
            ("Args", STRS),
            ("Path", Str),
            ("Protocol", Str),
            ("PortLabel", Str),
            ("Expose", Bool),
            ("AddressMode", Str),
            ("Advertise", Str),
            ("Interval", Dur),
            ("Timeout", Dur),
            ("InitialStatus", Str),
            ("Notes", Str),
            ("TLSServerName", Str),
            ("TLSSkipVerify", Bool),
            ("Header", Map(&STRS)),
            ("Method", Str),
            ("CheckRestart", Obj("CheckRestart")),
            ("GRPCService", Str),
            ("GRPCUseTLS", Bool),
            ("TaskName", Str),
            ("SuccessBeforePassing", Int),
            ("FailuresBeforeCritical", Int),
            ("FailuresBeforeWarning", Int),
            ("Body", Str),
            ("OnUpdate", Str),
        ],
        "CheckRestart" => &[("Limit", Int), ("Grace", Dur), ("IgnoreWarnings", Bool)],
        "VolumeRequest" => &[
            ("Name", Str),
            ("Type", Str),
            ("Source", Str),
            ("ReadOnly", Bool),
            ("Sticky", Bool),
            ("AccessMode", Str),
            ("AttachmentMode", Str),
            ("MountOptions", Any),
            ("PerAlloc", Bool),
        ],
        "Task" => &[
            ("Name", Str),
            ("Driver", Str),
            ("User", Str),
            ("Lifecycle", Obj("TaskLifecycle")),
            ("Config", Any),
            ("Constraints", Arr(&Obj("Constraint"))),
            ("Affinities", Arr(&Obj("Affinity"))),
            ("Env", STR_MAP),
            ("Services", Arr(&Obj("Service"))),
            ("Resources", Obj("Resources")),
            ("RestartPolicy", Obj("RestartPolicy")),
            ("Meta", STR_MAP),
            ("KillTimeout", Dur),
            ("LogConfig", Obj("LogConfig")),
            ("Artifacts", Arr(&Any)),
            ("Vault", Any),
            ("Consul", Any),
            ("Templates", Arr(&Any)),
            ("DispatchPayload", Any),
            ("VolumeMounts", Arr(&Obj("VolumeMount"))),
            ("CSIPluginConfig", Any),
            ("Leader", Bool),
            ("ShutdownDelay", Dur),
            ("KillSignal", Str),
            ("Kind", Str),
            ("ScalingPolicies", Arr(&Any)),
            ("Identity", Any),
            ("Identities", Arr(&Any)),
            ("Actions", Arr(&Any)),
            ("Schedule", Any),
        ],
        "TaskLifecycle" => &[("Hook", Str), ("Sidecar", Bool)],
        "LogConfig" => &[
            ("MaxFiles", Int),
            ("MaxFileSizeMB", Int),
            ("Disabled", Bool),
            ("Enabled", Bool),
        ],
        "Resources" => &[
            ("CPU", Int),
            ("Cores", Int),
            ("MemoryMB", Int),
            ("MemoryMaxMB", Int),
            ("DiskMB", Int),
            ("Networks", Arr(&Obj("NetworkResource"))),
            ("Devices", Arr(&Any)),
            ("NUMA", Any),
            ("SecretsMB", Int),
            ("IOPS", Int),
        ],
        "VolumeMount" => &[
            ("Volume", Str),
            ("Destination", Str),
            ("ReadOnly", Bool),
            ("PropagationMode", Str),
            ("SELinuxLabel", Str),
        ],
        _ => &[],
    }
}

/// A decoding error: Go's `UnmarshalTypeError` text.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError(pub String);

struct Ctx<'a> {
    /// Field names from the root, as Go reports them (`Job.TaskGroups.Services`).
    path: Vec<&'static str>,
    /// Innermost struct type name.
    structs: Vec<&'static str>,
    /// Where dropped keys are reported (JSON-ish path for the log).
    dropped: &'a mut Vec<String>,
    loc: Vec<String>,
}

/// Decodes `v` as the `api` struct `root` (e.g. `JobRegisterRequest`). Returns the canonical
/// value and the dropped (unknown) keys, each with its location.
pub fn decode(root: &'static str, v: &Value) -> Result<(Value, Vec<String>), DecodeError> {
    let mut dropped = Vec::new();
    let mut ctx = Ctx {
        path: vec![],
        structs: vec![],
        dropped: &mut dropped,
        loc: vec![],
    };
    let out = decode_ty(&Obj(root), v, &mut ctx)?;
    Ok((out, dropped))
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

fn type_error(ctx: &Ctx, value: String, ty: &Ty) -> DecodeError {
    if ctx.path.is_empty() {
        return DecodeError(format!(
            "json: cannot unmarshal {value} into Go value of type {}",
            ty.go_name()
        ));
    }
    DecodeError(format!(
        "json: cannot unmarshal {value} into Go struct field {}.{} of type {}",
        ctx.structs.last().copied().unwrap_or(""),
        ctx.path.join("."),
        ty.go_name()
    ))
}

fn decode_ty(ty: &Ty, v: &Value, ctx: &mut Ctx) -> Result<Value, DecodeError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    match ty {
        Any => Ok(v.clone()),
        Str => match v {
            Value::String(_) => Ok(v.clone()),
            _ => Err(type_error(ctx, kind_of(v), ty)),
        },
        Bool => match v {
            Value::Bool(_) => Ok(v.clone()),
            _ => Err(type_error(ctx, kind_of(v), ty)),
        },
        Int | Dur | Uint => match v {
            Value::Number(n) => {
                let ok = match ty {
                    Uint => n.is_u64(),
                    _ => n.is_i64(),
                };
                if ok {
                    Ok(v.clone())
                } else {
                    Err(type_error(ctx, format!("number {n}"), ty))
                }
            }
            _ => Err(type_error(ctx, kind_of(v), ty)),
        },
        Arr(inner) => match v {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    ctx.loc.push(format!("[{i}]"));
                    out.push(decode_ty(inner, item, ctx)?);
                    ctx.loc.pop();
                }
                Ok(Value::Array(out))
            }
            _ => Err(type_error(ctx, kind_of(v), ty)),
        },
        Map(inner) => match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, item) in m {
                    ctx.loc.push(format!("[{k:?}]"));
                    out.insert(k.clone(), decode_ty(inner, item, ctx)?);
                    ctx.loc.pop();
                }
                Ok(Value::Object(out))
            }
            _ => Err(type_error(ctx, kind_of(v), ty)),
        },
        Obj(name) => match v {
            Value::Object(m) => decode_struct(name, m, ctx),
            _ => Err(type_error(ctx, kind_of(v), ty)),
        },
    }
}

fn decode_struct(
    name: &'static str,
    m: &Map<String, Value>,
    ctx: &mut Ctx,
) -> Result<Value, DecodeError> {
    let table = fields(name);
    let mut out = Map::new();
    ctx.structs.push(name);
    for (k, v) in m {
        let field = table
            .iter()
            .find(|(f, _)| *f == k)
            .or_else(|| table.iter().find(|(f, _)| f.eq_ignore_ascii_case(k)));
        let loc = if ctx.loc.is_empty() {
            String::new()
        } else {
            format!("{}.", ctx.loc.join(""))
        };
        match field {
            None => ctx.dropped.push(format!("{loc}{k}")),
            Some((fname, fty)) => {
                ctx.path.push(fname);
                ctx.loc.push(if ctx.loc.is_empty() {
                    fname.to_string()
                } else {
                    format!(".{fname}")
                });
                let r = decode_ty(fty, v, ctx);
                ctx.loc.pop();
                ctx.path.pop();
                out.insert(fname.to_string(), r?);
            }
        }
    }
    ctx.structs.pop();
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_case_insensitively_and_unknown_keys_are_dropped() {
        let (v, dropped) = decode(
            "JobRegisterRequest",
            &json!({"job": {"id": "pds", "TaskGroups": [{"name": "g", "Volume": {}, "Tasks": [{"Name": "t", "Enviroment": {}}]}]}}),
        )
        .unwrap();
        assert_eq!(v["Job"]["ID"], "pds");
        assert_eq!(v["Job"]["TaskGroups"][0]["Name"], "g");
        assert!(v["Job"]["TaskGroups"][0].get("Volume").is_none());
        let mut dropped = dropped;
        dropped.sort();
        assert_eq!(
            dropped,
            vec![
                "Job.TaskGroups[0].Tasks[0].Enviroment",
                "Job.TaskGroups[0].Volume"
            ]
        );
    }

    #[test]
    fn durations_must_be_integer_nanoseconds() {
        let body = |interval: Value| json!({"Job": {"ID": "j", "TaskGroups": [{"Services": [{"Checks": [{"Interval": interval}]}]}]}});
        decode("JobRegisterRequest", &body(json!(10_000_000_000u64))).unwrap();
        let e = decode("JobRegisterRequest", &body(json!("10s"))).unwrap_err();
        assert_eq!(
            e.0,
            "json: cannot unmarshal string into Go struct field ServiceCheck.Job.TaskGroups.Services.Checks.Interval of type time.Duration"
        );
        let e = decode("JobRegisterRequest", &body(json!(1e10))).unwrap_err();
        assert!(
            e.0.starts_with("json: cannot unmarshal number 10000000000"),
            "{}",
            e.0
        );
    }

    #[test]
    fn wrong_types_are_go_errors() {
        let e = decode("JobRegisterRequest", &json!({"Job": {"ID": 5}})).unwrap_err();
        assert_eq!(
            e.0,
            "json: cannot unmarshal number into Go struct field Job.Job.ID of type string"
        );
        let e = decode("JobRegisterRequest", &json!({"Job": {"TaskGroups": {}}})).unwrap_err();
        assert!(e.0.ends_with("of type []api.TaskGroup"), "{}", e.0);
        let e = decode("JobRegisterRequest", &json!([])).unwrap_err();
        assert_eq!(
            e.0,
            "json: cannot unmarshal array into Go value of type api.JobRegisterRequest"
        );
    }

    #[test]
    fn volumes_are_a_map_keyed_by_name() {
        let (v, dropped) = decode(
            "JobRegisterRequest",
            &json!({"Job": {"ID": "j", "TaskGroups": [{"Volumes": {"pds": {"type": "host", "source": "pds", "Readonly": true}}}]}}),
        )
        .unwrap();
        assert!(dropped.is_empty());
        assert_eq!(v["Job"]["TaskGroups"][0]["Volumes"]["pds"]["Type"], "host");
        assert_eq!(
            v["Job"]["TaskGroups"][0]["Volumes"]["pds"]["ReadOnly"],
            true
        );
        let e = decode(
            "JobRegisterRequest",
            &json!({"Job": {"TaskGroups": [{"Volumes": [{"Name": "pds"}]}]}}),
        )
        .unwrap_err();
        assert!(
            e.0.contains("TaskGroup.Job.TaskGroups.Volumes of type map[string]api.VolumeRequest"),
            "{}",
            e.0
        );
    }
}
