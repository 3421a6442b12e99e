//! Agent configuration: load `*.hcl`/`*.json` files like `nomad agent -config`, merge them, and
//! refuse what Nomad refuses, with Nomad's messages where the double knows them.
//!
//! Files are parsed with hcl-rs into a JSON-like tree (blocks become nested objects keyed by
//! their labels, as HCL1 decodes them), trees from several files are merged, and the merged
//! tree is read into [`AgentConfig`]. Nomad refuses unknown keys inside the blocks it decodes
//! into structs (`client unexpected keys foo`); the double does the same for the blocks it
//! models (`client`, `ports`, `addresses`, `advertise`) and ignores other blocks.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct HostVolume {
    pub name: String,
    pub path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Triple {
    pub http: String,
    pub rpc: String,
    pub serf: String,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub files: Vec<String>,
    pub data_dir: PathBuf,
    pub region: String,
    pub datacenter: String,
    pub node_name: String,
    pub log_level: String,
    pub bind_addr: String,
    /// Addresses the HTTP API listens on (`addresses.http`, space separated, else `bind_addr`).
    pub http_addrs: Vec<String>,
    pub http_port: u16,
    pub rpc_port: u16,
    pub serf_port: u16,
    pub addresses: Triple,
    /// Normalized `ip:port` advertise addresses.
    pub advertise: Triple,
    pub client_enabled: bool,
    pub servers: Vec<String>,
    pub network_interface: String,
    pub node_class: String,
    pub node_pool: String,
    pub host_volumes: Vec<HostVolume>,
    pub client_meta: BTreeMap<String, String>,
    pub client_options: BTreeMap<String, String>,
    pub server_enabled: bool,
    pub bootstrap_expect: i64,
    pub memory_oversubscription: bool,
    pub docker_allow_privileged: bool,
    pub docker_volumes_enabled: bool,
    pub disable_update_check: bool,
}

impl AgentConfig {
    pub fn host_volume(&self, name: &str) -> Option<&HostVolume> {
        self.host_volumes.iter().find(|v| v.name == name)
    }
}

const CLIENT_KEYS: &[&str] = &[
    "enabled",
    "state_dir",
    "alloc_dir",
    "alloc_mounts_dir",
    "servers",
    "server_join",
    "node_class",
    "node_pool",
    "node_max_allocs",
    "options",
    "meta",
    "chroot_env",
    "network_interface",
    "preferred_address_family",
    "network_speed",
    "cpu_total_compute",
    "cpu_disable_dmidecode",
    "memory_total_mb",
    "disk_total_mb",
    "disk_free_mb",
    "max_kill_timeout",
    "max_dynamic_port",
    "min_dynamic_port",
    "reserved",
    "reservable_cores",
    "gc_interval",
    "gc_disk_usage_threshold",
    "gc_inode_usage_threshold",
    "gc_max_allocs",
    "gc_parallel_destroys",
    "gc_volumes_on_node_gc",
    "no_host_uuid",
    "template",
    "host_volume",
    "host_network",
    "cni_path",
    "cni_config_dir",
    "bridge_network_name",
    "bridge_network_subnet",
    "bridge_network_subnet_ipv6",
    "bridge_network_hairpin_mode",
    "cgroup_parent",
    "artifact",
    "drain_on_shutdown",
    "disable_remote_exec",
    "nomad_service_discovery",
    "host_volumes_dir",
    "host_volume_plugin_dir",
    "common_plugin_dir",
    "users",
    "stats",
    "fingerprint",
    "intro_token",
];

const TRIPLE_KEYS: &[&str] = &["http", "rpc", "serf"];

/// Loads and validates the agent configuration from `-config` paths (files or directories).
/// Does not touch the filesystem beyond reading; see [`check_host_volumes`] for start-up checks.
pub fn load(paths: &[String]) -> Result<AgentConfig, String> {
    let mut tree = Map::new();
    let mut files = Vec::new();
    for p in paths {
        let loaded = load_path(Path::new(p))
            .map_err(|e| format!("Error loading configuration from {p}: {e}"))?;
        if loaded.is_empty() {
            log::warn!("agent: No configuration loaded from {p}");
        }
        for (file, t) in loaded {
            files.push(file);
            merge(&mut tree, t);
        }
    }
    from_tree(&tree, files)
}

/// Parses one `-config` path: a file, or every `*.hcl`/`*.json` file of a directory (sorted).
/// Parsed files: (path, tree).
type Loaded = Vec<(String, Map<String, Value>)>;

fn load_path(path: &Path) -> Result<Loaded, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if meta.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|e| e.to_string())?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry.file_type().map(|t| !t.is_dir()).unwrap_or(false);
            if is_file
                && !name.starts_with('.')
                && (name.ends_with(".hcl") || name.ends_with(".json"))
            {
                names.push(entry.path());
            }
        }
        names.sort();
    } else {
        names.push(path.to_path_buf());
    }
    let mut out = Vec::new();
    for f in names {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| format!("Error loading {}: {e}", f.display()))?;
        let tree = if f.extension().is_some_and(|e| e == "json") {
            parse_json(&text)
        } else {
            parse_hcl(&text)
        }
        .map_err(|e| format!("Error loading {}: {e}", f.display()))?;
        check_keys(&tree).map_err(|e| format!("Error loading {}: {e}", f.display()))?;
        out.push((f.display().to_string(), tree));
    }
    Ok(out)
}

/// HCL text to a JSON-like tree: attributes become values, blocks nest by identifier then labels.
pub fn parse_hcl(text: &str) -> Result<Map<String, Value>, String> {
    let body = hcl::parse(text).map_err(|e| e.to_string())?;
    body_to_map(&body)
}

fn body_to_map(body: &hcl::Body) -> Result<Map<String, Value>, String> {
    use hcl::eval::Evaluate;
    let ctx = hcl::eval::Context::new();
    let mut out = Map::new();
    for s in body.iter() {
        match s {
            hcl::Structure::Attribute(a) => {
                let v = a
                    .expr
                    .evaluate(&ctx)
                    .map_err(|e| format!("{}: {e}", a.key.as_str()))?;
                let v = serde_json::to_value(v).map_err(|e| e.to_string())?;
                out.insert(a.key.as_str().to_string(), v);
            }
            hcl::Structure::Block(b) => {
                let mut v = Value::Object(body_to_map(&b.body)?);
                for label in b.labels.iter().rev() {
                    let mut m = Map::new();
                    m.insert(label.as_str().to_string(), v);
                    v = Value::Object(m);
                }
                let mut wrapper = Map::new();
                wrapper.insert(b.identifier.as_str().to_string(), v);
                merge(&mut out, wrapper);
            }
        }
    }
    Ok(out)
}

/// Nomad's JSON config form; lists of objects (`"client": [{...}]`) are flattened by merging.
fn parse_json(text: &str) -> Result<Map<String, Value>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match flatten_lists(v) {
        Value::Object(m) => Ok(m),
        _ => Err("config must be a JSON object".into()),
    }
}

fn flatten_lists(v: Value) -> Value {
    match v {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let mut m = Map::new();
            for i in items {
                if let Value::Object(o) = flatten_lists(i) {
                    merge(&mut m, o);
                }
            }
            Value::Object(m)
        }
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, flatten_lists(v))).collect())
        }
        other => other,
    }
}

/// Deep merge: objects merge key by key, anything else in `b` replaces `a`.
pub fn merge(a: &mut Map<String, Value>, b: Map<String, Value>) {
    for (k, v) in b {
        match (a.get_mut(&k), v) {
            (Some(Value::Object(x)), Value::Object(y)) => merge(x, y),
            (_, v) => {
                a.insert(k, v);
            }
        }
    }
}

fn check_keys(tree: &Map<String, Value>) -> Result<(), String> {
    let check = |block: &str, allowed: &[&str]| -> Result<(), String> {
        if let Some(Value::Object(m)) = tree.get(block) {
            let extra: Vec<&str> = m
                .keys()
                .map(String::as_str)
                .filter(|k| !allowed.contains(k))
                .collect();
            if !extra.is_empty() {
                return Err(format!("{block} unexpected keys {}", extra.join(", ")));
            }
        }
        Ok(())
    };
    check("client", CLIENT_KEYS)?;
    for b in ["ports", "addresses", "advertise"] {
        check(b, TRIPLE_KEYS)?;
    }
    Ok(())
}

fn get<'a>(m: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let mut cur = m.get(path[0])?;
    for p in &path[1..] {
        cur = cur.as_object()?.get(*p)?;
    }
    Some(cur)
}

fn get_str(m: &Map<String, Value>, path: &[&str]) -> Result<Option<String>, String> {
    match get(m, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(format!("{}: expected a string", path.join("."))),
    }
}

/// HCL1 decodes weakly: `"true"` is a bool and `"4646"` an int.
fn get_bool(m: &Map<String, Value>, path: &[&str]) -> Result<Option<bool>, String> {
    match get(m, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" || s == "1" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" || s == "0" => Ok(Some(false)),
        Some(v) => Err(format!("{}: cannot parse {v} as bool", path.join("."))),
    }
}

fn get_int(m: &Map<String, Value>, path: &[&str]) -> Result<Option<i64>, String> {
    match get(m, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{}: cannot parse {s:?} as int", path.join("."))),
        Some(v) => Err(format!("{}: cannot parse {v} as int", path.join("."))),
    }
}

fn get_str_map(m: &Map<String, Value>, path: &[&str]) -> BTreeMap<String, String> {
    get(m, path)
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let s = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn port(m: &Map<String, Value>, name: &str, default: u16) -> Result<u16, String> {
    match get_int(m, &["ports", name])? {
        None => Ok(default),
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Some(p) => Err(format!("Invalid {name} port: {p}")),
    }
}

/// Reads the merged tree, applying Nomad's defaults and checks in Nomad's order.
pub fn from_tree(tree: &Map<String, Value>, files: Vec<String>) -> Result<AgentConfig, String> {
    const KNOWN_TOP: &[&str] = &[
        "region",
        "datacenter",
        "name",
        "data_dir",
        "plugin_dir",
        "log_level",
        "log_json",
        "log_file",
        "log_rotate_duration",
        "log_rotate_bytes",
        "log_rotate_max_files",
        "log_include_location",
        "bind_addr",
        "enable_debug",
        "ports",
        "addresses",
        "advertise",
        "client",
        "server",
        "acl",
        "audit",
        "telemetry",
        "leave_on_interrupt",
        "leave_on_terminate",
        "enable_syslog",
        "syslog_facility",
        "disable_update_check",
        "disable_anonymous_signature",
        "consul",
        "vault",
        "tls",
        "http_api_response_headers",
        "sentinel",
        "autopilot",
        "plugin",
        "limits",
        "ui",
        "keyring",
        "reporting",
        "rpc",
        "eventlog",
    ];
    for k in tree.keys() {
        if !KNOWN_TOP.contains(&k.as_str()) {
            log::warn!(
                "agent: ignoring top-level config key {k:?} (not modelled by the test double)"
            );
        }
    }
    if get_bool(tree, &["acl", "enabled"])? == Some(true) {
        return Err(
            "acl { enabled = true } is not implemented by the nomad test double (it has no ACL system)"
                .into(),
        );
    }

    let bind_addr = match get_str(tree, &["bind_addr"])? {
        Some(b) => crate::netutil::expand_template(&b)
            .map_err(|e| format!("Bind address resolution failed: {e}"))?,
        None => "0.0.0.0".to_string(),
    };
    let http_port = port(tree, "http", 4646)?;
    let rpc_port = port(tree, "rpc", 4647)?;
    let serf_port = port(tree, "serf", 4648)?;

    let addr_of = |name: &str| -> Result<String, String> {
        match get_str(tree, &["addresses", name])? {
            Some(a) if !a.trim().is_empty() => {
                let parts: Result<Vec<String>, String> = a
                    .split_whitespace()
                    .map(crate::netutil::expand_template)
                    .collect();
                Ok(parts?.join(" "))
            }
            _ => Ok(bind_addr.clone()),
        }
    };
    let addresses = Triple {
        http: addr_of("http").map_err(|e| format!("Failed to parse HTTP address: {e}"))?,
        rpc: addr_of("rpc").map_err(|e| format!("Failed to parse RPC address: {e}"))?,
        serf: addr_of("serf").map_err(|e| format!("Failed to parse Serf address: {e}"))?,
    };
    for a in addresses
        .http
        .split_whitespace()
        .chain([addresses.rpc.as_str(), addresses.serf.as_str()])
    {
        if a.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "Failed to parse address: {a:?} is not an IP address"
            ));
        }
    }
    let http_addrs: Vec<String> = addresses
        .http
        .split_whitespace()
        .map(str::to_string)
        .collect();

    let adv = |name: &str, label: &str, bind: &str, port: u16| -> Result<String, String> {
        let configured = get_str(tree, &["advertise", name])?;
        normalize_advertise(configured.as_deref(), bind, port).map_err(|e| {
            format!(
                "Failed to parse {label} advertise address ({}, {}, {}, false): {e}",
                configured.unwrap_or_default(),
                bind,
                port
            )
        })
    };
    let advertise = Triple {
        http: adv("http", "HTTP", &http_addrs[0], http_port)?,
        rpc: adv("rpc", "RPC", &addresses.rpc, rpc_port)?,
        serf: adv("serf", "Serf", &addresses.serf, serf_port)?,
    };

    let client_present = tree.get("client").is_some();
    let client_enabled = get_bool(tree, &["client", "enabled"])?.unwrap_or(false);
    let server_enabled = get_bool(tree, &["server", "enabled"])?.unwrap_or(false);
    if !server_enabled && !client_enabled {
        return Err("Must specify either server, client or dev mode for the agent.".into());
    }

    let data_dir = get_str(tree, &["data_dir"])?.unwrap_or_default();
    if !data_dir.is_empty() && !Path::new(&data_dir).is_absolute() {
        return Err(format!(
            "data-dir must be given as an absolute path: got {data_dir}"
        ));
    }
    if data_dir.is_empty() {
        if server_enabled {
            return Err("Must specify data directory".into());
        }
        return Err("Must specify both the state and alloc dir if data-dir is omitted.".into());
    }

    let mut host_volumes = Vec::new();
    if let Some(hv) = get(tree, &["client", "host_volume"]) {
        let Some(hv) = hv.as_object() else {
            return Err("client.host_volume: expected labelled blocks".into());
        };
        for (name, body) in hv {
            let m = body.as_object().cloned().unwrap_or_default();
            let path = get_str(&m, &["path"])?.unwrap_or_default();
            if path.is_empty() {
                return Err("Missing path in host_volume config".into());
            }
            let read_only = get_bool(&m, &["read_only"])?.unwrap_or(false);
            host_volumes.push(HostVolume {
                name: name.clone(),
                path,
                read_only,
            });
        }
    }

    // Nomad would run a server-only agent here; the double is always client+server and says so.
    if !client_present {
        return Err(
            "the nomad test double runs as client and server: the config has no client block \
             (add client { enabled = true })"
                .into(),
        );
    }
    if !client_enabled {
        return Err(
            "the nomad test double runs as client and server: client is not enabled \
             (set enabled = true in the client block)"
                .into(),
        );
    }

    let servers = match get(tree, &["client", "servers"]) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let node_name = match get_str(tree, &["name"])? {
        Some(n) if !n.is_empty() => n,
        _ => hostname(),
    };
    Ok(AgentConfig {
        files,
        data_dir: PathBuf::from(data_dir),
        region: get_str(tree, &["region"])?.unwrap_or_else(|| "global".into()),
        datacenter: get_str(tree, &["datacenter"])?.unwrap_or_else(|| "dc1".into()),
        node_name,
        log_level: get_str(tree, &["log_level"])?.unwrap_or_else(|| "INFO".into()),
        bind_addr,
        http_addrs,
        http_port,
        rpc_port,
        serf_port,
        addresses,
        advertise,
        client_enabled,
        servers,
        network_interface: get_str(tree, &["client", "network_interface"])?.unwrap_or_default(),
        node_class: get_str(tree, &["client", "node_class"])?.unwrap_or_default(),
        node_pool: get_str(tree, &["client", "node_pool"])?.unwrap_or_else(|| "default".into()),
        host_volumes,
        client_meta: get_str_map(tree, &["client", "meta"]),
        client_options: get_str_map(tree, &["client", "options"]),
        server_enabled,
        bootstrap_expect: get_int(tree, &["server", "bootstrap_expect"])?.unwrap_or(0),
        memory_oversubscription: get_bool(
            tree,
            &[
                "server",
                "default_scheduler_config",
                "memory_oversubscription_enabled",
            ],
        )?
        .unwrap_or(false),
        docker_allow_privileged: get_bool(
            tree,
            &["plugin", "docker", "config", "allow_privileged"],
        )?
        .unwrap_or(false),
        docker_volumes_enabled: get_bool(
            tree,
            &["plugin", "docker", "config", "volumes", "enabled"],
        )?
        .unwrap_or(false),
        disable_update_check: get_bool(tree, &["disable_update_check"])?.unwrap_or(false),
    })
}

/// Nomad's `normalizeAdvertise`: an explicit address gets the default port; otherwise the bind
/// address is used unless it is loopback (refused) or unspecified (go-sockaddr `GetPrivateIP`).
fn normalize_advertise(configured: Option<&str>, bind: &str, port: u16) -> Result<String, String> {
    if let Some(c) = configured.filter(|c| !c.trim().is_empty()) {
        let c = crate::netutil::expand_template(c)
            .map_err(|e| format!("Error parsing advertise address template: {e}"))?;
        if c.parse::<std::net::SocketAddr>().is_ok() {
            return Ok(c);
        }
        if let Ok(ip) = c.parse::<std::net::IpAddr>() {
            return Ok(std::net::SocketAddr::new(ip, port).to_string());
        }
        if let Some((host, p)) = c.rsplit_once(':') {
            if p.parse::<u16>().is_ok() && !host.contains(':') {
                return Ok(c);
            }
        }
        return Ok(format!("{c}:{port}"));
    }
    let ip: std::net::IpAddr = bind
        .parse()
        .map_err(|e| format!("Error resolving bind address {bind:?}: {e}"))?;
    if ip.is_loopback() {
        return Err(
            "Defaulting advertise to localhost is unsafe, please set advertise manually".into(),
        );
    }
    if !ip.is_unspecified() {
        return Ok(std::net::SocketAddr::new(ip, port).to_string());
    }
    match crate::netutil::private_ip() {
        Some(p) => Ok(format!("{p}:{port}")),
        None => {
            Err("Unable to parse default advertise address: No private IP address found".into())
        }
    }
}

/// Start-up check done by Nomad's client (`setupNode`): every host volume path must exist.
pub fn check_host_volumes(cfg: &AgentConfig) -> Result<(), String> {
    for v in &cfg.host_volumes {
        if let Err(e) = std::fs::metadata(&v.path) {
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
                _ => e.to_string(),
            };
            return Err(format!(
                "Error starting agent: client setup failed: node setup failed: failed to \
                 validate volume {}, err: stat {}: {reason}",
                v.name, v.path
            ));
        }
    }
    Ok(())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<AgentConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nomad.hcl"), text).unwrap();
        std::fs::write(dir.path().join("nomad.env"), "NOT CONFIG = {").unwrap();
        load(&[dir.path().display().to_string()])
    }

    const GOOD: &str = r#"
data_dir  = "/opt/nomad/data"
bind_addr = "127.0.0.1"
advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}
ports { http = 4747 }
server {
  enabled          = true
  bootstrap_expect = 1
}
client {
  enabled = true
  servers = ["127.0.0.1"]
  network_interface = "lo"
  host_volume "pds" {
    path      = "/srv/nomad/pds"
    read_only = false
  }
  host_volume "io" { path = "/srv/nomad/io" }
}
telemetry { collection_interval = "1s" }
"#;

    #[test]
    fn loads_the_shape_pdsup_writes() {
        let c = cfg(GOOD).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/opt/nomad/data"));
        assert_eq!(c.http_addrs, vec!["127.0.0.1"]);
        assert_eq!(c.http_port, 4747);
        assert_eq!(c.advertise.http, "127.0.0.1:4747");
        assert_eq!(c.advertise.rpc, "127.0.0.1:4647");
        assert_eq!(c.datacenter, "dc1");
        assert_eq!(c.network_interface, "lo");
        assert!(c.server_enabled && c.client_enabled);
        assert_eq!(
            c.host_volume("pds"),
            Some(&HostVolume {
                name: "pds".into(),
                path: "/srv/nomad/pds".into(),
                read_only: false
            })
        );
        assert_eq!(c.host_volumes.len(), 2);
        assert_eq!(c.files.len(), 1, "nomad.env is not config");
    }

    #[test]
    fn files_in_a_directory_are_merged_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.hcl"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("b.hcl"),
            "datacenter = \"ams3\"\nclient {\n host_volume \"extra\" {\n path = \"/tmp\"\n read_only = true\n }\n}",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c.json"),
            r#"{"client": [{"meta": [{"role": "pds"}]}]}"#,
        )
        .unwrap();
        let c = load(&[dir.path().display().to_string()]).unwrap();
        assert_eq!(c.datacenter, "ams3");
        assert_eq!(c.host_volumes.len(), 3);
        assert!(c.host_volume("extra").unwrap().read_only);
        assert_eq!(c.client_meta.get("role").map(String::as_str), Some("pds"));
        assert_eq!(c.files.len(), 3);
    }

    #[test]
    fn refuses_what_nomad_refuses() {
        let e = cfg("data_dir = \"/x\"\nclient { enabled = true \n").unwrap_err();
        assert!(e.starts_with("Error loading configuration from"), "{e}");

        let e = cfg("bind_addr = \"127.0.0.1\"\ndata_dir = \"/x\"\nclient { enabled = true }")
            .unwrap_err();
        assert!(
            e.contains("Defaulting advertise to localhost is unsafe"),
            "{e}"
        );
        assert!(
            e.starts_with("Failed to parse HTTP advertise address"),
            "{e}"
        );

        let e = cfg("bind_addr = \"0.0.0.0\"\naddresses { http = \"127.0.0.1\" }\nadvertise {\n rpc = \"10.0.0.1\"\n serf = \"10.0.0.1\"\n}\ndata_dir = \"/x\"\nclient { enabled = true }").unwrap_err();
        assert!(
            e.contains("Defaulting advertise to localhost is unsafe"),
            "{e}"
        );

        let e = cfg("data_dir = \"relative\"\nadvertise {\n http = \"10.0.0.1\"\n rpc = \"10.0.0.1\"\n serf = \"10.0.0.1\"\n}\nclient { enabled = true }").unwrap_err();
        assert_eq!(
            e,
            "data-dir must be given as an absolute path: got relative"
        );

        let adv =
            "advertise {\n http = \"10.0.0.1\"\n rpc = \"10.0.0.1\"\n serf = \"10.0.0.1\"\n}\n";
        let e = cfg(&format!(
            "{adv}server {{ enabled = true }}\nclient {{ enabled = true }}"
        ))
        .unwrap_err();
        assert_eq!(e, "Must specify data directory");

        let e = cfg(&format!("{adv}data_dir = \"/x\"\nclient {{\n enabled = true\n host_volume \"pds\" {{ read_only = true }}\n}}")).unwrap_err();
        assert_eq!(e, "Missing path in host_volume config");

        let e = cfg(&format!(
            "{adv}data_dir = \"/x\"\nserver {{ enabled = true }}"
        ))
        .unwrap_err();
        assert!(e.contains("no client block"), "{e}");

        let e = cfg(&format!(
            "{adv}data_dir = \"/x\"\nserver {{ enabled = true }}\nclient {{ enabled = false }}"
        ))
        .unwrap_err();
        assert!(e.contains("client is not enabled"), "{e}");

        let e = cfg(&format!(
            "{adv}data_dir = \"/x\"\nclient {{ enabled = false }}"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            "Must specify either server, client or dev mode for the agent."
        );

        let e = cfg(&format!("{adv}data_dir = \"/x\"\nclient {{\n enabled = true\n host_volumes \"pds\" {{ path = \"/x\" }}\n}}")).unwrap_err();
        assert!(e.ends_with("client unexpected keys host_volumes"), "{e}");

        let e = cfg(&format!(
            "{adv}data_dir = \"/x\"\nclient {{ enabled = true }}\nacl {{ enabled = true }}"
        ))
        .unwrap_err();
        assert!(e.contains("acl"), "{e}");
    }

    #[test]
    fn unknown_top_level_blocks_are_ignored() {
        let c = cfg(&format!(
            "{GOOD}\nmystery {{ x = 1 }}\nui {{ enabled = true }}"
        ))
        .unwrap();
        assert!(c.client_enabled);
    }

    #[test]
    fn missing_host_volume_path_is_refused_at_start() {
        let c = cfg(GOOD).unwrap();
        let e = check_host_volumes(&c).unwrap_err();
        assert!(
            e.contains(
                "failed to validate volume io, err: stat /srv/nomad/io: no such file or directory"
            ),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let ok = AgentConfig {
            host_volumes: vec![HostVolume {
                name: "pds".into(),
                path: dir.path().display().to_string(),
                read_only: false,
            }],
            ..c
        };
        check_host_volumes(&ok).unwrap();
    }

    #[test]
    fn advertise_normalization() {
        assert_eq!(
            normalize_advertise(Some("10.0.0.1"), "0.0.0.0", 4646).unwrap(),
            "10.0.0.1:4646"
        );
        assert_eq!(
            normalize_advertise(Some("10.0.0.1:80"), "0.0.0.0", 4646).unwrap(),
            "10.0.0.1:80"
        );
        assert_eq!(
            normalize_advertise(None, "10.1.2.3", 4647).unwrap(),
            "10.1.2.3:4647"
        );
        assert!(normalize_advertise(None, "127.0.0.1", 4646).is_err());
    }
}
