//! The jobs pdsup runs, as a small typed model of the part of a Nomad job it needs.
//!
//! One model, two renderings:
//! - [`Job::to_api_json`] is the body for `POST /v1/jobs` (and, under `"Job"`, for
//!   `/v1/job/:id/plan`). Nomad decodes it case-insensitively and **silently drops
//!   unknown keys**, so every key here is spelt exactly as in the `api` Go structs
//!   (NOMAD-API.md §1); durations are integer nanoseconds. Secret env values are
//!   exposed: this JSON only ever travels through the SSH tunnel to Nomad.
//! - [`Job::to_hcl`] is the same job as a jobspec like the seed's `pds.hcl`, for
//!   `pdsup plan` (secrets masked as `********`) and for users who want the file.
//!
//! Invariant: a field the model has is rendered in both forms, so what `plan` shows
//! is what Nomad receives (apart from masked secrets).

use std::time::Duration;

use hcl::{Attribute, Block, Body, Expression, Identifier, Object, ObjectKey};
use serde_json::{json, Map, Value};

use crate::secret::EnvValue;
use crate::settings::PDS_PORT;

/// The datacenter of pdsup's single-node cluster (Nomad's default `datacenter`).
pub const DATACENTER: &str = "dc1";

/// The job `meta` key that marks a job as pdsup's, and its value. A job without
/// it (an `io` job the user runs, for instance) is the user's: pdsup adopts it
/// and never re-submits it.
pub const MANAGED_BY_KEY: &str = "managed-by";
pub const MANAGED_BY: &str = "pdsup";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub datacenters: Vec<String>,
    pub job_type: JobType,
    /// Job-level `meta`: pdsup's mark ([`MANAGED_BY_KEY`]) on every job it writes.
    pub meta: Vec<(String, String)>,
    pub groups: Vec<Group>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobType {
    Service,
    Batch,
    System,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Service => "service",
            JobType::Batch => "batch",
            JobType::System => "system",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub count: u32,
    pub ports: Vec<Port>,
    pub services: Vec<Service>,
    pub volumes: Vec<HostVolumeRequest>,
    pub restart: Option<Restart>,
    pub update: Option<Update>,
    pub tasks: Vec<Task>,
}

/// A group network port. With `static_port` it is a reserved port (HCL `static`,
/// JSON `ReservedPorts[].Value`), otherwise a dynamic one; `to` is the port inside
/// the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub label: String,
    pub static_port: Option<u16>,
    pub to: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// `None` registers the service without a port (the node's address only),
    /// which is what a task on the host network with no declared port gets.
    pub port_label: Option<String>,
    /// Always `nomad` for pdsup: an empty provider means Consul, and a droplet
    /// without Consul cannot place the job.
    pub provider: String,
    pub checks: Vec<Check>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Http,
    Tcp,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    /// Required (and relative) for http checks, absent for tcp.
    pub path: Option<String>,
    /// Both at least one second: Nomad rejects less.
    pub interval: Duration,
    pub timeout: Duration,
}

/// A group `volume` of type `host`: `source` is the client's `host_volume` name,
/// `name` is the key tasks mount it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVolumeRequest {
    pub name: String,
    pub source: String,
    pub read_only: bool,
}

/// Group restart policy (HCL `restart`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    pub attempts: u32,
    pub interval: Duration,
    pub delay: Duration,
    /// `fail` or `delay`.
    pub mode: String,
}

/// Group update strategy (HCL `update`): how Nomad decides an allocation is
/// healthy, which is what `wait_job_healthy` waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// `checks` (service checks passing), `task_states` or `manual`.
    pub health_check: String,
    pub min_healthy_time: Duration,
    pub healthy_deadline: Duration,
    pub progress_deadline: Duration,
    pub auto_revert: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub name: String,
    pub driver: String,
    pub image: String,
    pub port_labels: Vec<String>,
    pub network_mode: Option<String>,
    pub force_pull: bool,
    /// Replaces the image's entrypoint (the docker driver's `entrypoint`).
    pub entrypoint: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    pub volume_mounts: Vec<Mount>,
    pub resources: Resources,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The group volume's name (the key of `TaskGroup.Volumes`).
    pub volume: String,
    pub destination: String,
    pub read_only: bool,
}

/// What the scheduler reserves for a task. With the docker driver `cpu` is a
/// relative share (not a cap) and `memory_mb` is a hard limit (OOM kill above it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_mhz: u32,
    pub memory_mb: u32,
}

const PDS_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const MIN_HEALTHY_TIME: Duration = Duration::from_secs(5);

/// How health is decided, made explicit so the HCL shows it. Nomad runs a
/// check first at half its interval, then every interval
/// (`client/allocrunner/checks_hook.go`), and marks the allocation healthy once
/// every check has passed for `min_healthy_time`. With Nomad's defaults (10 s
/// check, 10 s) a PDS that answers 2-3 s after start was declared healthy after
/// ~25 s; with a 2 s check and 5 s here it is ~8 s, and a deployment still needs
/// the PDS to keep answering for 5 s before it counts as healthy (what an upgrade's
/// auto-revert relies on). A first start may pull a large image, hence Nomad's
/// default 5 min deadline.
fn default_update() -> Update {
    Update {
        health_check: "checks".into(),
        min_healthy_time: MIN_HEALTHY_TIME,
        healthy_deadline: Duration::from_secs(5 * 60),
        progress_deadline: Duration::from_secs(10 * 60),
        auto_revert: false,
    }
}

/// The seed's `pds.hcl`: job "pds", one group, the PDS image with the host volume
/// `pds` at `/pds`. Differences from the seed, on purpose:
/// - the port is static 3000 (to 3000): the proxy (on the host network) and pdsup
///   (through the SSH tunnel) reach the PDS at 127.0.0.1:3000, the client's
///   `network_interface` being `lo`, so it is never exposed beyond loopback;
/// - the service has an http check on `/xrpc/_health`, so "healthy" means the PDS
///   answers, not merely that the container runs;
/// - resources: 500 MHz (a share, not a cap) and 512 MB. An idle PDS (node 20)
///   uses ~150–250 MB and grows with blob uploads (up to the 100 MB upload
///   limit in flight); 512 MB leaves room for that on a 1 GB droplet that also
///   runs Nomad, Docker and the proxy, where Nomad's 300 MB default would OOM.
pub fn pds_job(image: &str, env: Vec<(String, EnvValue)>) -> Job {
    Job {
        id: "pds".into(),
        datacenters: vec![DATACENTER.into()],
        job_type: JobType::Service,
        meta: pdsups_mark(),
        groups: vec![Group {
            name: "pds".into(),
            count: 1,
            ports: vec![Port {
                label: "http".into(),
                static_port: Some(PDS_PORT),
                to: Some(PDS_PORT),
            }],
            services: vec![Service {
                name: "pds".into(),
                port_label: Some("http".into()),
                provider: "nomad".into(),
                checks: vec![Check {
                    kind: CheckKind::Http,
                    path: Some("/xrpc/_health".into()),
                    interval: PDS_CHECK_INTERVAL,
                    timeout: Duration::from_secs(2),
                }],
            }],
            volumes: vec![HostVolumeRequest {
                name: "pds".into(),
                source: "pds".into(),
                read_only: false,
            }],
            restart: None,
            // An upgrade (`pdsup upgrade`) whose new image never becomes
            // healthy is rolled back by Nomad to the last stable version.
            update: Some(Update {
                auto_revert: true,
                ..default_update()
            }),
            tasks: vec![Task {
                name: "pds".into(),
                driver: "docker".into(),
                image: image.into(),
                port_labels: vec!["http".into()],
                network_mode: None,
                force_pull: false,
                entrypoint: Vec::new(),
                args: Vec::new(),
                env,
                volume_mounts: vec![Mount {
                    volume: "pds".into(),
                    destination: "/pds".into(),
                    read_only: false,
                }],
                resources: Resources {
                    cpu_mhz: 500,
                    memory_mb: 512,
                },
            }],
        }],
    }
}

/// Where the PDS task finds its environment file: the droplet's
/// `/srv/nomad/pds/pds.env` on the `pds` volume, where pdsadmin and goat look.
pub const PDS_ENV_IN_TASK: &str = "/pds/pds.env";

/// How the task starts: the image's own entrypoint and command run by a shell
/// that first exports every variable of [`PDS_ENV_IN_TASK`], so the secrets
/// reach the PDS without being in the job (anyone who reaches Nomad's API can
/// read a job). A missing or broken file stops the task before the PDS starts.
/// `$@` has no braces, so Nomad's `${...}` interpolation leaves it alone.
pub fn env_file_launcher() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("set -a; . {PDS_ENV_IN_TASK}; set +a; exec \"$@\""),
        "--".into(),
    ]
}

/// The image's own `Entrypoint` and `Cmd` (`docker image inspect`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageCommand {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The pds job that loads its environment from [`PDS_ENV_IN_TASK`]: only
/// `plain_env` (no secret) is in the job, the image's command runs under
/// [`env_file_launcher`].
pub fn pds_job_with_env_file(
    image: &str,
    plain_env: Vec<(String, EnvValue)>,
    command: &ImageCommand,
) -> Job {
    let mut job = pds_job(image, plain_env);
    let task = &mut job.groups[0].tasks[0];
    task.entrypoint = env_file_launcher();
    task.args = command
        .entrypoint
        .iter()
        .chain(&command.cmd)
        .cloned()
        .collect();
    job
}

/// The IO proxy job (REFERENCE.md, Droplet Superpowers): host networking (it
/// binds 80/443 itself and reaches Nomad and the PDS on loopback), `force_pull`
/// for the floating `latest` tag, host volume `io` at `/io` for its config and
/// certificates, service `io` registered with Nomad. IO's listening ports are
/// not public, so the service has no port and no check; health is the task
/// running for `min_healthy_time`. 256 MB suits an Envoy with a few hosts.
pub fn io_job(image: &str) -> Job {
    Job {
        id: "io".into(),
        datacenters: vec![DATACENTER.into()],
        job_type: JobType::Service,
        meta: pdsups_mark(),
        groups: vec![Group {
            name: "io".into(),
            count: 1,
            ports: Vec::new(),
            services: vec![Service {
                name: "io".into(),
                port_label: None,
                provider: "nomad".into(),
                checks: Vec::new(),
            }],
            volumes: vec![HostVolumeRequest {
                name: "io".into(),
                source: "io".into(),
                read_only: false,
            }],
            restart: None,
            update: Some(default_update()),
            tasks: vec![Task {
                name: "io".into(),
                driver: "docker".into(),
                image: image.into(),
                port_labels: Vec::new(),
                network_mode: Some("host".into()),
                force_pull: true,
                entrypoint: Vec::new(),
                args: Vec::new(),
                env: Vec::new(),
                volume_mounts: vec![Mount {
                    volume: "io".into(),
                    destination: "/io".into(),
                    read_only: false,
                }],
                resources: Resources {
                    cpu_mhz: 200,
                    memory_mb: 256,
                },
            }],
        }],
    }
}

/// The `meta` that marks a job as written by pdsup.
pub fn pdsups_mark() -> Vec<(String, String)> {
    vec![(MANAGED_BY_KEY.into(), MANAGED_BY.into())]
}

/// Whether a job as Nomad returns it (`GET /v1/job/:id`) carries pdsup's mark.
pub fn is_pdsups(spec: &Value) -> bool {
    spec["Meta"][MANAGED_BY_KEY].as_str() == Some(MANAGED_BY)
}

/// Whether a job as Nomad returns it mounts the client's host volume `source`
/// into one of its tasks: a group `volume` of type `host` with that source,
/// named by a task's `volume_mount`.
pub fn mounts_host_volume(spec: &Value, source: &str) -> bool {
    let groups = spec["TaskGroups"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    groups.iter().any(|group| {
        let Some(volumes) = group["Volumes"].as_object() else {
            return false;
        };
        let names: Vec<&str> = volumes
            .iter()
            .filter(|(_, v)| v["Type"] == "host" && v["Source"] == source)
            .map(|(key, _)| key.as_str())
            .collect();
        let tasks = group["Tasks"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        tasks.iter().any(|task| {
            let mounts = task["VolumeMounts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            mounts
                .iter()
                .any(|m| m["Volume"].as_str().is_some_and(|v| names.contains(&v)))
        })
    })
}

fn ns(d: Duration) -> Value {
    // Nomad wants an integer literal of nanoseconds; u64 covers 584 years.
    json!(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Job {
    /// The secret values in the job, for scrubbing them from anything echoed back.
    pub fn secret_values(&self) -> Vec<&str> {
        self.groups
            .iter()
            .flat_map(|g| &g.tasks)
            .flat_map(|t| &t.env)
            .filter_map(|(_, v)| match v {
                EnvValue::Secret(s) if !s.expose().is_empty() => Some(s.expose()),
                _ => None,
            })
            .collect()
    }

    /// The body of `POST /v1/jobs`: `{"Job": {...}}`, secrets exposed.
    pub fn to_api_json(&self) -> Value {
        json!({ "Job": self.job_json() })
    }

    /// The `Job` object alone (also the `Job` of a plan request).
    pub fn job_json(&self) -> Value {
        let mut job = json!({
            "ID": self.id,
            "Name": self.id,
            "Type": self.job_type.as_str(),
            "Datacenters": self.datacenters,
            "TaskGroups": self.groups.iter().map(Group::api_json).collect::<Vec<_>>(),
        });
        if !self.meta.is_empty() {
            let meta: Map<String, Value> = self
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            job["Meta"] = Value::Object(meta);
        }
        job
    }

    /// The job as a jobspec in the seed's layout. With `reveal_secrets == false`
    /// secret env values read `********` (for `plan` output and logs).
    pub fn to_hcl(&self, reveal_secrets: bool) -> String {
        let job = Block::builder("job")
            .add_label(self.id.as_str())
            .add_attribute(("datacenters", self.datacenters.clone()))
            .add_attribute(("type", self.job_type.as_str()));
        // `meta { managed-by = "pdsup" }`, as a jobspec writes it (HCL
        // identifiers may contain dashes).
        let job = if self.meta.is_empty() {
            job
        } else {
            let attrs = self
                .meta
                .iter()
                .map(|(k, v)| Attribute::new(k.as_str(), v.as_str()));
            job.add_block(Block::builder("meta").add_attributes(attrs).build())
        };
        let job = job
            .add_blocks(self.groups.iter().map(|g| g.hcl(reveal_secrets)))
            .build();
        let body = Body::builder().add_block(job).build();
        use hcl::format::Format;
        let mut formatter = hcl::format::Formatter::builder()
            .compact_arrays(true)
            .build_vec();
        // Formatting into a Vec cannot fail (hcl-rs documents it).
        body.format_string(&mut formatter)
            .expect("formatting HCL into memory cannot fail")
    }
}

impl Group {
    fn api_json(&self) -> Value {
        let mut group = Map::new();
        group.insert("Name".into(), json!(self.name));
        group.insert("Count".into(), json!(self.count));
        if !self.ports.is_empty() {
            let port = |p: &Port| {
                let mut o = Map::new();
                o.insert("Label".into(), json!(p.label));
                if let Some(v) = p.static_port {
                    o.insert("Value".into(), json!(v));
                }
                if let Some(to) = p.to {
                    o.insert("To".into(), json!(to));
                }
                Value::Object(o)
            };
            let reserved: Vec<Value> = self
                .ports
                .iter()
                .filter(|p| p.static_port.is_some())
                .map(port)
                .collect();
            let dynamic: Vec<Value> = self
                .ports
                .iter()
                .filter(|p| p.static_port.is_none())
                .map(port)
                .collect();
            let mut network = Map::new();
            if !reserved.is_empty() {
                network.insert("ReservedPorts".into(), Value::Array(reserved));
            }
            if !dynamic.is_empty() {
                network.insert("DynamicPorts".into(), Value::Array(dynamic));
            }
            group.insert("Networks".into(), json!([network]));
        }
        if !self.services.is_empty() {
            group.insert(
                "Services".into(),
                Value::Array(self.services.iter().map(Service::api_json).collect()),
            );
        }
        if !self.volumes.is_empty() {
            let volumes: Map<String, Value> = self
                .volumes
                .iter()
                .map(|v| {
                    let body = json!({
                        "Name": v.name,
                        "Type": "host",
                        "Source": v.source,
                        "ReadOnly": v.read_only,
                    });
                    (v.name.clone(), body)
                })
                .collect();
            group.insert("Volumes".into(), Value::Object(volumes));
        }
        if let Some(r) = &self.restart {
            group.insert(
                "RestartPolicy".into(),
                json!({
                    "Attempts": r.attempts,
                    "Interval": ns(r.interval),
                    "Delay": ns(r.delay),
                    "Mode": r.mode,
                }),
            );
        }
        if let Some(u) = &self.update {
            group.insert(
                "Update".into(),
                json!({
                    "HealthCheck": u.health_check,
                    "MinHealthyTime": ns(u.min_healthy_time),
                    "HealthyDeadline": ns(u.healthy_deadline),
                    "ProgressDeadline": ns(u.progress_deadline),
                    "AutoRevert": u.auto_revert,
                }),
            );
        }
        group.insert(
            "Tasks".into(),
            Value::Array(self.tasks.iter().map(Task::api_json).collect()),
        );
        Value::Object(group)
    }

    fn hcl(&self, reveal: bool) -> Block {
        let mut b = Block::builder("group")
            .add_label(self.name.as_str())
            .add_attribute(("count", self.count));
        if !self.ports.is_empty() {
            let ports = self.ports.iter().map(|p| {
                let mut pb = Block::builder("port").add_label(p.label.as_str());
                if let Some(v) = p.static_port {
                    pb = pb.add_attribute(("static", v));
                }
                if let Some(to) = p.to {
                    pb = pb.add_attribute(("to", to));
                }
                pb.build()
            });
            b = b.add_block(Block::builder("network").add_blocks(ports).build());
        }
        for s in &self.services {
            b = b.add_block(s.hcl());
        }
        for v in &self.volumes {
            b = b.add_block(
                Block::builder("volume")
                    .add_label(v.name.as_str())
                    .add_attribute(("type", "host"))
                    .add_attribute(("source", v.source.as_str()))
                    .add_attribute(("read_only", v.read_only))
                    .build(),
            );
        }
        if let Some(r) = &self.restart {
            b = b.add_block(
                Block::builder("restart")
                    .add_attribute(("attempts", r.attempts))
                    .add_attribute(("interval", hcl_duration(r.interval)))
                    .add_attribute(("delay", hcl_duration(r.delay)))
                    .add_attribute(("mode", r.mode.as_str()))
                    .build(),
            );
        }
        if let Some(u) = &self.update {
            b = b.add_block(
                Block::builder("update")
                    .add_attribute(("health_check", u.health_check.as_str()))
                    .add_attribute(("min_healthy_time", hcl_duration(u.min_healthy_time)))
                    .add_attribute(("healthy_deadline", hcl_duration(u.healthy_deadline)))
                    .add_attribute(("progress_deadline", hcl_duration(u.progress_deadline)))
                    .add_attribute(("auto_revert", u.auto_revert))
                    .build(),
            );
        }
        for t in &self.tasks {
            b = b.add_block(t.hcl(reveal));
        }
        b.build()
    }
}

impl Service {
    fn api_json(&self) -> Value {
        let mut s = Map::new();
        s.insert("Name".into(), json!(self.name));
        if let Some(port) = &self.port_label {
            s.insert("PortLabel".into(), json!(port));
        }
        s.insert("Provider".into(), json!(self.provider));
        if !self.checks.is_empty() {
            let checks = self
                .checks
                .iter()
                .map(|c| {
                    let mut o = Map::new();
                    o.insert("Type".into(), json!(c.kind.as_str()));
                    if let Some(path) = &c.path {
                        o.insert("Path".into(), json!(path));
                    }
                    o.insert("Interval".into(), ns(c.interval));
                    o.insert("Timeout".into(), ns(c.timeout));
                    Value::Object(o)
                })
                .collect();
            s.insert("Checks".into(), Value::Array(checks));
        }
        Value::Object(s)
    }

    fn hcl(&self) -> Block {
        let mut b = Block::builder("service")
            .add_attribute(("name", self.name.as_str()))
            .add_attribute(("provider", self.provider.as_str()));
        if let Some(port) = &self.port_label {
            b = b.add_attribute(("port", port.as_str()));
        }
        for c in &self.checks {
            let mut cb = Block::builder("check").add_attribute(("type", c.kind.as_str()));
            if let Some(path) = &c.path {
                cb = cb.add_attribute(("path", path.as_str()));
            }
            cb = cb
                .add_attribute(("interval", hcl_duration(c.interval)))
                .add_attribute(("timeout", hcl_duration(c.timeout)));
            b = b.add_block(cb.build());
        }
        b.build()
    }
}

impl Task {
    /// The docker driver's `config`, keyed by its lowercase HCL names.
    fn config_pairs(&self) -> Vec<(&'static str, Value)> {
        let mut c = vec![("image", json!(self.image))];
        if !self.port_labels.is_empty() {
            c.push(("ports", json!(self.port_labels)));
        }
        if let Some(mode) = &self.network_mode {
            c.push(("network_mode", json!(mode)));
        }
        if self.force_pull {
            c.push(("force_pull", json!(true)));
        }
        if !self.entrypoint.is_empty() {
            c.push(("entrypoint", json!(self.entrypoint)));
        }
        if !self.args.is_empty() {
            c.push(("args", json!(self.args)));
        }
        c
    }

    fn api_json(&self) -> Value {
        let mut t = Map::new();
        t.insert("Name".into(), json!(self.name));
        t.insert("Driver".into(), json!(self.driver));
        let config: Map<String, Value> = self
            .config_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        t.insert("Config".into(), Value::Object(config));
        if !self.env.is_empty() {
            let env: Map<String, Value> = self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), json!(v.expose())))
                .collect();
            t.insert("Env".into(), Value::Object(env));
        }
        if !self.volume_mounts.is_empty() {
            let mounts = self
                .volume_mounts
                .iter()
                .map(|m| {
                    json!({
                        "Volume": m.volume,
                        "Destination": m.destination,
                        "ReadOnly": m.read_only,
                    })
                })
                .collect();
            t.insert("VolumeMounts".into(), Value::Array(mounts));
        }
        t.insert(
            "Resources".into(),
            json!({ "CPU": self.resources.cpu_mhz, "MemoryMB": self.resources.memory_mb }),
        );
        Value::Object(t)
    }

    fn hcl(&self, reveal: bool) -> Block {
        let mut config = Block::builder("config");
        for (key, value) in self.config_pairs() {
            config = config.add_attribute((key, json_to_expr(value)));
        }
        let mut b = Block::builder("task")
            .add_label(self.name.as_str())
            .add_attribute(("driver", self.driver.as_str()))
            .add_block(config.build());
        for m in &self.volume_mounts {
            b = b.add_block(
                Block::builder("volume_mount")
                    .add_attribute(("volume", m.volume.as_str()))
                    .add_attribute(("destination", m.destination.as_str()))
                    .add_attribute(("read_only", m.read_only))
                    .build(),
            );
        }
        if !self.env.is_empty() {
            let shown = |v: &EnvValue| {
                if reveal {
                    v.expose().to_string()
                } else {
                    v.shown().to_string()
                }
            };
            if self
                .env
                .iter()
                .all(|(k, _)| Identifier::new(k.as_str()).is_ok())
            {
                // The seed's form: `env { KEY = "value" }`.
                let attrs = self
                    .env
                    .iter()
                    .map(|(k, v)| Attribute::new(k.as_str(), shown(v)));
                b = b.add_block(Block::builder("env").add_attributes(attrs).build());
            } else {
                // Keys that are not HCL identifiers (dots, dashes) need the map form.
                let object: Object<ObjectKey, Expression> = self
                    .env
                    .iter()
                    .map(|(k, v)| {
                        (
                            ObjectKey::Expression(Expression::String(k.clone())),
                            Expression::String(shown(v)),
                        )
                    })
                    .collect();
                b = b.add_attribute(("env", Expression::Object(object)));
            }
        }
        b = b.add_block(
            Block::builder("resources")
                .add_attribute(("cpu", self.resources.cpu_mhz))
                .add_attribute(("memory", self.resources.memory_mb))
                .build(),
        );
        b.build()
    }
}

/// A docker `config` value (strings, bools, lists of strings) as an HCL expression.
fn json_to_expr(value: Value) -> Expression {
    match value {
        Value::Null => Expression::Null,
        Value::Bool(b) => Expression::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Expression::from(i),
            None => Expression::from(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Expression::String(s),
        Value::Array(items) => Expression::Array(items.into_iter().map(json_to_expr).collect()),
        Value::Object(map) => Expression::Object(
            map.into_iter()
                .map(|(k, v)| {
                    (
                        ObjectKey::Expression(Expression::String(k)),
                        json_to_expr(v),
                    )
                })
                .collect(),
        ),
    }
}

/// A duration the way a jobspec writes it: "10s", "5m", "1h", "1500ms".
fn hcl_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s != 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s != 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "06b051816ba5a269ae00373e61ed46eb";

    fn env() -> Vec<(String, EnvValue)> {
        vec![
            ("PDS_HOSTNAME".into(), EnvValue::plain("pds.example.com")),
            ("PDS_JWT_SECRET".into(), EnvValue::secret(JWT)),
            ("PDS_DATA_DIRECTORY".into(), EnvValue::plain("/pds")),
        ]
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn pds_job_json_has_nomads_exact_keys() {
        let body = pds_job("ghcr.io/bluesky-social/pds:0.4", env()).to_api_json();
        assert_eq!(keys(&body), ["Job"]);
        let job = &body["Job"];
        assert_eq!(
            keys(job),
            ["Datacenters", "ID", "Meta", "Name", "TaskGroups", "Type"]
        );
        assert_eq!(job["Meta"], json!({ "managed-by": "pdsup" }));
        assert_eq!(job["ID"], "pds");
        assert_eq!(job["Name"], "pds");
        assert_eq!(job["Type"], "service");
        assert_eq!(job["Datacenters"], json!(["dc1"]));

        let group = &job["TaskGroups"][0];
        assert_eq!(
            keys(group),
            ["Count", "Name", "Networks", "Services", "Tasks", "Update", "Volumes"]
        );
        assert_eq!(group["Name"], "pds");
        assert_eq!(group["Count"], 1);
        assert_eq!(
            group["Networks"],
            json!([{ "ReservedPorts": [{ "Label": "http", "Value": 3000, "To": 3000 }] }])
        );
        assert_eq!(
            group["Services"],
            json!([{
                "Name": "pds",
                "PortLabel": "http",
                "Provider": "nomad",
                "Checks": [{
                    "Type": "http",
                    "Path": "/xrpc/_health",
                    "Interval": 2_000_000_000u64,
                    "Timeout": 2_000_000_000u64,
                }],
            }])
        );
        assert_eq!(
            group["Volumes"],
            json!({ "pds": { "Name": "pds", "Type": "host", "Source": "pds", "ReadOnly": false } })
        );
        assert_eq!(
            group["Update"],
            json!({
                "HealthCheck": "checks",
                "MinHealthyTime": 5_000_000_000u64,
                "HealthyDeadline": 300_000_000_000u64,
                "ProgressDeadline": 600_000_000_000u64,
                "AutoRevert": true,
            })
        );

        let task = &group["Tasks"][0];
        assert_eq!(
            keys(task),
            [
                "Config",
                "Driver",
                "Env",
                "Name",
                "Resources",
                "VolumeMounts"
            ]
        );
        assert_eq!(task["Name"], "pds");
        assert_eq!(task["Driver"], "docker");
        assert_eq!(
            task["Config"],
            json!({ "image": "ghcr.io/bluesky-social/pds:0.4", "ports": ["http"] })
        );
        assert_eq!(
            task["VolumeMounts"],
            json!([{ "Volume": "pds", "Destination": "/pds", "ReadOnly": false }])
        );
        assert_eq!(task["Resources"], json!({ "CPU": 500, "MemoryMB": 512 }));
        // The API body carries the real secret: it goes only through the tunnel.
        assert_eq!(task["Env"]["PDS_JWT_SECRET"], JWT);
        assert_eq!(task["Env"]["PDS_HOSTNAME"], "pds.example.com");
    }

    #[test]
    fn durations_are_integer_nanoseconds() {
        let body = pds_job("img", env()).to_api_json();
        let check = &body["Job"]["TaskGroups"][0]["Services"][0]["Checks"][0];
        assert!(check["Interval"].is_u64(), "{check}");
        assert!(check["Timeout"].is_u64(), "{check}");
        let update = &body["Job"]["TaskGroups"][0]["Update"];
        for k in ["MinHealthyTime", "HealthyDeadline", "ProgressDeadline"] {
            assert!(update[k].is_u64(), "{k}: {update}");
        }
    }

    #[test]
    fn volume_mounts_reference_a_host_volume_key() {
        for job in [pds_job("img", env()), io_job("agentio/io:latest")] {
            let body = job.to_api_json();
            let group = &body["Job"]["TaskGroups"][0];
            let volumes = group["Volumes"].as_object().unwrap();
            for v in volumes.values() {
                assert_eq!(v["Type"], "host");
            }
            for m in group["Tasks"][0]["VolumeMounts"].as_array().unwrap() {
                let key = m["Volume"].as_str().unwrap();
                assert!(volumes.contains_key(key), "{key} is not a group volume");
            }
            for s in group["Services"].as_array().unwrap() {
                assert_eq!(s["Provider"], "nomad");
            }
        }
    }

    #[test]
    fn io_job_json() {
        let body = io_job("agentio/io:latest").to_api_json();
        let group = &body["Job"]["TaskGroups"][0];
        assert_eq!(body["Job"]["ID"], "io");
        assert_eq!(
            keys(group),
            ["Count", "Name", "Services", "Tasks", "Update", "Volumes"]
        );
        assert_eq!(
            group["Services"],
            json!([{ "Name": "io", "Provider": "nomad" }])
        );
        assert_eq!(
            group["Volumes"],
            json!({ "io": { "Name": "io", "Type": "host", "Source": "io", "ReadOnly": false } })
        );
        let task = &group["Tasks"][0];
        assert_eq!(
            keys(task),
            ["Config", "Driver", "Name", "Resources", "VolumeMounts"]
        );
        assert_eq!(
            task["Config"],
            json!({ "image": "agentio/io:latest", "network_mode": "host", "force_pull": true })
        );
        assert_eq!(
            task["VolumeMounts"],
            json!([{ "Volume": "io", "Destination": "/io", "ReadOnly": false }])
        );
    }

    #[test]
    fn the_env_file_job_runs_the_image_command_under_the_launcher_with_no_secret() {
        let command = ImageCommand {
            entrypoint: vec!["dumb-init".into(), "--".into()],
            cmd: vec!["node".into(), "index.js".into()],
        };
        let plain = vec![("PDS_HOSTNAME".into(), EnvValue::plain("pds.example.com"))];
        let job = pds_job_with_env_file("img", plain, &command);
        assert!(job.secret_values().is_empty());
        let config = &job.to_api_json()["Job"]["TaskGroups"][0]["Tasks"][0]["Config"];
        assert_eq!(config["entrypoint"], json!(env_file_launcher()));
        assert_eq!(
            config["args"],
            json!(["dumb-init", "--", "node", "index.js"])
        );
        let hcl = job.to_hcl(false);
        assert!(hcl.contains("entrypoint = [\"/bin/sh\", \"-c\""), "{hcl}");
    }

    /// The launcher, run by a real `sh` on a file like pds.env: every variable is
    /// exported to the command, which gets its arguments unchanged.
    #[test]
    fn the_launcher_exports_the_file_and_execs_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pds.env");
        std::fs::write(
            &file,
            "# comment\nPDS_ADMIN_PASSWORD=abc123\nPDS_X=\"a b $ c\"\n",
        )
        .unwrap();
        let mut launcher = env_file_launcher();
        launcher[2] = launcher[2].replace(PDS_ENV_IN_TASK, file.to_str().unwrap());
        let out = std::process::Command::new(&launcher[0])
            .args(&launcher[1..])
            .args([
                "sh",
                "-c",
                "printf '%s|%s|%s' \"$PDS_ADMIN_PASSWORD\" \"$PDS_X\" \"$1\"",
                "-",
                "one arg",
            ])
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "abc123|a b $ c|one arg"
        );
        std::fs::remove_file(&file).unwrap();
        let out = std::process::Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(["true"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a missing env file must stop the task"
        );
    }

    #[test]
    fn dynamic_ports_and_args() {
        let mut job = pds_job("img", Vec::new());
        job.groups[0].ports.push(Port {
            label: "admin".into(),
            static_port: None,
            to: Some(8080),
        });
        job.groups[0].tasks[0].args = vec!["httpd".into(), "-f".into()];
        let body = job.to_api_json();
        let network = &body["Job"]["TaskGroups"][0]["Networks"][0];
        assert_eq!(
            network["DynamicPorts"],
            json!([{ "Label": "admin", "To": 8080 }])
        );
        assert_eq!(
            body["Job"]["TaskGroups"][0]["Tasks"][0]["Config"]["args"],
            json!(["httpd", "-f"])
        );
        assert!(body["Job"]["TaskGroups"][0]["Tasks"][0]
            .get("Env")
            .is_none());
    }

    #[test]
    fn hcl_parses_and_masks_secrets() {
        let job = pds_job("ghcr.io/bluesky-social/pds:0.4", env());
        let masked = job.to_hcl(false);
        assert!(!masked.contains(JWT), "{masked}");
        assert!(masked.contains("PDS_JWT_SECRET = \"********\""), "{masked}");
        let body: hcl::Body = hcl::from_str(&masked).expect("masked HCL parses");
        let job_block = body.blocks().next().expect("a job block");
        assert_eq!(job_block.identifier(), "job");
        assert_eq!(job_block.labels()[0].as_str(), "pds");

        let revealed = job.to_hcl(true);
        assert!(
            revealed.contains(&format!("PDS_JWT_SECRET = \"{JWT}\"")),
            "{revealed}"
        );
        hcl::from_str::<hcl::Body>(&revealed).expect("revealed HCL parses");
    }

    #[test]
    fn hcl_has_the_seeds_shape() {
        let hcl = pds_job("ghcr.io/bluesky-social/pds:0.4", env()).to_hcl(false);
        let v: Value = hcl::from_str(&hcl).unwrap();
        let group = &v["job"]["pds"]["group"]["pds"];
        assert_eq!(v["job"]["pds"]["datacenters"], json!(["dc1"]));
        assert_eq!(v["job"]["pds"]["type"], json!("service"));
        assert_eq!(group["count"], json!(1));
        assert_eq!(group["network"]["port"]["http"]["static"], json!(3000));
        assert_eq!(group["network"]["port"]["http"]["to"], json!(3000));
        assert_eq!(group["service"]["provider"], json!("nomad"));
        assert_eq!(group["service"]["port"], json!("http"));
        assert_eq!(group["service"]["check"]["path"], json!("/xrpc/_health"));
        assert_eq!(group["service"]["check"]["interval"], json!("2s"));
        assert_eq!(group["volume"]["pds"]["type"], json!("host"));
        assert_eq!(group["update"]["healthy_deadline"], json!("5m"));
        let task = &group["task"]["pds"];
        assert_eq!(task["driver"], json!("docker"));
        assert_eq!(
            task["config"]["image"],
            json!("ghcr.io/bluesky-social/pds:0.4")
        );
        assert_eq!(task["config"]["ports"], json!(["http"]));
        assert_eq!(task["volume_mount"]["destination"], json!("/pds"));
        assert_eq!(task["resources"]["memory"], json!(512));
    }

    #[test]
    fn hcl_escapes_interpolation_and_quotes_odd_keys() {
        let job = pds_job(
            "img",
            vec![
                ("WEIRD".into(), EnvValue::plain("a ${b} \"c\" \\ d")),
                ("with.dot".into(), EnvValue::plain("x")),
            ],
        );
        let text = job.to_hcl(true);
        assert!(text.contains("$${b}"), "{text}");
        let v: Value = hcl::from_str(&text).unwrap();
        let env = &v["job"]["pds"]["group"]["pds"]["task"]["pds"]["env"];
        assert_eq!(env["WEIRD"], json!("a ${b} \"c\" \\ d"));
        assert_eq!(env["with.dot"], json!("x"));
    }

    #[test]
    fn io_hcl() {
        let text = io_job("agentio/io:latest").to_hcl(false);
        let v: Value = hcl::from_str(&text).unwrap();
        let task = &v["job"]["io"]["group"]["io"]["task"]["io"];
        assert_eq!(task["config"]["network_mode"], json!("host"));
        assert_eq!(task["config"]["force_pull"], json!(true));
        assert_eq!(task["volume_mount"]["destination"], json!("/io"));
    }

    #[test]
    fn durations_in_hcl() {
        assert_eq!(hcl_duration(Duration::from_secs(10)), "10s");
        assert_eq!(hcl_duration(Duration::from_secs(300)), "5m");
        assert_eq!(hcl_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(hcl_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(hcl_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn pdsups_jobs_carry_its_mark_in_both_renderings() {
        for job in [pds_job("img", env()), io_job("agentio/io:latest")] {
            let body = job.to_api_json();
            assert!(is_pdsups(&body["Job"]), "{body}");
            let v: Value = hcl::from_str(&job.to_hcl(false)).unwrap();
            assert_eq!(
                v["job"][job.id.as_str()]["meta"]["managed-by"],
                json!("pdsup")
            );
        }
        let mut unmarked = io_job("agentio/io:latest");
        unmarked.meta.clear();
        let body = unmarked.to_api_json();
        assert!(body["Job"].get("Meta").is_none(), "{body}");
        assert!(!is_pdsups(&body["Job"]));
        assert!(!is_pdsups(
            &json!({ "Meta": { "managed-by": "someone else" } })
        ));
        assert!(!is_pdsups(&json!({ "Meta": null })));
    }

    #[test]
    fn a_job_mounts_a_host_volume_only_through_a_group_volume_and_a_task_mount() {
        let io = io_job("agentio/io:latest").to_api_json()["Job"].clone();
        assert!(mounts_host_volume(&io, "io"));
        assert!(!mounts_host_volume(&io, "pds"));
        // The user's own names for the group volume are fine: the source counts.
        let renamed = json!({ "TaskGroups": [{
            "Volumes": { "config": { "Type": "host", "Source": "io" } },
            "Tasks": [{ "VolumeMounts": [{ "Volume": "config", "Destination": "/etc/io" }] }],
        }]});
        assert!(mounts_host_volume(&renamed, "io"));
        // Declared but mounted by no task, or another source, or not a host volume.
        for spec in [
            json!({ "TaskGroups": [{
                "Volumes": { "io": { "Type": "host", "Source": "io" } },
                "Tasks": [{ "VolumeMounts": null }],
            }]}),
            json!({ "TaskGroups": [{
                "Volumes": { "io": { "Type": "host", "Source": "other" } },
                "Tasks": [{ "VolumeMounts": [{ "Volume": "io" }] }],
            }]}),
            json!({ "TaskGroups": [{
                "Volumes": { "io": { "Type": "csi", "Source": "io" } },
                "Tasks": [{ "VolumeMounts": [{ "Volume": "io" }] }],
            }]}),
            json!({ "TaskGroups": null }),
        ] {
            assert!(!mounts_host_volume(&spec, "io"), "{spec}");
        }
    }

    #[test]
    fn secret_values_and_debug() {
        let job = pds_job("img", env());
        assert_eq!(job.secret_values(), [JWT]);
        assert!(!format!("{job:?}").contains(JWT));
    }
}
