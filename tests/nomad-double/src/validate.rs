//! Server-side job validation (Nomad's `Job.Validate` and friends) on a canonicalized job, with
//! Nomad's messages and its nested multierror formatting. Registration fails with HTTP 500 and
//! this text, as Nomad's RPC errors do. Features the double does not implement are refused here
//! too, each with a message that says so.

use crate::job::{go_dur, Job, Service, TaskGroup, SEC};

/// Go's hashicorp/go-multierror rendering.
pub fn multierror(errs: &[String]) -> String {
    let points: Vec<String> = errs.iter().map(|e| format!("* {e}")).collect();
    format!(
        "{} error{} occurred:\n\t{}\n\n",
        errs.len(),
        if errs.len() == 1 { "" } else { "s" },
        points.join("\n\t")
    )
}

/// Validates the job; `Err` is the response body. `Ok` carries registration warnings.
pub fn validate(job: &Job, memory_oversubscription: bool) -> Result<Vec<String>, String> {
    let mut errs = Vec::new();
    if job.Region.is_empty() {
        errs.push("Missing job region".to_string());
    }
    if job.ID.is_empty() {
        errs.push("Missing job ID".into());
    } else if job.ID.contains(' ') {
        errs.push("Job ID contains a space".into());
    } else if job.ID.contains('\0') {
        errs.push("Job ID contains a null character".into());
    }
    if job.Name.is_empty() {
        errs.push("Missing job name".into());
    }
    if job.Namespace.is_empty() {
        errs.push("Job must be in a namespace".into());
    }
    match job.Type.as_str() {
        "service" => {}
        "batch" | "system" | "sysbatch" => errs.push(format!(
            "nomad-double: job type {:?} is not implemented by the test double (only \"service\")",
            job.Type
        )),
        t => errs.push(format!("Invalid job type: {t:?}")),
    }
    let p = job.priority();
    if !(1..=100).contains(&p) {
        errs.push("Job priority must be between [1, 100]".into());
    }
    if job.Datacenters.iter().any(|d| d.is_empty()) {
        errs.push("Job datacenter must be non-empty string".into());
    }
    if job.TaskGroups.is_empty() {
        errs.push("Missing job task groups".into());
    }
    if job.Periodic.is_some() {
        errs.push("nomad-double: periodic jobs are not implemented by the test double".into());
    }
    if job.ParameterizedJob.is_some() {
        errs.push("nomad-double: parameterized jobs are not implemented by the test double".into());
    }
    for (i, g) in job.TaskGroups.iter().enumerate() {
        if let Some(j) = job.TaskGroups[..i].iter().position(|o| o.Name == g.Name) {
            errs.push(format!(
                "Job task group {} redefines '{}' from group {}",
                i + 1,
                g.Name,
                j + 1
            ));
        }
        let tg_errs = validate_group(g);
        if !tg_errs.is_empty() {
            errs.push(format!(
                "Task group {} validation failed: {}",
                g.Name,
                multierror(&tg_errs)
            ));
        }
    }
    if !errs.is_empty() {
        return Err(multierror(&errs));
    }
    let mut warnings = Vec::new();
    if !memory_oversubscription {
        for g in &job.TaskGroups {
            for t in &g.Tasks {
                if t.Resources
                    .as_ref()
                    .and_then(|r| r.MemoryMaxMB)
                    .unwrap_or(0)
                    > 0
                {
                    warnings.push(format!(
                        "Memory oversubscription is not enabled; Task \"{}.{}\" memory_max value \
                         will be ignored. Update the Scheduler Configuration to allow oversubscription.",
                        g.Name, t.Name
                    ));
                }
            }
        }
    }
    Ok(warnings)
}

fn validate_group(g: &TaskGroup) -> Vec<String> {
    let mut errs = Vec::new();
    if g.Name.is_empty() {
        errs.push("Missing task group name".to_string());
    }
    if g.count() < 0 {
        errs.push("Task group count can't be negative".into());
    }
    if g.Tasks.is_empty() {
        errs.push("Missing tasks for task group".into());
    }
    match &g.RestartPolicy {
        None => errs.push(format!(
            "Task Group {} should have a restart policy",
            g.Name
        )),
        Some(r) => {
            let (mode, attempts) = (r.Mode.clone().unwrap_or_default(), r.Attempts.unwrap_or(0));
            let (interval, delay) = (r.Interval.unwrap_or(0), r.Delay.unwrap_or(0));
            if mode != "delay" && mode != "fail" {
                errs.push(format!("Unsupported restart mode: {mode:?}"));
            }
            if attempts == 0 && mode != "fail" {
                errs.push(format!(
                    "Restart policy {mode:?} with {attempts} attempts is ambiguous"
                ));
            }
            if interval < 5 * SEC {
                errs.push(format!(
                    "Interval can not be less than {} (got {})",
                    go_dur(5 * SEC),
                    go_dur(interval)
                ));
            }
            if attempts * delay > interval {
                errs.push(format!(
                    "Nomad can't restart the TaskGroup {} times in an interval of {} with a delay of {}",
                    attempts,
                    go_dur(interval),
                    go_dur(delay)
                ));
            }
        }
    }
    if let Some(u) = &g.Update {
        let hc = u.HealthCheck.clone().unwrap_or_default();
        let (min, deadline, progress) = (
            u.MinHealthyTime.unwrap_or(0),
            u.HealthyDeadline.unwrap_or(0),
            u.ProgressDeadline.unwrap_or(0),
        );
        if !["checks", "task_states", "manual"].contains(&hc.as_str()) {
            errs.push(format!("Invalid health check given: {hc:?}"));
        }
        if u.MaxParallel.unwrap_or(0) < 0 {
            errs.push(format!(
                "Max parallel can not be less than zero: {} < 0",
                u.MaxParallel.unwrap_or(0)
            ));
        }
        if u.Canary.unwrap_or(0) > 0 {
            errs.push(
                "nomad-double: canary deployments are not implemented by the test double".into(),
            );
        }
        if min < 0 {
            errs.push(format!(
                "Minimum healthy time may not be less than zero: {}",
                go_dur(min)
            ));
        }
        if deadline <= 0 {
            errs.push(format!(
                "Healthy deadline must be greater than zero: {}",
                go_dur(deadline)
            ));
        }
        if progress < 0 {
            errs.push(format!(
                "Progress deadline must be zero or greater: {}",
                go_dur(progress)
            ));
        }
        if min >= deadline {
            errs.push(format!(
                "Minimum healthy time must be less than healthy deadline: {} > {}",
                go_dur(min),
                go_dur(deadline)
            ));
        }
        if progress != 0 && deadline >= progress {
            errs.push(format!(
                "Healthy deadline must be less than progress deadline: {} > {}",
                go_dur(deadline),
                go_dur(progress)
            ));
        }
        if u.Stagger.unwrap_or(0) <= 0 {
            errs.push(format!(
                "Stagger must be greater than zero: {}",
                go_dur(u.Stagger.unwrap_or(0))
            ));
        }
    }

    // Networks and ports.
    let nets = g.Networks.as_deref().unwrap_or(&[]);
    if nets.len() > 1 {
        errs.push("Only one network resource is permitted".into());
    }
    for n in nets {
        if !["", "host"].contains(&n.Mode.as_str()) {
            errs.push(format!(
                "nomad-double: network mode {:?} is not implemented by the test double (only host)",
                n.Mode
            ));
        }
    }
    let mut labels: Vec<String> = Vec::new();
    let mut statics: Vec<(i64, String)> = Vec::new();
    for (p, is_static) in g.ports() {
        if labels.contains(&p.Label) {
            errs.push(format!("Port label {} already in use", p.Label));
        }
        labels.push(p.Label.clone());
        if p.Value < 0 || p.Value > 65535 {
            errs.push(format!(
                "Port {:?} has an invalid port value {}",
                p.Label, p.Value
            ));
        }
        if p.To < -1 {
            errs.push(format!(
                "Port {:?} cannot be mapped to negative value {}",
                p.Label, p.To
            ));
        } else if p.To > 65535 {
            errs.push(format!(
                "Port {:?} cannot be mapped to a port ({}) greater than 65535",
                p.Label, p.To
            ));
        }
        if is_static {
            if let Some((_, other)) = statics.iter().find(|(v, _)| *v == p.Value) {
                errs.push(format!(
                    "Static port {} already reserved by {}",
                    p.Value, other
                ));
            }
            statics.push((p.Value, p.Label.clone()));
        }
    }

    // Volumes (a volume whose Type is not host/csi never got here: the HTTP layer dropped it).
    for (name, v) in g.Volumes.iter().flatten() {
        let mut verrs = Vec::new();
        if v.Type == "csi" {
            verrs.push(
                "nomad-double: CSI volumes are not implemented by the test double".to_string(),
            );
        }
        if v.Source.is_empty() {
            verrs.push("volume has an empty source".into());
        }
        let modes = [
            "",
            "single-node-reader-only",
            "single-node-writer",
            "single-node-single-writer",
            "single-node-multi-writer",
        ];
        if v.Type == "host" && !modes.contains(&v.AccessMode.as_str()) {
            verrs.push(format!(
                "host volumes cannot have an access mode of {:?}",
                v.AccessMode
            ));
        }
        if v.AccessMode == "single-node-reader-only" && !v.ReadOnly {
            verrs.push("volume with single-node-reader-only access mode must be read-only".into());
        }
        if v.extra.get("MountOptions").is_some_and(|m| !m.is_null()) {
            verrs.push("host volumes cannot have mount options".into());
        }
        if !verrs.is_empty() {
            errs.push(format!(
                "Task group volume validation for {name} failed: {}",
                multierror(&verrs)
            ));
        }
    }

    errs.extend(validate_services(g));

    for (i, t) in g.Tasks.iter().enumerate() {
        if let Some(j) = g.Tasks[..i].iter().position(|o| o.Name == t.Name) {
            errs.push(format!(
                "Task {} redefines '{}' from task {}",
                i + 1,
                t.Name,
                j + 1
            ));
        }
        let mut terrs = Vec::new();
        if t.Name.is_empty() {
            terrs.push("Missing task name".to_string());
        }
        if t.Name.contains('/') {
            terrs.push("Task name cannot include slashes".into());
        }
        if t.Driver.is_empty() {
            terrs.push("Missing task driver".into());
        }
        if t.kill_timeout() < 0 {
            terrs.push("KillTimeout must be a positive value".into());
        }
        if let Some(r) = &t.Resources {
            if r.Cores.unwrap_or(0) == 0 && r.CPU.unwrap_or(0) < 1 {
                terrs.push(format!(
                    "minimum CPU value is 1; got {}",
                    r.CPU.unwrap_or(0)
                ));
            }
            if r.MemoryMB.unwrap_or(0) < 10 {
                terrs.push(format!(
                    "minimum MemoryMB value is 10; got {}",
                    r.MemoryMB.unwrap_or(0)
                ));
            }
        }
        for (i, vm) in t.VolumeMounts.iter().flatten().enumerate() {
            if !g
                .Volumes
                .as_ref()
                .is_some_and(|v| v.contains_key(&vm.Volume))
            {
                terrs.push(format!(
                    "Volume Mount ({i}) references undefined volume {}",
                    vm.Volume
                ));
            }
        }
        let not_impl = |what: &str| {
            format!("nomad-double: task {what} are not implemented by the test double")
        };
        if t.Templates.as_ref().is_some_and(|v| !v.is_empty()) {
            terrs.push(not_impl("templates"));
        }
        if t.Artifacts.as_ref().is_some_and(|v| !v.is_empty()) {
            terrs.push(not_impl("artifacts"));
        }
        if t.Vault.as_ref().is_some_and(|v| !v.is_null()) {
            terrs.push(not_impl("vault blocks"));
        }
        if t.Lifecycle.as_ref().is_some_and(|v| !v.is_null()) {
            terrs.push(not_impl("lifecycle hooks"));
        }
        if !terrs.is_empty() {
            errs.push(format!(
                "Task {} validation failed: {}",
                t.Name,
                multierror(&terrs)
            ));
        }
    }
    errs
}

fn valid_service_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn validate_service(s: &Service) -> Vec<String> {
    let mut errs = Vec::new();
    if !valid_service_name(&s.Name) {
        errs.push(format!(
            "Service name must be valid per RFC 1123 and can contain only alphanumeric characters or dashes: {:?}",
            s.Name
        ));
    }
    if !["consul", "nomad"].contains(&s.Provider.as_str()) {
        errs.push(format!(
            "Service provider must be \"consul\", or \"nomad\"; not {:?}",
            s.Provider
        ));
    }
    if !["auto", "host", "driver", "alloc", "alloc_ipv6"].contains(&s.AddressMode.as_str()) {
        errs.push(format!(
            "Service address_mode must be \"auto\", \"host\", \"driver\", or \"alloc\"; not {:?}",
            s.AddressMode
        ));
    }
    if s.Provider == "nomad" && s.Connect.as_ref().is_some_and(|c| !c.is_null()) {
        errs.push("Service with provider nomad cannot include Connect blocks".into());
    }
    for c in s.Checks.iter().flatten() {
        let mut cerr = None;
        let allowed: &[&str] = if s.Provider == "nomad" {
            &["http", "tcp"]
        } else {
            &["http", "tcp", "grpc", "script"]
        };
        if !allowed.contains(&c.Type.as_str()) {
            cerr = Some(if s.Provider == "nomad" {
                format!("invalid check type ({:?}), must be one of \"http\", \"tcp\" for provider nomad", c.Type)
            } else {
                format!(
                    "invalid type ({:?}), must be one of \"http\", \"tcp\", \"grpc\", \"script\"",
                    c.Type
                )
            });
        } else if c.Type == "http" && c.Path.is_empty() {
            cerr = Some("http type must have http path".into());
        } else if c.Type == "http" && (c.Path.contains("://") || !c.Path.starts_with('/')) {
            cerr = Some("http type must have relative http path".into());
        } else if c.Interval < SEC {
            cerr = Some(format!(
                "interval ({}) cannot be lower than {}",
                go_dur(c.Interval),
                go_dur(SEC)
            ));
        } else if c.Timeout < SEC {
            cerr = Some(format!(
                "timeout ({}) is lower than required minimum timeout {}",
                go_dur(c.Timeout),
                go_dur(SEC)
            ));
        }
        if let Some(e) = cerr {
            errs.push(format!("Check {} invalid: {e}", c.Name));
        }
    }
    errs
}

fn validate_services(g: &TaskGroup) -> Vec<String> {
    let mut errs = Vec::new();
    let labels: Vec<String> = g.ports().into_iter().map(|(p, _)| p.Label).collect();
    let services = g.all_services();
    let mut providers: Vec<&str> = services.iter().map(|(_, s)| s.Provider.as_str()).collect();
    providers.dedup();
    if providers.len() > 1 {
        errs.push(
            "Multiple service providers used: task group services must use the same provider"
                .into(),
        );
    }
    let mut missing: Vec<(String, Vec<String>)> = Vec::new();
    for (idx, (_, s)) in services.iter().enumerate() {
        let serrs = validate_service(s);
        if !serrs.is_empty() {
            errs.push(format!(
                "Service[{idx}] {} validation failed: {}",
                s.Name,
                multierror(&serrs)
            ));
        }
        let mut wanted = vec![s.PortLabel.clone()];
        wanted.extend(s.Checks.iter().flatten().map(|c| c.PortLabel.clone()));
        for l in wanted {
            if l.is_empty() || l.parse::<u16>().is_ok() || labels.contains(&l) {
                continue;
            }
            match missing.iter_mut().find(|(m, _)| *m == l) {
                Some((_, names)) => names.push(s.Name.clone()),
                None => missing.push((l, vec![s.Name.clone()])),
            }
        }
    }
    for (l, names) in missing {
        errs.push(format!(
            "Port label {l} referenced by services {} does not exist",
            names.join(", ")
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::job_from;
    use serde_json::json;

    pub fn pds_job() -> serde_json::Value {
        json!({
            "ID": "pds", "Datacenters": ["dc1"], "Type": "service",
            "TaskGroups": [{
                "Name": "pds", "Count": 1,
                "Networks": [{"DynamicPorts": [{"Label": "http", "To": 3000}]}],
                "Services": [{"Name": "pds", "Provider": "nomad", "PortLabel": "http",
                              "Checks": [{"Type": "http", "Path": "/xrpc/_health", "Interval": 10_000_000_000u64, "Timeout": 2_000_000_000u64}]}],
                "Volumes": {"pds": {"Type": "host", "Source": "pds", "ReadOnly": false}},
                "Tasks": [{"Name": "pds", "Driver": "docker",
                           "Config": {"image": "ghcr.io/bluesky-social/pds:0.4", "ports": ["http"]},
                           "VolumeMounts": [{"Volume": "pds", "Destination": "/pds"}],
                           "Env": {"PDS_HOSTNAME": "pds.test"}}]
            }]
        })
    }

    #[test]
    fn the_pds_job_is_valid() {
        validate(&job_from(pds_job()), false).unwrap();
    }

    #[test]
    fn a_mount_of_an_undefined_volume_fails() {
        let mut v = pds_job();
        v["TaskGroups"][0]["Tasks"][0]["VolumeMounts"][0]["Volume"] = json!("data");
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(
            e.starts_with("1 error occurred:\n\t* Task group pds validation failed: "),
            "{e}"
        );
        assert!(
            e.contains("Volume Mount (0) references undefined volume data"),
            "{e}"
        );
    }

    #[test]
    fn check_rules_for_nomad_services() {
        let mut v = pds_job();
        v["TaskGroups"][0]["Services"][0]["Checks"][0]["Interval"] = json!(500_000_000);
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(
            e.contains("interval (500ms) cannot be lower than 1s"),
            "{e}"
        );

        let mut v = pds_job();
        v["TaskGroups"][0]["Services"][0]["Checks"][0]["Type"] = json!("script");
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(e.contains("invalid check type"), "{e}");

        let mut v = pds_job();
        v["TaskGroups"][0]["Services"][0]["Checks"][0]["Path"] = json!("");
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(e.contains("http type must have http path"), "{e}");
    }

    #[test]
    fn unknown_port_labels_and_names() {
        let mut v = pds_job();
        v["TaskGroups"][0]["Services"][0]["PortLabel"] = json!("web");
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(
            e.contains("Port label web referenced by services pds does not exist"),
            "{e}"
        );

        let mut v = pds_job();
        v["TaskGroups"][0]["Services"][0]["Name"] = json!("pds_web");
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(e.contains("Service name must be valid per RFC 1123"), "{e}");
    }

    #[test]
    fn restart_and_update_rules() {
        let mut v = pds_job();
        v["TaskGroups"][0]["Update"] = json!({"MinHealthyTime": 600_000_000_000u64});
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(
            e.contains("Minimum healthy time must be less than healthy deadline: 10m0s > 5m0s"),
            "{e}"
        );

        let mut v = pds_job();
        v["TaskGroups"][0]["RestartPolicy"] =
            json!({"Attempts": 10, "Interval": 60_000_000_000u64});
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(e.contains("Nomad can't restart the TaskGroup 10 times in an interval of 1m0s with a delay of 15s"), "{e}");
    }

    #[test]
    fn memory_max_warns() {
        let mut v = pds_job();
        v["TaskGroups"][0]["Tasks"][0]["Resources"] = json!({"MemoryMB": 512, "MemoryMaxMB": 1024});
        let w = validate(&job_from(v), false).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("Memory oversubscription is not enabled; Task \"pds.pds\""));
    }

    #[test]
    fn not_implemented_features_are_refused_plainly() {
        let mut v = pds_job();
        v["TaskGroups"][0]["Tasks"][0]["Templates"] = json!([{"EmbeddedTmpl": "x"}]);
        let e = validate(&job_from(v), false).unwrap_err();
        assert!(
            e.contains("nomad-double: task templates are not implemented"),
            "{e}"
        );
        let mut v = pds_job();
        v["Type"] = json!("batch");
        assert!(validate(&job_from(v), false).is_err());
    }
}
