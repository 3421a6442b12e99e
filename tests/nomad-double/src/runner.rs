//! Allocation and task runners: start containers (or adopt running ones after an agent
//! restart), wait for them, apply the restart policy, kill them on stop, and keep their output
//! for the logs endpoint. Every step is recorded as a Nomad task event.

use crate::agent::{Agent, Runner};
use crate::docker::{self, Mount};
use crate::job::{go_dur, Task, TaskGroup, SEC};
use crate::state::{now_ns, rfc3339, Alloc, TaskEvent};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub fn alloc_dir(agent: &Agent, alloc_id: &str) -> PathBuf {
    agent.cfg().data_dir.join("alloc").join(alloc_id)
}

pub fn log_path(agent: &Agent, alloc_id: &str, task: &str, kind: &str) -> PathBuf {
    alloc_dir(agent, alloc_id)
        .join("alloc")
        .join("logs")
        .join(format!("{task}.{kind}.0"))
}

/// Starts the runner of an allocation. `waits`: runners (of replaced allocations) that must
/// finish first, so a replacement never races its predecessor for ports or volumes.
pub fn spawn(
    agent: Arc<Agent>,
    alloc_id: String,
    adopt: bool,
    waits: Vec<watch::Receiver<bool>>,
) -> Runner {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    tokio::spawn(async move {
        for mut w in waits {
            let _ = w.wait_for(|d| *d).await;
        }
        run_alloc(agent.clone(), alloc_id.clone(), stop_rx, adopt).await;
        agent.runners.lock().expect("runners").remove(&alloc_id);
        agent.checks.lock().expect("checks").remove(&alloc_id);
        let _ = done_tx.send(true);
    });
    Runner {
        stop: stop_tx,
        done: done_rx,
    }
}

/// Stops the containers of an allocation that has no runner (e.g. after an agent restart).
pub fn spawn_cleanup(agent: Arc<Agent>, alloc_id: String) {
    tokio::spawn(async move {
        let Some(alloc) = agent.read(|st| st.allocs.get(&alloc_id).cloned()) else {
            return;
        };
        for (task, state) in &alloc.TaskStates {
            if state.State == "dead" {
                continue;
            }
            let name = docker::container_name(task, &alloc.ID);
            let kill_timeout = alloc
                .Job
                .group(&alloc.TaskGroup)
                .and_then(|g| g.Tasks.iter().find(|t| &t.Name == task))
                .map(|t| t.kill_timeout())
                .unwrap_or(5 * SEC);
            let existed = docker::inspect(&name).await.is_some();
            if existed {
                let _ = docker::stop(&name, kill_timeout / SEC).await;
                archive_logs(&agent, &alloc.ID, task, &name).await;
                docker::remove(&name).await;
            }
            agent.update_alloc(&alloc.ID, |a| {
                if let Some(s) = a.TaskStates.get_mut(task) {
                    if existed {
                        s.Events
                            .push(TaskEvent::new("Killed", "Task successfully killed"));
                    }
                    s.State = "dead".into();
                    s.FinishedAt = rfc3339(now_ns());
                }
            });
        }
    });
}

async fn run_alloc(
    agent: Arc<Agent>,
    alloc_id: String,
    mut stop: watch::Receiver<bool>,
    adopt: bool,
) {
    let Some(alloc) = agent.read(|st| st.allocs.get(&alloc_id).cloned()) else {
        return;
    };
    let Some(group) = alloc.Job.group(&alloc.TaskGroup).cloned() else {
        return;
    };
    let (kill_tx, kill_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for t in &group.Tasks {
        tasks.spawn(run_task(
            agent.clone(),
            alloc_id.clone(),
            t.Name.clone(),
            kill_rx.clone(),
            adopt,
        ));
    }
    let checks = tokio::spawn(crate::checks::run_checks(
        agent.clone(),
        alloc_id.clone(),
        kill_rx.clone(),
    ));
    let health = tokio::spawn(crate::checks::watch_health(
        agent.clone(),
        alloc_id.clone(),
        kill_rx.clone(),
    ));
    loop {
        tokio::select! {
            stopped = signalled(&mut stop) => {
                if stopped { let _ = kill_tx.send(true); }
                while tasks.join_next().await.is_some() {}
                break;
            }
            r = tasks.join_next() => match r {
                None => break,
                Some(Ok(true)) => {
                    // A failed task takes its siblings down, as in Nomad.
                    let _ = kill_tx.send(true);
                }
                Some(_) => {}
            }
        }
    }
    checks.abort();
    health.abort();
}

/// Waits until the flag is set; false if its sender is gone. (Holds no borrow across awaits.)
pub async fn signalled(rx: &mut watch::Receiver<bool>) -> bool {
    rx.wait_for(|v| *v).await.is_ok()
}

fn push_event(agent: &Arc<Agent>, alloc_id: &str, task: &str, ev: TaskEvent) {
    agent.update_alloc(alloc_id, |a| {
        if let Some(s) = a.TaskStates.get_mut(task) {
            s.Events.push(ev);
        }
    });
}

fn set_state(
    agent: &Arc<Agent>,
    alloc_id: &str,
    task: &str,
    state: &str,
    failed: bool,
    ev: Option<TaskEvent>,
) {
    agent.update_alloc(alloc_id, |a| {
        if let Some(s) = a.TaskStates.get_mut(task) {
            if let Some(ev) = ev {
                s.Events.push(ev);
            }
            let now = rfc3339(now_ns());
            match state {
                "running" => s.StartedAt = now,
                "dead" => s.FinishedAt = now,
                _ => {}
            }
            s.State = state.into();
            s.Failed |= failed;
        }
    });
}

/// Runs one task until it is stopped or fails for good. Returns whether it failed.
async fn run_task(
    agent: Arc<Agent>,
    alloc_id: String,
    task_name: String,
    mut kill: watch::Receiver<bool>,
    adopt: bool,
) -> bool {
    let Some(alloc) = agent.read(|st| st.allocs.get(&alloc_id).cloned()) else {
        return false;
    };
    let group = alloc
        .Job
        .group(&alloc.TaskGroup)
        .cloned()
        .unwrap_or_default();
    let Some(task) = group.Tasks.iter().find(|t| t.Name == task_name).cloned() else {
        return false;
    };
    let name = docker::container_name(&task.Name, &alloc.ID);
    let fresh = alloc
        .TaskStates
        .get(&task.Name)
        .is_none_or(|s| s.Events.is_empty());
    if fresh {
        push_event(
            &agent,
            &alloc_id,
            &task.Name,
            TaskEvent::new("Received", "Task received by client"),
        );
        push_event(
            &agent,
            &alloc_id,
            &task.Name,
            TaskEvent::new("Task Setup", "Building Task Directory")
                .detail("message", "Building Task Directory"),
        );
    }
    let policy = task.restart_policy();
    let attempts = policy.Attempts.unwrap_or(2);
    let interval = policy.Interval.unwrap_or(1800 * SEC);
    let delay = policy.Delay.unwrap_or(15 * SEC);
    let mode = policy.Mode.clone().unwrap_or_else(|| "fail".into());
    let mut window = Instant::now();
    let mut count: i64 = 0;
    let mut adopting = adopt;
    loop {
        if *kill.borrow() {
            set_state(&agent, &alloc_id, &task.Name, "dead", false, None);
            return false;
        }
        let mut running = false;
        let mut exited: Option<i64> = None;
        if adopting {
            adopting = false;
            match docker::inspect(&name).await {
                Some(s) if s.running => {
                    log::info!("client: adopted running container {name}");
                    running = true;
                    set_state(&agent, &alloc_id, &task.Name, "running", false, None);
                }
                Some(s) => exited = Some(s.exit_code),
                None => {}
            }
        }
        if !running && exited.is_none() {
            match start(&agent, &alloc, &group, &task, &name).await {
                Ok(()) => {
                    running = true;
                    set_state(
                        &agent,
                        &alloc_id,
                        &task.Name,
                        "running",
                        false,
                        Some(TaskEvent::new("Started", "Task started by client")),
                    );
                }
                Err((msg, recoverable)) => {
                    let mut ev = TaskEvent::new("Driver Failure", msg.clone());
                    ev.DriverError = msg.clone();
                    ev.Details.insert("driver_error".into(), msg.clone());
                    push_event(&agent, &alloc_id, &task.Name, ev);
                    log::error!(
                        "client: task {} of allocation {alloc_id} failed to start: {msg}",
                        task.Name
                    );
                    if !recoverable {
                        let mut ev = TaskEvent::new("Not Restarting", "Error was unrecoverable");
                        ev.FailsTask = true;
                        ev.RestartReason = "Error was unrecoverable".into();
                        set_state(&agent, &alloc_id, &task.Name, "dead", true, Some(ev));
                        return true;
                    }
                }
            }
        }
        if running {
            let code = tokio::select! {
                r = docker::wait(&name) => r.unwrap_or_else(|e| { log::warn!("client: docker wait {name}: {e}"); -1 }),
                _ = signalled(&mut kill) => {
                    kill_task(&agent, &alloc_id, &group, &task, &name).await;
                    return false;
                }
            };
            exited = Some(code);
        }
        if let Some(code) = exited {
            let mut ev = TaskEvent::new("Terminated", format!("Exit Code: {code}"))
                .detail("exit_code", code.to_string())
                .detail("signal", "0")
                .detail("oom_killed", "false");
            ev.ExitCode = code;
            push_event(&agent, &alloc_id, &task.Name, ev);
            archive_logs(&agent, &alloc_id, &task.Name, &name).await;
            docker::remove(&name).await;
        }
        // The restart policy (a service task is restarted whatever its exit code).
        if window.elapsed() > Duration::from_nanos(interval.max(0) as u64) {
            window = Instant::now();
            count = 0;
        }
        count += 1;
        let wait = if count > attempts {
            if mode != "delay" {
                let reason = format!(
                    "Exceeded allowed attempts {attempts} in interval {} and mode is \"fail\"",
                    go_dur(interval)
                );
                let mut ev = TaskEvent::new("Not Restarting", reason.clone());
                ev.FailsTask = true;
                ev.RestartReason = reason;
                set_state(&agent, &alloc_id, &task.Name, "dead", true, Some(ev));
                return true;
            }
            let left =
                Duration::from_nanos(interval.max(0) as u64).saturating_sub(window.elapsed());
            count = 0;
            window = Instant::now() + left;
            let reason = format!(
                "Exceeded allowed attempts {attempts} in interval {} and mode is \"delay\", restarting in {}",
                go_dur(interval),
                go_dur(left.as_nanos() as i64)
            );
            (left, reason)
        } else {
            // Nomad adds up to 25% jitter to the delay.
            let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as i64 * (delay / 4) / 1000;
            let d = delay + jitter;
            (
                Duration::from_nanos(d.max(0) as u64),
                "Restart within policy".to_string(),
            )
        };
        let mut ev = TaskEvent::new(
            "Restarting",
            format!("Task restarting in {}", go_dur(wait.0.as_nanos() as i64)),
        );
        ev.RestartReason = wait.1.clone();
        ev.StartDelay = wait.0.as_nanos() as i64;
        ev.Details.insert("restart_reason".into(), wait.1);
        agent.update_alloc(&alloc_id, |a| {
            if let Some(s) = a.TaskStates.get_mut(&task.Name) {
                s.Events.push(ev);
                s.State = "pending".into();
                s.Restarts += 1;
                s.LastRestart = rfc3339(now_ns());
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(wait.0) => {}
            _ = signalled(&mut kill) => {
                set_state(&agent, &alloc_id, &task.Name, "dead", false, None);
                return false;
            }
        }
    }
}

async fn kill_task(agent: &Arc<Agent>, alloc_id: &str, group: &TaskGroup, task: &Task, name: &str) {
    if let Some(d) = group.ShutdownDelay.filter(|d| *d > 0) {
        tokio::time::sleep(Duration::from_nanos(d as u64)).await;
    }
    let kt = task.kill_timeout();
    let mut ev = TaskEvent::new(
        "Killing",
        format!(
            "Sent interrupt. Waiting {} before force killing",
            go_dur(kt)
        ),
    );
    ev.KillTimeout = kt;
    push_event(agent, alloc_id, &task.Name, ev);
    if let Err(e) = docker::stop(name, (kt + SEC - 1) / SEC).await {
        log::warn!("client: docker stop {name}: {e}");
    }
    archive_logs(agent, alloc_id, &task.Name, name).await;
    docker::remove(name).await;
    set_state(
        agent,
        alloc_id,
        &task.Name,
        "dead",
        false,
        Some(TaskEvent::new("Killed", "Task successfully killed")),
    );
}

/// Appends the container's output to the task's log files (kept across restarts).
async fn archive_logs(agent: &Agent, alloc_id: &str, task: &str, name: &str) {
    use std::io::Write;
    let Some((out, err)) = docker::logs(name).await else {
        return;
    };
    for (kind, data) in [("stdout", out), ("stderr", err)] {
        let p = log_path(agent, alloc_id, task, kind);
        let _ = std::fs::create_dir_all(p.parent().expect("parent"));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
        {
            let _ = f.write_all(&data);
        }
    }
}

/// The `NOMAD_*` variables of a task and its interpolated `env`.
pub fn task_env(
    agent: &Agent,
    alloc: &Alloc,
    group: &TaskGroup,
    task: &Task,
) -> BTreeMap<String, String> {
    let cfg = agent.cfg();
    let mut v = BTreeMap::new();
    let mut put = |k: String, val: String| {
        v.insert(k, val);
    };
    put("NOMAD_ALLOC_ID".into(), alloc.ID.clone());
    put(
        "NOMAD_SHORT_ALLOC_ID".into(),
        alloc.ID.chars().take(8).collect(),
    );
    put("NOMAD_ALLOC_NAME".into(), alloc.Name.clone());
    put("NOMAD_ALLOC_INDEX".into(), alloc.index().to_string());
    put("NOMAD_GROUP_NAME".into(), group.Name.clone());
    put("NOMAD_TASK_NAME".into(), task.Name.clone());
    put("NOMAD_JOB_ID".into(), alloc.Job.ID.clone());
    put("NOMAD_JOB_NAME".into(), alloc.Job.Name.clone());
    put("NOMAD_NAMESPACE".into(), alloc.Namespace.clone());
    put("NOMAD_REGION".into(), cfg.region.clone());
    put("NOMAD_DC".into(), cfg.datacenter.clone());
    put("NOMAD_CPU_LIMIT".into(), task.cpu().to_string());
    put("NOMAD_MEMORY_LIMIT".into(), task.memory_mb().to_string());
    put("NOMAD_ALLOC_DIR".into(), "/alloc".into());
    put("NOMAD_TASK_DIR".into(), "/local".into());
    put("NOMAD_SECRETS_DIR".into(), "/secrets".into());
    for p in &alloc.Ports {
        let inner = if p.To > 0 { p.To } else { p.Value };
        put(format!("NOMAD_IP_{}", p.Label), p.HostIP.clone());
        put(format!("NOMAD_PORT_{}", p.Label), inner.to_string());
        put(format!("NOMAD_HOST_PORT_{}", p.Label), p.Value.to_string());
        put(format!("NOMAD_HOST_IP_{}", p.Label), p.HostIP.clone());
        put(
            format!("NOMAD_ADDR_{}", p.Label),
            format!("{}:{}", p.HostIP, p.Value),
        );
        put(
            format!("NOMAD_HOST_ADDR_{}", p.Label),
            format!("{}:{}", p.HostIP, p.Value),
        );
        put(format!("NOMAD_ALLOC_PORT_{}", p.Label), inner.to_string());
    }
    for (k, val) in alloc
        .Job
        .Meta
        .iter()
        .flatten()
        .chain(group.Meta.iter().flatten())
        .chain(task.Meta.iter().flatten())
    {
        put(format!("NOMAD_META_{k}"), val.clone());
    }
    let mut vars = v.clone();
    for (k, val) in agent.attributes() {
        vars.insert(format!("attr.{k}"), val);
    }
    vars.insert("node.unique.id".into(), agent.node_id.clone());
    vars.insert("node.unique.name".into(), cfg.node_name.clone());
    vars.insert("node.datacenter".into(), cfg.datacenter.clone());
    vars.insert("node.region".into(), cfg.region.clone());
    for (k, val) in &cfg.client_meta {
        vars.insert(format!("meta.{k}"), val.clone());
    }
    for (k, val) in task.Env.iter().flatten() {
        v.insert(k.clone(), docker::interpolate(val, &vars));
    }
    v
}

async fn start(
    agent: &Arc<Agent>,
    alloc: &Alloc,
    group: &TaskGroup,
    task: &Task,
    name: &str,
) -> Result<(), (String, bool)> {
    let unrecoverable = |m: String| (m, false);
    if task.Driver != "docker" {
        return Err(unrecoverable(format!(
            "nomad-double: task driver {:?} is not implemented by the test double",
            task.Driver
        )));
    }
    let cfg = agent.cfg();
    let mut dc = docker::parse_config(&task.config()).map_err(unrecoverable)?;
    let env = task_env(agent, alloc, group, task);
    dc.image = docker::interpolate(&dc.image, &env);
    dc.args = dc
        .args
        .iter()
        .map(|a| docker::interpolate(a, &env))
        .collect();
    dc.command = dc.command.as_ref().map(|c| docker::interpolate(c, &env));
    // Nomad interpolates every string of the task config, the entrypoint included.
    dc.entrypoint = dc
        .entrypoint
        .iter()
        .map(|a| docker::interpolate(a, &env))
        .collect();
    if dc.privileged && !cfg.docker_allow_privileged {
        return Err(unrecoverable(
            "Docker privileged mode is disabled on this Nomad agent".into(),
        ));
    }
    if !dc.volumes.is_empty() && !cfg.docker_volumes_enabled {
        return Err(unrecoverable(format!(
            "volumes are not enabled; cannot mount host paths: {:?}",
            dc.volumes
        )));
    }

    let root = alloc_dir(agent, &alloc.ID);
    let shared = root.join("alloc");
    let local = root.join(&task.Name).join("local");
    let secrets = root.join(&task.Name).join("secrets");
    for d in [
        shared.join("logs"),
        shared.join("data"),
        shared.join("tmp"),
        local.clone(),
        secrets.clone(),
    ] {
        std::fs::create_dir_all(&d)
            .map_err(|e| unrecoverable(format!("failed to build task directory: {e}")))?;
    }
    let mut mounts = vec![
        Mount {
            source: shared.display().to_string(),
            target: "/alloc".into(),
            read_only: false,
        },
        Mount {
            source: local.display().to_string(),
            target: "/local".into(),
            read_only: false,
        },
        Mount {
            source: secrets.display().to_string(),
            target: "/secrets".into(),
            read_only: false,
        },
    ];
    for vm in task.VolumeMounts.iter().flatten() {
        let req = group.Volumes.as_ref().and_then(|v| v.get(&vm.Volume));
        let Some(req) = req else {
            return Err(unrecoverable(format!(
                "volume mount references undefined volume {}",
                vm.Volume
            )));
        };
        let Some(hv) = cfg.host_volume(&req.Source) else {
            return Err(unrecoverable(format!(
                "host volume {:?} not found on the client",
                req.Source
            )));
        };
        mounts.push(Mount {
            source: hv.path.clone(),
            target: vm.Destination.clone(),
            read_only: vm.ReadOnly || req.ReadOnly || hv.read_only,
        });
    }

    if dc.force_pull || !docker::image_present(&dc.image).await {
        push_event(
            agent,
            &alloc.ID,
            &task.Name,
            TaskEvent::new("Driver", "Downloading image").detail("image", dc.image.clone()),
        );
        docker::pull(&dc.image).await.map_err(unrecoverable)?;
    }

    let env_file = secrets.join(".nomad-double.env");
    docker::write_env_file(&env_file, &env).map_err(unrecoverable)?;
    let labels: BTreeMap<String, String> = [
        ("com.hashicorp.nomad.alloc_id", alloc.ID.clone()),
        ("com.hashicorp.nomad.job_id", alloc.Job.ID.clone()),
        ("com.hashicorp.nomad.job_name", alloc.Job.Name.clone()),
        ("com.hashicorp.nomad.namespace", alloc.Namespace.clone()),
        ("com.hashicorp.nomad.node_id", agent.node_id.clone()),
        ("com.hashicorp.nomad.node_name", cfg.node_name.clone()),
        ("com.hashicorp.nomad.task_group_name", group.Name.clone()),
        ("com.hashicorp.nomad.task_name", task.Name.clone()),
        ("pdsup.nomad-double", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let spec = docker::RunSpec {
        name: name.to_string(),
        config: dc,
        labels,
        env_file,
        ports: alloc.Ports.clone(),
        mounts,
        memory_mb: task.memory_mb(),
        cpu_shares: task.cpu(),
        user: task.User.clone(),
    };
    let args = docker::run_args(&spec).map_err(unrecoverable)?;
    // A container left over from an earlier run of this allocation is replaced.
    if docker::inspect(name).await.is_some() {
        archive_logs(agent, &alloc.ID, &task.Name, name).await;
        docker::remove(name).await;
    }
    let out = docker::docker(&args).await;
    if !out.ok {
        docker::remove(name).await;
        let reason = out
            .stderr
            .trim_start_matches("docker: ")
            .trim_start_matches("Error response from daemon: ")
            .to_string();
        return Err((format!("failed to create container: {reason}"), true));
    }
    Ok(())
}
