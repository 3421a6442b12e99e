//! Nomad-provider service checks (http, tcp) polled from the agent, service registrations
//! derived from running allocations, and the deployment health of an allocation.

use crate::agent::Agent;
use crate::job::{Service, ServiceCheck, SEC};
use crate::state::{now_ns, Alloc};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A stable ID for a check of an allocation (Nomad uses a hash too).
pub fn check_id(alloc_id: &str, service: &str, check: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in alloc_id.bytes().chain(service.bytes()).chain(check.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The host address and port a service (or one of its checks) points at.
pub fn address(alloc: &Alloc, port_label: &str, node_ip: &str) -> (String, i64) {
    if port_label.is_empty() {
        return (node_ip.to_string(), 0);
    }
    if let Ok(n) = port_label.parse::<i64>() {
        return (node_ip.to_string(), n);
    }
    match alloc.Ports.iter().find(|p| p.Label == port_label) {
        Some(p) => (p.HostIP.clone(), p.Value),
        None => (node_ip.to_string(), 0),
    }
}

/// Nomad-provider services of an allocation, with the task they belong to.
fn nomad_services(alloc: &Alloc) -> Vec<(String, Service)> {
    let Some(g) = alloc.Job.group(&alloc.TaskGroup) else {
        return Vec::new();
    };
    g.all_services()
        .into_iter()
        .filter(|(_, s)| s.Provider == "nomad")
        .map(|(t, s)| (t.map(|t| t.Name.clone()).unwrap_or_default(), s.clone()))
        .collect()
}

/// `ServiceRegistration`s: an allocation's nomad services while it runs.
pub fn registrations(alloc: &Alloc, node_ip: &str, datacenter: &str) -> Vec<Value> {
    if alloc.DesiredStatus != "run" || alloc.ClientStatus != "running" {
        return Vec::new();
    }
    nomad_services(alloc)
        .into_iter()
        .map(|(task, s)| {
            let (addr, port) = if s.Address.is_empty() {
                address(alloc, &s.PortLabel, node_ip)
            } else {
                (s.Address.clone(), address(alloc, &s.PortLabel, node_ip).1)
            };
            let owner = if task.is_empty() {
                format!("group-{}", alloc.TaskGroup)
            } else {
                task
            };
            json!({
                "ID": format!("_nomad-task-{}-{}-{}-{}", alloc.ID, owner, s.Name, s.PortLabel),
                "ServiceName": s.Name, "Namespace": alloc.Namespace, "NodeID": alloc.NodeID,
                "Datacenter": datacenter, "JobID": alloc.JobID, "AllocID": alloc.ID,
                "Tags": s.Tags.clone().unwrap_or_default(), "Address": addr, "Port": port,
                "CreateIndex": alloc.ModifyIndex, "ModifyIndex": alloc.ModifyIndex,
            })
        })
        .collect()
}

fn tasks_running(agent: &Agent, alloc_id: &str) -> Option<bool> {
    agent.read(|st| {
        st.allocs.get(alloc_id).map(|a| {
            !a.TaskStates.is_empty() && a.TaskStates.values().all(|s| s.State == "running")
        })
    })
}

/// Polls every check of the allocation's nomad services at its interval while tasks run.
pub async fn run_checks(agent: Arc<Agent>, alloc_id: String, kill: watch::Receiver<bool>) {
    let Some(alloc) = agent.read(|st| st.allocs.get(&alloc_id).cloned()) else {
        return;
    };
    let mut set = tokio::task::JoinSet::new();
    for (task, s) in nomad_services(&alloc) {
        for c in s.Checks.clone().unwrap_or_default() {
            let (agent, alloc, task, s, mut kill) = (
                agent.clone(),
                alloc.clone(),
                task.clone(),
                s.clone(),
                kill.clone(),
            );
            set.spawn(async move {
                let id = check_id(&alloc.ID, &s.Name, &c.Name);
                let label = if c.PortLabel.is_empty() {
                    s.PortLabel.clone()
                } else {
                    c.PortLabel.clone()
                };
                let (ip, port) = address(&alloc, &label, &agent.node_ip);
                record(
                    &agent,
                    &alloc,
                    &id,
                    &task,
                    &s,
                    &c,
                    "pending",
                    0,
                    String::new(),
                );
                // As Nomad's checks_hook observer: the first check at half the
                // interval, then one every interval.
                let interval = Duration::from_nanos(c.Interval.max(SEC) as u64);
                let mut wait = interval / 2;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = crate::runner::signalled(&mut kill) => return,
                    }
                    wait = interval;
                    if tasks_running(&agent, &alloc.ID) == Some(true) {
                        let (status, code, output) = probe(&c, &ip, port).await;
                        record(&agent, &alloc, &id, &task, &s, &c, status, code, output);
                    }
                }
            });
        }
    }
    while set.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments)]
fn record(
    agent: &Agent,
    alloc: &Alloc,
    id: &str,
    task: &str,
    s: &Service,
    c: &ServiceCheck,
    status: &str,
    code: i64,
    output: String,
) {
    let mode = if c.OnUpdate == "ignore" {
        "readiness"
    } else {
        "healthiness"
    };
    let v = json!({
        "ID": id, "Check": c.Name, "Group": format!("{}.{}[{}]", alloc.JobID, alloc.TaskGroup, alloc.index()),
        "JobID": alloc.JobID, "Mode": mode, "Output": output, "Service": s.Name, "Status": status,
        "StatusCode": code, "Task": task, "Timestamp": now_ns() / 1_000_000_000,
    });
    agent
        .checks
        .lock()
        .expect("checks")
        .entry(alloc.ID.clone())
        .or_default()
        .insert(id.to_string(), v);
}

/// One probe: (status, HTTP status code, output).
pub async fn probe(c: &ServiceCheck, ip: &str, port: i64) -> (&'static str, i64, String) {
    let timeout = Duration::from_nanos(c.Timeout.max(SEC) as u64);
    let addr = format!("{ip}:{port}");
    let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await;
    let mut stream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return ("failure", 0, format!("dial tcp {addr}: {e}")),
        Err(_) => return ("failure", 0, format!("dial tcp {addr}: i/o timeout")),
    };
    if c.Type == "tcp" {
        return ("success", 0, "nomad: tcp ok".into());
    }
    let method = if c.Method.is_empty() {
        "GET"
    } else {
        c.Method.as_str()
    };
    let mut req = format!("{method} {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Go-http-client/1.1\r\nAccept: */*\r\nConnection: close\r\n", c.Path);
    for (k, vs) in c.Header.iter().flatten() {
        for v in vs {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str("\r\n");
    let exchange = async {
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while buf.len() < 64 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return (
                "failure",
                0,
                format!("{method} http://{addr}{}: {e}", c.Path),
            )
        }
        Err(_) => {
            return (
                "failure",
                0,
                format!(
                    "{method} http://{addr}{}: context deadline exceeded",
                    c.Path
                ),
            )
        }
    };
    let text = String::from_utf8_lossy(&buf);
    let code: i64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let output = format!(
        "nomad: http ok ({code}): {}",
        body.chars().take(512).collect::<String>()
    );
    match code {
        200..=299 => ("success", code, output),
        _ => (
            "failure",
            code,
            format!(
                "nomad: http status {code}: {}",
                body.chars().take(512).collect::<String>()
            ),
        ),
    }
}

/// Decides the allocation's deployment health like Nomad's health watcher: healthy once every
/// task runs and (for `checks`) every check passes for `MinHealthyTime`, unhealthy when a task
/// fails or `HealthyDeadline` passes.
pub async fn watch_health(agent: Arc<Agent>, alloc_id: String, kill: watch::Receiver<bool>) {
    let Some(alloc) = agent.read(|st| st.allocs.get(&alloc_id).cloned()) else {
        return;
    };
    if alloc.DeploymentID.is_empty()
        || alloc
            .DeploymentStatus
            .as_ref()
            .and_then(|d| d.Healthy)
            .is_some()
    {
        return;
    }
    let Some(g) = alloc.Job.group(&alloc.TaskGroup) else {
        return;
    };
    let u = g.update();
    let hc = u.HealthCheck.unwrap_or_else(|| "checks".into());
    if hc == "manual" {
        return;
    }
    let min = Duration::from_nanos(u.MinHealthyTime.unwrap_or(10 * SEC).max(0) as u64);
    let deadline = Duration::from_nanos(u.HealthyDeadline.unwrap_or(300 * SEC).max(0) as u64);
    let n_checks: usize = nomad_services(&alloc)
        .iter()
        .map(|(_, s)| {
            s.Checks
                .iter()
                .flatten()
                .filter(|c| c.OnUpdate != "ignore")
                .count()
        })
        .sum();
    let start = Instant::now();
    let mut since: Option<Instant> = None;
    loop {
        if *kill.borrow() {
            return;
        }
        let Some(a) = agent.read(|st| st.allocs.get(&alloc_id).cloned()) else {
            return;
        };
        if a.ClientStatus == "failed" || a.TaskStates.values().any(|s| s.Failed) {
            agent.set_alloc_health(&alloc_id, false);
            return;
        }
        if start.elapsed() > deadline {
            log::info!("client: allocation {alloc_id} not healthy before the healthy deadline");
            agent.set_alloc_health(&alloc_id, false);
            return;
        }
        let running =
            !a.TaskStates.is_empty() && a.TaskStates.values().all(|s| s.State == "running");
        let checks_ok = hc == "task_states" || {
            let checks = agent.checks.lock().expect("checks");
            let results = checks.get(&alloc_id);
            let passing = results
                .map(|r| {
                    r.values()
                        .filter(|c| c["Mode"] == "healthiness" && c["Status"] == "success")
                        .count()
                })
                .unwrap_or(0);
            passing >= n_checks
        };
        if running && checks_ok {
            let t = *since.get_or_insert_with(Instant::now);
            if t.elapsed() >= min {
                agent.set_alloc_health(&alloc_id, true);
                return;
            }
        } else {
            since = None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AllocPort;

    #[tokio::test]
    async fn http_probe_reads_the_status() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port() as i64;
        tokio::spawn(async move {
            for code in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 2\r\n\r\nhi").as_bytes())
                    .await;
            }
        });
        let c = ServiceCheck {
            Type: "http".into(),
            Path: "/health".into(),
            Timeout: 2 * SEC,
            Interval: SEC,
            ..Default::default()
        };
        assert_eq!(probe(&c, "127.0.0.1", port).await.0, "success");
        let (status, code, _) = probe(&c, "127.0.0.1", port).await;
        assert_eq!((status, code), ("failure", 503));
        assert_eq!(probe(&c, "127.0.0.1", 1).await.0, "failure");
    }

    #[test]
    fn service_addresses_come_from_allocated_ports() {
        let a = Alloc {
            Ports: vec![AllocPort {
                Label: "http".into(),
                Value: 25000,
                To: 80,
                HostIP: "127.0.0.1".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            address(&a, "http", "10.0.0.2"),
            ("127.0.0.1".to_string(), 25000)
        );
        assert_eq!(
            address(&a, "8080", "10.0.0.2"),
            ("10.0.0.2".to_string(), 8080)
        );
        assert_eq!(address(&a, "", "10.0.0.2"), ("10.0.0.2".to_string(), 0));
    }
}
