//! The `docker` task driver, through the `docker` CLI of the host: config checking like the
//! driver's HCL spec (unknown keys and a missing `image` fail the task), `docker run` argument
//! building (a pure function, unit-tested), and the CLI calls the task runner needs.
//!
//! The environment goes through an `--env-file` written 0600 in the task's secrets dir, so no
//! secret appears in a process's arguments.

use crate::state::AllocPort;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

/// Keys of the docker driver's task config (`drivers/docker/config.go`).
const KNOWN_KEYS: &[&str] = &[
    "image",
    "args",
    "command",
    "entrypoint",
    "ports",
    "port_map",
    "volumes",
    "volume_driver",
    "mount",
    "mounts",
    "network_mode",
    "network_aliases",
    "ipv4_address",
    "ipv6_address",
    "advertise_ipv6_address",
    "privileged",
    "auth",
    "auth_soft_fail",
    "force_pull",
    "labels",
    "logging",
    "work_dir",
    "hostname",
    "cap_add",
    "cap_drop",
    "extra_hosts",
    "dns_servers",
    "dns_search_domains",
    "dns_options",
    "readonly_rootfs",
    "init",
    "tty",
    "interactive",
    "ulimit",
    "sysctl",
    "shm_size",
    "pids_limit",
    "memory_hard_limit",
    "cpu_hard_limit",
    "cpu_cfs_period",
    "healthchecks",
    "security_opt",
    "storage_opt",
    "userns_mode",
    "uts_mode",
    "pid_mode",
    "ipc_mode",
    "mac_address",
    "devices",
    "runtime",
    "isolation",
    "image_pull_timeout",
    "load",
    "cgroupns",
    "group_add",
    "oom_score_adj",
    "cpuset_cpus",
    "container_exists_attempts",
];

/// Keys the double acts on; the others are accepted and ignored with a warning.
const IMPLEMENTED: &[&str] = &[
    "image",
    "args",
    "command",
    "entrypoint",
    "ports",
    "network_mode",
    "force_pull",
    "labels",
    "work_dir",
    "hostname",
    "cap_add",
    "cap_drop",
    "extra_hosts",
    "dns_servers",
    "privileged",
    "init",
    "readonly_rootfs",
    "tty",
    "interactive",
    "volumes",
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DockerConfig {
    pub image: String,
    pub args: Vec<String>,
    pub command: Option<String>,
    pub entrypoint: Vec<String>,
    pub ports: Vec<String>,
    pub network_mode: String,
    pub force_pull: bool,
    pub labels: BTreeMap<String, String>,
    pub work_dir: String,
    pub hostname: String,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub dns_servers: Vec<String>,
    pub privileged: bool,
    pub init: bool,
    pub readonly_rootfs: bool,
    pub tty: bool,
    pub interactive: bool,
    pub volumes: Vec<String>,
}

fn type_err(key: &str, want: &str) -> String {
    format!(
        "failed to decode driver config: Incorrect attribute value type: Inappropriate value for attribute {key:?}: {want} required."
    )
}

/// Decodes and checks the task `Config` the way the docker driver's hclspec does.
pub fn parse_config(config: &Map<String, Value>) -> Result<DockerConfig, String> {
    for k in config.keys() {
        if !KNOWN_KEYS.contains(&k.as_str()) {
            return Err(format!(
                "failed to decode driver config: Unsupported argument: An argument named {k:?} is not expected here."
            ));
        }
        if !IMPLEMENTED.contains(&k.as_str()) {
            log::warn!("driver.docker: config key {k:?} is accepted but not implemented by the test double; ignored");
        }
    }
    let s = |k: &str| -> Result<Option<String>, String> {
        match config.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(type_err(k, "string")),
        }
    };
    let b = |k: &str| -> Result<bool, String> {
        match config.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(_) => Err(type_err(k, "bool")),
        }
    };
    let list = |k: &str| -> Result<Vec<String>, String> {
        match config.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(type_err(k, "list of string")),
                })
                .collect(),
            Some(_) => Err(type_err(k, "list of string")),
        }
    };
    let image = s("image")?.unwrap_or_default();
    if image.is_empty() {
        return Err(
            "failed to decode driver config: Missing required argument: The argument \"image\" is required, but no definition was found."
                .into(),
        );
    }
    let labels = match config.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        // HCL blocks decode to a list of one object.
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            })
            .collect(),
        Some(_) => return Err(type_err("labels", "map of string")),
    };
    Ok(DockerConfig {
        image,
        args: list("args")?,
        command: s("command")?,
        entrypoint: list("entrypoint")?,
        ports: list("ports")?,
        network_mode: s("network_mode")?.unwrap_or_default(),
        force_pull: b("force_pull")?,
        labels,
        work_dir: s("work_dir")?.unwrap_or_default(),
        hostname: s("hostname")?.unwrap_or_default(),
        cap_add: list("cap_add")?,
        cap_drop: list("cap_drop")?,
        extra_hosts: list("extra_hosts")?,
        dns_servers: list("dns_servers")?,
        privileged: b("privileged")?,
        init: b("init")?,
        readonly_rootfs: b("readonly_rootfs")?,
        tty: b("tty")?,
        interactive: b("interactive")?,
        volumes: list("volumes")?,
    })
}

/// A bind mount: host path, container path, read-only.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// Everything `docker run` needs for one task.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub config: DockerConfig,
    pub labels: BTreeMap<String, String>,
    pub env_file: PathBuf,
    /// Port labels of the group network with their allocated values.
    pub ports: Vec<AllocPort>,
    pub mounts: Vec<Mount>,
    pub memory_mb: i64,
    pub cpu_shares: i64,
    pub user: String,
}

pub fn container_name(task: &str, alloc_id: &str) -> String {
    format!("{task}-{alloc_id}")
}

/// `docker run` arguments (without the leading `docker`). `Err` is a task-failing message.
pub fn run_args(spec: &RunSpec) -> Result<Vec<String>, String> {
    let c = &spec.config;
    let mut a: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        spec.name.clone(),
    ];
    for (k, v) in spec.labels.iter().chain(c.labels.iter()) {
        a.push("--label".into());
        a.push(format!("{k}={v}"));
    }
    a.push("--env-file".into());
    a.push(spec.env_file.display().to_string());
    if spec.memory_mb > 0 {
        a.push("--memory".into());
        a.push(format!("{}m", spec.memory_mb));
    }
    if spec.cpu_shares > 0 {
        a.push("--cpu-shares".into());
        a.push(spec.cpu_shares.to_string());
    }
    let host_net = c.network_mode == "host";
    if !c.network_mode.is_empty() {
        a.push("--network".into());
        a.push(c.network_mode.clone());
    }
    for label in &c.ports {
        let Some(p) = spec.ports.iter().find(|p| &p.Label == label) else {
            return Err(format!("Port {label:?} not found, check network block"));
        };
        if host_net {
            continue;
        }
        let to = if p.To > 0 { p.To } else { p.Value };
        for proto in ["tcp", "udp"] {
            a.push("-p".into());
            a.push(format!("{}:{}:{}/{proto}", p.HostIP, p.Value, to));
        }
    }
    for m in &spec.mounts {
        a.push("--mount".into());
        a.push(format!(
            "type=bind,source={},target={}{}",
            m.source,
            m.target,
            if m.read_only { ",readonly" } else { "" }
        ));
    }
    for v in &c.volumes {
        a.push("-v".into());
        a.push(v.clone());
    }
    let pairs: [(&str, &str); 2] = [("--workdir", &c.work_dir), ("--hostname", &c.hostname)];
    for (flag, v) in pairs {
        if !v.is_empty() {
            a.push(flag.into());
            a.push(v.to_string());
        }
    }
    if !spec.user.is_empty() {
        a.push("--user".into());
        a.push(spec.user.clone());
    }
    for (flag, list) in [
        ("--cap-add", &c.cap_add),
        ("--cap-drop", &c.cap_drop),
        ("--add-host", &c.extra_hosts),
        ("--dns", &c.dns_servers),
    ] {
        for v in list {
            a.push(flag.into());
            a.push(v.clone());
        }
    }
    for (flag, on) in [
        ("--privileged", c.privileged),
        ("--init", c.init),
        ("--read-only", c.readonly_rootfs),
        ("--tty", c.tty),
        ("--interactive", c.interactive),
    ] {
        if on {
            a.push(flag.into());
        }
    }
    let mut cmd: Vec<String> = Vec::new();
    if let Some((first, rest)) = c.entrypoint.split_first() {
        a.push("--entrypoint".into());
        a.push(first.clone());
        cmd.extend(rest.iter().cloned());
    }
    if let Some(command) = &c.command {
        cmd.push(command.clone());
    }
    cmd.extend(c.args.iter().cloned());
    a.push(c.image.clone());
    a.extend(cmd);
    Ok(a)
}

/// Writes an env file for `--env-file` (0600). Docker's format has no quoting, so a value with
/// a newline cannot be passed this way: that is reported instead of silently truncated.
pub fn write_env_file(
    path: &std::path::Path,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    for (k, v) in env {
        if v.contains('\n') || k.contains('\n') || k.contains('=') {
            return Err(format!(
                "environment variable {k:?} cannot be passed to docker (newline or '=' in it)"
            ));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| e.to_string())
}

pub struct Out {
    pub ok: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

pub async fn docker(args: &[String]) -> Out {
    let res = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match res {
        Ok(o) => Out {
            ok: o.status.success(),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        },
        Err(e) => Out {
            ok: false,
            stdout: Vec::new(),
            stderr: format!("failed to run docker: {e}"),
        },
    }
}

fn sv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Server version, or the reason docker is not usable.
pub async fn server_version() -> Result<String, String> {
    let o = docker(&sv(&["version", "--format", "{{.Server.Version}}"])).await;
    if o.ok {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(o.stderr)
    }
}

pub async fn image_present(image: &str) -> bool {
    docker(&sv(&["image", "inspect", "--format", "{{.Id}}", image]))
        .await
        .ok
}

/// `Err` is Nomad's message: ``Failed to pull `IMAGE`: ...``.
pub async fn pull(image: &str) -> Result<(), String> {
    let o = docker(&sv(&["pull", "--quiet", image])).await;
    if o.ok {
        return Ok(());
    }
    let reason = o
        .stderr
        .trim_start_matches("Error response from daemon: ")
        .to_string();
    Err(format!("Failed to pull `{image}`: API error: {reason}"))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub running: bool,
    pub exit_code: i64,
}

pub async fn inspect(name: &str) -> Option<ContainerState> {
    let o = docker(&sv(&[
        "inspect",
        "--type",
        "container",
        "--format",
        "{{.State.Running}} {{.State.ExitCode}}",
        name,
    ]))
    .await;
    if !o.ok {
        return None;
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let mut it = text.split_whitespace();
    Some(ContainerState {
        running: it.next() == Some("true"),
        exit_code: it.next().and_then(|c| c.parse().ok()).unwrap_or(-1),
    })
}

/// Blocks until the container exits; its exit code.
pub async fn wait(name: &str) -> Result<i64, String> {
    let o = docker(&sv(&["wait", name])).await;
    if !o.ok {
        return Err(o.stderr);
    }
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("docker wait: {e}"))
}

pub async fn stop(name: &str, timeout_secs: i64) -> Result<(), String> {
    let o = docker(&[
        "stop".into(),
        "--time".into(),
        timeout_secs.max(0).to_string(),
        name.into(),
    ])
    .await;
    if o.ok {
        Ok(())
    } else {
        Err(o.stderr)
    }
}

pub async fn remove(name: &str) {
    let _ = docker(&sv(&["rm", "-f", name])).await;
}

/// (stdout, stderr) of the container so far.
pub async fn logs(name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let res = tokio::process::Command::new("docker")
        .args(["logs", name])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    res.status.success().then_some((res.stdout, res.stderr))
}

/// Replaces `${NAME}` with values from `vars`; unknown references are left as they are.
pub fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let key = &after[..end];
                match vars.get(key) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Result<DockerConfig, String> {
        parse_config(v.as_object().unwrap())
    }

    #[test]
    fn config_is_checked_like_the_driver_spec() {
        let e = cfg(json!({"imag": "x"})).unwrap_err();
        assert!(
            e.contains("An argument named \"imag\" is not expected here"),
            "{e}"
        );
        let e = cfg(json!({"ports": ["http"]})).unwrap_err();
        assert!(e.contains("The argument \"image\" is required"), "{e}");
        let e = cfg(json!({"image": "x", "ports": "http"})).unwrap_err();
        assert!(e.contains("\"ports\": list of string required"), "{e}");
        let c = cfg(json!({"image": "x", "ports": ["http"], "force_pull": true, "network_mode": "host", "args": ["-p", 80]})).unwrap();
        assert!(c.force_pull);
        assert_eq!(c.args, vec!["-p", "80"]);
    }

    fn spec(config: DockerConfig) -> RunSpec {
        RunSpec {
            name: "web-abc".into(),
            config,
            labels: [(
                "com.hashicorp.nomad.alloc_id".to_string(),
                "abc".to_string(),
            )]
            .into(),
            env_file: "/d/secrets/env".into(),
            ports: vec![AllocPort {
                Label: "http".into(),
                Value: 23456,
                To: 80,
                HostIP: "127.0.0.1".into(),
            }],
            mounts: vec![Mount {
                source: "/srv/nomad/pds".into(),
                target: "/pds".into(),
                read_only: false,
            }],
            memory_mb: 300,
            cpu_shares: 100,
            user: String::new(),
        }
    }

    #[test]
    fn run_args_map_ports_mounts_and_command() {
        let c = cfg(json!({"image": "busybox", "ports": ["http"], "command": "httpd", "args": ["-f", "-p", "80"]})).unwrap();
        let a = run_args(&spec(c)).unwrap().join(" ");
        assert!(a.starts_with("run -d --name web-abc --label com.hashicorp.nomad.alloc_id=abc --env-file /d/secrets/env --memory 300m"), "{a}");
        assert!(
            a.contains("-p 127.0.0.1:23456:80/tcp -p 127.0.0.1:23456:80/udp"),
            "{a}"
        );
        assert!(
            a.contains("--mount type=bind,source=/srv/nomad/pds,target=/pds "),
            "{a}"
        );
        assert!(a.ends_with("busybox httpd -f -p 80"), "{a}");
    }

    /// Nomad's driver sets the container's Entrypoint to `entrypoint` and its Cmd
    /// to `command` then `args` (replacing the image's CMD): with `docker run`
    /// that is `--entrypoint` with the first word and the rest before the Cmd.
    #[test]
    fn entrypoint_and_args_replace_the_images_command() {
        let c = cfg(json!({
            "image": "pds",
            "entrypoint": ["/bin/sh", "-c", "set -a; . /pds/pds.env; set +a; exec \"$@\"", "--"],
            "args": ["dumb-init", "--", "node", "index.js"],
        }))
        .unwrap();
        let a = run_args(&spec(c)).unwrap();
        let at = a.iter().position(|w| w == "--entrypoint").unwrap();
        assert_eq!(a[at + 1], "/bin/sh");
        let image = a.iter().position(|w| w == "pds").unwrap();
        assert_eq!(
            a[image + 1..],
            [
                "-c",
                "set -a; . /pds/pds.env; set +a; exec \"$@\"",
                "--",
                "dumb-init",
                "--",
                "node",
                "index.js"
            ]
        );
    }

    #[test]
    fn host_network_publishes_nothing_and_unknown_labels_fail() {
        let c = cfg(json!({"image": "io", "ports": ["http"], "network_mode": "host"})).unwrap();
        let a = run_args(&spec(c)).unwrap().join(" ");
        assert!(a.contains("--network host"));
        assert!(!a.contains(" -p "));
        let c = cfg(json!({"image": "io", "ports": ["admin"]})).unwrap();
        assert_eq!(
            run_args(&spec(c)).unwrap_err(),
            "Port \"admin\" not found, check network block"
        );
    }

    #[test]
    fn env_file_is_private_and_interpolation_works() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        let env: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        write_env_file(&p, &env).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A=1\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let vars: BTreeMap<String, String> =
            [("NOMAD_PORT_http".to_string(), "80".to_string())].into();
        assert_eq!(
            interpolate("x${NOMAD_PORT_http}y${other}", &vars),
            "x80y${other}"
        );
    }
}
