//! The Nomad agent configuration (`/etc/nomad.d/nomad.hcl`) and the systemd unit.
//!
//! A fresh droplet gets [`fresh_config`]: a secure single-node server + client.
//! A droplet that already has a config (Droplet Superpowers, the official
//! package, a hand-written one) is patched by [`ensure_host_volumes`], which
//! adds the missing `host_volume` blocks inside `client` and keeps every other
//! byte: comments, blank lines, alignment, attribute order.
//!
//! Invariants: patching is idempotent (a second run returns `changed: false` and
//! the same text), never rewrites a volume the user already declared, and never
//! returns text whose untouched parts differ from the input. When hcl-edit could
//! not reproduce the input exactly, the file is refused rather than reformatted.

use std::borrow::Cow;
use std::net::IpAddr;

use hcl::edit::expr::Expression;
use hcl::edit::structure::{Attribute, Block, BlockLabel, Body, Structure};
use hcl::edit::{Decorate, Decorated, Ident};

/// The config pdsup writes on a droplet without one, before host volumes are added.
const NOMAD_HCL: &str = include_str!("../../assets/nomad.hcl");
/// The systemd unit, modelled on the official package's.
const NOMAD_SERVICE: &str = include_str!("../../assets/nomad.service");

/// A `host_volume` in the client block: a directory on the droplet a job may mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVolume {
    pub name: String,
    pub path: String,
    pub read_only: bool,
}

/// The result of [`ensure_host_volumes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patched {
    pub text: String,
    /// Whether `text` differs from the input.
    pub changed: bool,
    /// For each requested volume name (in request order, without duplicates),
    /// the path actually configured: the user's when the volume already existed.
    pub paths: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the Nomad configuration has an HCL syntax error at line {line}, column {column}: {message}\n  {line_text}\nThe file was left untouched: fix it, then run pdsup again"
    )]
    Syntax {
        line: usize,
        column: usize,
        message: String,
        line_text: String,
    },
    #[error(
        "the Nomad configuration cannot be edited without reformatting it ({0}). The file was left untouched: add the host_volume blocks to its `client` block by hand, then run pdsup again"
    )]
    Unsupported(String),
}

/// The unit file pdsup installs as `/etc/systemd/system/nomad.service`.
pub fn systemd_unit() -> &'static str {
    NOMAD_SERVICE
}

/// The config for a droplet that has none: `assets/nomad.hcl` with `volumes`
/// added exactly as [`ensure_host_volumes`] adds them, so that patching the
/// result again is a no-op.
pub fn fresh_config(volumes: &[HostVolume]) -> String {
    ensure_host_volumes(NOMAD_HCL, volumes)
        .expect("assets/nomad.hcl is valid HCL with a client block")
        .text
}

/// Adds each volume that no `client` block declares yet to the first `client`
/// block (or to a new one at the end of the file), leaving everything else as it was.
pub fn ensure_host_volumes(existing: &str, volumes: &[HostVolume]) -> Result<Patched, ConfigError> {
    let Exact {
        bom,
        crlf,
        text,
        mut body,
    } = parse_exact(existing)?;

    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for volume in volumes {
        if paths.iter().any(|(name, _)| *name == volume.name) {
            continue;
        }
        match declared_path(&body, &volume.name) {
            Some(path) => paths.push((volume.name.clone(), path)),
            None => {
                paths.push((volume.name.clone(), volume.path.clone()));
                missing.push(volume);
            }
        }
    }
    if missing.is_empty() {
        return Ok(Patched {
            text: existing.to_string(),
            changed: false,
            paths,
        });
    }

    let client = body
        .iter()
        .position(|s| s.as_block().is_some_and(|b| b.has_ident("client")));
    let mut out = match client {
        Some(index) => {
            add_to_client(&mut body, index, &missing);
            body.to_string()
        }
        None => append_client(&text, &missing),
    };
    if crlf {
        out = out.replace('\n', "\r\n");
    }
    Ok(Patched {
        text: format!("{bom}{out}"),
        changed: true,
        paths,
    })
}

/// A config parsed for editing, with what is needed to write it back byte for byte.
struct Exact<'a> {
    bom: &'static str,
    crlf: bool,
    /// The text without BOM, with LF line endings.
    text: Cow<'a, str>,
    body: Body,
}

impl Exact<'_> {
    /// The edited body as the file's text: BOM and CRLF line endings restored.
    fn write(&self) -> String {
        let mut out = self.body.to_string();
        if self.crlf {
            out = out.replace('\n', "\r\n");
        }
        format!("{}{out}", self.bom)
    }
}

fn parse_exact(existing: &str) -> Result<Exact<'_>, ConfigError> {
    // hcl-edit keeps comments and spacing but writes "\n" after each structure;
    // a file with CRLF line endings throughout is edited as LF and converted back.
    let (bom, rest) = match existing.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", existing),
    };
    let crlf = rest.contains("\r\n") && rest.matches('\n').count() == rest.matches("\r\n").count();
    let text: Cow<str> = if crlf {
        Cow::Owned(rest.replace("\r\n", "\n"))
    } else {
        Cow::Borrowed(rest)
    };
    let body: Body = hcl::edit::parser::parse_body(&text).map_err(|e| syntax_error(&e))?;
    if body.to_string() != *text {
        let why = if rest.contains('\r') {
            "it mixes line endings"
        } else {
            "the HCL editor does not reproduce it exactly"
        };
        return Err(ConfigError::Unsupported(why.into()));
    }
    Ok(Exact {
        bom,
        crlf,
        text,
        body,
    })
}

/// Where the Nomad client allocates task ports: `client { network_interface }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskInterface {
    /// `"lo"`: task ports bind to 127.0.0.1, reachable only on the droplet.
    Loopback,
    /// Not set: Nomad picks the interface of the default route, so task ports
    /// are published on the droplet's public address.
    Unset,
    /// Another interface (or an expression), as written.
    Other(String),
}

/// The `network_interface` of the file's `client` blocks (the last one wins,
/// as when Nomad merges). An unreadable file counts as unset.
pub fn task_interface(config: &str) -> TaskInterface {
    let Ok(body) = hcl::edit::parser::parse_body(config) else {
        return TaskInterface::Unset;
    };
    let mut found = TaskInterface::Unset;
    for client in body.get_blocks("client") {
        if let Some(attr) = client.body.get_attribute("network_interface") {
            found = match attr.value.as_str() {
                Some("lo") => TaskInterface::Loopback,
                Some(other) => TaskInterface::Other(other.to_string()),
                None => TaskInterface::Other(attr.value.to_string().trim().to_string()),
            };
        }
    }
    found
}

/// Sets `network_interface = "lo"` in the first `client` block when no client
/// block sets a network interface, so that task ports (the PDS's) bind to
/// loopback as in [`fresh_config`]. Like [`ensure_host_volumes`], it keeps every
/// other byte; a file without a `client` block, or one that already sets an
/// interface, is returned unchanged (see [`task_interface`]).
pub fn ensure_loopback_tasks(existing: &str) -> Result<Patched, ConfigError> {
    let unchanged = || Patched {
        text: existing.to_string(),
        changed: false,
        paths: Vec::new(),
    };
    let mut exact = parse_exact(existing)?;
    if task_interface(&exact.text) != TaskInterface::Unset {
        return Ok(unchanged());
    }
    // The first client block, where the host volumes go too.
    let Some(index) = exact
        .body
        .iter()
        .position(|s| s.as_block().is_some_and(|b| b.has_ident("client")))
    else {
        return Ok(unchanged());
    };
    let outer = exact
        .body
        .get(index)
        .map(|s| last_line_indent(prefix(s)))
        .unwrap_or_default();
    let client = exact
        .body
        .get_mut(index)
        .and_then(Structure::as_block_mut)
        .expect("index points at the client block");
    let inner = &mut client.body;
    if inner.prefer_oneline() {
        expand_oneline(inner, &outer);
    }
    // After the client's last attribute (`enabled`, `servers`), before its blocks.
    let at = inner
        .iter()
        .enumerate()
        .filter(|(_, s)| s.as_attribute().is_some())
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(0);
    let indent = match at.checked_sub(1).and_then(|i| inner.get(i)) {
        Some(neighbour) => last_line_indent(prefix(neighbour)),
        None => format!("{outer}  "),
    };
    let blank_line = if at == 0 { "" } else { "\n" };
    let mut attr = Attribute::new(
        Decorated::new(Ident::new("network_interface")),
        Expression::from("lo"),
    );
    attr.decor_mut().set_prefix(format!(
        "{blank_line}{indent}# Task ports on loopback: the PDS is reachable only through the proxy (added by pdsup).\n{indent}"
    ));
    attr.decor_mut().set_suffix("");
    inner.insert(at, attr);
    Ok(Patched {
        text: exact.write(),
        changed: true,
        paths: Vec::new(),
    })
}

fn syntax_error(e: &hcl::edit::parser::Error) -> ConfigError {
    ConfigError::Syntax {
        line: e.location().line(),
        column: e.location().column(),
        message: e.message().to_string(),
        line_text: e.line().to_string(),
    }
}

/// The path of `host_volume "<name>"` in any top-level `client` block: the
/// string itself, or the expression as written when it is not a plain string.
fn declared_path(body: &Body, name: &str) -> Option<String> {
    body.get_blocks("client")
        .flat_map(|client| client.body.get_blocks("host_volume"))
        .find(|volume| volume.labels.first().map(BlockLabel::as_str) == Some(name))
        .map(|volume| match volume.body.get_attribute("path") {
            Some(attr) => match attr.value.as_str() {
                Some(path) => path.to_string(),
                None => attr.value.to_string().trim().to_string(),
            },
            None => String::new(),
        })
}

/// Every `host_volume` the file declares in its `client` blocks, as (name, path),
/// in file order: Nomad refuses to start while any of their directories is
/// missing, pdsup's own or not. Paths that are not plain strings are left out
/// (an expression names no directory pdsup could create); an unreadable file
/// declares none.
pub fn declared_host_volumes(config: &str) -> Vec<(String, String)> {
    let Ok(body) = hcl::edit::parser::parse_body(config) else {
        return Vec::new();
    };
    body.get_blocks("client")
        .flat_map(|client| client.body.get_blocks("host_volume"))
        .filter_map(|volume| {
            let name = volume.labels.first()?.as_str().to_string();
            let path = volume
                .body
                .get_attribute("path")?
                .value
                .as_str()?
                .to_string();
            Some((name, path))
        })
        .collect()
}

/// Inserts the blocks after the client's last `host_volume` (or at the end of
/// its body), indented like the structure they follow.
fn add_to_client(body: &mut Body, index: usize, volumes: &[&HostVolume]) {
    let outer = body
        .get(index)
        .map(|s| last_line_indent(prefix(s)))
        .unwrap_or_default();
    let client = body
        .get_mut(index)
        .and_then(Structure::as_block_mut)
        .expect("index points at the client block");
    let inner = &mut client.body;

    if inner.prefer_oneline() {
        // `client { enabled = true }` or `client {}`: the only case where an
        // existing byte changes, since a block cannot be added to a one-line body.
        expand_oneline(inner, &outer);
    }

    let mut at = inner.len();
    for (i, s) in inner.iter().enumerate() {
        if s.as_block().is_some_and(|b| b.has_ident("host_volume")) {
            at = i + 1;
        }
    }
    let indent = match at.checked_sub(1).and_then(|i| inner.get(i)) {
        Some(neighbour) => last_line_indent(prefix(neighbour)),
        None => format!("{outer}  "),
    };
    let step = match indent.strip_prefix(outer.as_str()) {
        Some(step) if !step.is_empty() => step.to_string(),
        _ if indent.contains('\t') => "\t".to_string(),
        _ => "  ".to_string(),
    };
    for (offset, volume) in volumes.iter().enumerate() {
        let blank_line = if at + offset == 0 { "" } else { "\n" };
        let block = volume_block(volume, &format!("{blank_line}{indent}"), &indent, &step);
        inner.insert(at + offset, block);
    }
}

fn expand_oneline(inner: &mut Body, outer: &str) {
    inner.set_prefer_oneline(false);
    let indent = format!("{outer}  ");
    for mut structure in inner.iter_mut() {
        let decor = structure.decor_mut();
        let before = decor
            .prefix()
            .map(|p| p.trim_start().to_string())
            .unwrap_or_default();
        let after = decor
            .suffix()
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        decor.set_prefix(format!("{indent}{before}"));
        decor.set_suffix(after);
    }
    inner.decor_mut().set_prefix("");
    inner.decor_mut().set_suffix(outer.to_string());
}

/// ```hcl
/// <prefix>host_volume "NAME" {
/// <indent><step>path = "PATH"
/// <indent><step>read_only = false
/// <indent>}
/// ```
fn volume_block(volume: &HostVolume, prefix: &str, indent: &str, step: &str) -> Block {
    let attr = |key: &str, value: Expression| {
        let mut attr = Attribute::new(Decorated::new(Ident::new(key)), value);
        attr.decor_mut().set_prefix(format!("{indent}{step}"));
        attr.decor_mut().set_suffix("");
        attr
    };
    let mut block = Block::builder(Decorated::new(Ident::new("host_volume")))
        .label(BlockLabel::from(volume.name.clone()))
        .attribute(attr("path", Expression::from(volume.path.clone())))
        .attribute(attr("read_only", Expression::from(volume.read_only)))
        .build();
    block.body.decor_mut().set_prefix("");
    block.body.decor_mut().set_suffix(indent.to_string());
    block.decor_mut().set_prefix(prefix.to_string());
    block.decor_mut().set_suffix("");
    block
}

/// A new `client` block at the end of a file that has none, after one blank line.
fn append_client(text: &str, volumes: &[&HostVolume]) -> String {
    let mut client = Block::new(Decorated::new(Ident::new("client")));
    let mut enabled = Attribute::new(
        Decorated::new(Ident::new("enabled")),
        Expression::from(true),
    );
    enabled.decor_mut().set_prefix("  ");
    enabled.decor_mut().set_suffix("");
    client.body.push(enabled);
    for volume in volumes {
        client.body.push(volume_block(volume, "\n  ", "  ", "  "));
    }
    client.body.decor_mut().set_prefix("");
    client.body.decor_mut().set_suffix("");
    client.decor_mut().set_prefix("");
    client.decor_mut().set_suffix("");
    let block = Body::from(vec![Structure::from(client)]).to_string();

    let separator = if text.is_empty() || text.ends_with("\n\n") {
        ""
    } else if text.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    format!("{text}{separator}{block}")
}

fn prefix(structure: &Structure) -> &str {
    structure.decor().prefix().map(|p| &**p).unwrap_or("")
}

/// The leading whitespace of the last line of a decor prefix: how far the
/// structure after it is indented.
fn last_line_indent(prefix: &str) -> String {
    let last = prefix.rsplit('\n').next().unwrap_or("");
    last.chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// Whether Nomad's HTTP API listens only on loopback according to this file:
/// `addresses { http = ... }` when set (every address, if several), else
/// `bind_addr` (default `0.0.0.0`). The last setting in the file wins, as when
/// Nomad merges. Unreadable configs and go-sockaddr templates count as "not
/// loopback": the answer only decides whether to warn.
pub fn http_listens_on_loopback(config: &str) -> bool {
    let Ok(body) = hcl::edit::parser::parse_body(config) else {
        return false;
    };
    let mut bind_addr: Option<String> = None;
    let mut http: Option<String> = None;
    for structure in body.iter() {
        if let Some(attr) = structure.as_attribute() {
            if attr.has_key("bind_addr") {
                bind_addr = Some(attr.value.as_str().unwrap_or("<expression>").to_string());
            }
        } else if let Some(block) = structure.as_block() {
            if block.has_ident("addresses") {
                if let Some(attr) = block.body.get_attribute("http") {
                    http = Some(attr.value.as_str().unwrap_or("<expression>").to_string());
                }
            }
        }
    }
    let effective = http.or(bind_addr).unwrap_or_else(|| "0.0.0.0".to_string());
    let mut addresses = effective.split_whitespace().peekable();
    addresses.peek().is_some() && addresses.all(is_loopback)
}

fn is_loopback(address: &str) -> bool {
    let host = address.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The droplet's nomad.hcl cannot be edited safely: the step stops before
/// changing anything.
impl From<ConfigError> for crate::error::Error {
    fn from(e: ConfigError) -> Self {
        crate::error::Error::from_source(crate::error::ErrorKind::Blocked, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_host_volumes_lists_every_client_volume() {
        let text = "client {\n  enabled = true\n  host_volume \"io\" {\n    path      = \"/srv/nomad/io\"\n    read_only = false\n  }\n}\nclient {\n  host_volume \"data\" { path = \"/data\" }\n  host_volume \"tpl\" { path = \"${var.x}\" }\n}\nserver {\n  host_volume \"not\" { path = \"/nope\" }\n}\n";
        assert_eq!(
            declared_host_volumes(text),
            vec![
                ("io".to_string(), "/srv/nomad/io".to_string()),
                ("data".to_string(), "/data".to_string()),
            ]
        );
        assert!(declared_host_volumes("client {").is_empty());
    }

    fn vol(name: &str, path: &str) -> HostVolume {
        HostVolume {
            name: name.into(),
            path: path.into(),
            read_only: false,
        }
    }

    fn pds_and_io() -> Vec<HostVolume> {
        vec![vol("pds", "/srv/nomad/pds"), vol("io", "/srv/nomad/io")]
    }

    /// `/etc/nomad.d/nomad.hcl` from HashiCorp's package (identical in v1.7.7 and v1.10.5).
    const OFFICIAL: &str = r#"# Full configuration options can be found at https://www.nomadproject.io/docs/configuration

data_dir  = "/opt/nomad/data"
bind_addr = "0.0.0.0"

server {
  # license_path is required as of Nomad v1.1.1+
  #license_path = "/opt/nomad/license.hclic"
  enabled          = true
  bootstrap_expect = 1
}

client {
  enabled = true
  servers = ["127.0.0.1"]
}
"#;

    /// agentio/droplet-superpowers `etc/nomad.d/nomad.hcl` (ends with a blank line).
    const DROPLET_SUPERPOWERS: &str = r#"data_dir  = "/opt/nomad/data"
bind_addr = "0.0.0.0"

server {
  enabled          = true
  bootstrap_expect = 1
  heartbeat_grace  = "1m"
}

client {
  enabled = true
  servers = ["127.0.0.1"]

  host_volume "io" {
    path = "/srv/nomad/io"
    read_only = false
  }
}

"#;

    fn assert_idempotent(text: &str, volumes: &[HostVolume]) {
        let again = ensure_host_volumes(text, volumes).unwrap();
        assert!(!again.changed, "second run changed:\n{}", again.text);
        assert_eq!(again.text, text);
    }

    #[test]
    fn fresh_config_is_secure_and_has_the_volumes() {
        let text = fresh_config(&pds_and_io());
        assert!(text.starts_with("# Nomad agent configuration"));
        assert!(text.contains("Written by pdsup"));
        let v: serde_json::Value = hcl::from_str(&text).unwrap();
        assert_eq!(v["data_dir"], "/opt/nomad/data");
        assert_eq!(v["bind_addr"], "127.0.0.1");
        for key in ["http", "rpc", "serf"] {
            assert_eq!(v["advertise"][key], "127.0.0.1");
        }
        assert_eq!(v["server"]["enabled"], true);
        assert_eq!(v["server"]["bootstrap_expect"], 1);
        assert_eq!(v["client"]["enabled"], true);
        assert_eq!(v["client"]["servers"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(v["client"]["network_interface"], "lo");
        assert_eq!(v["client"]["host_volume"]["pds"]["path"], "/srv/nomad/pds");
        assert_eq!(v["client"]["host_volume"]["pds"]["read_only"], false);
        assert_eq!(v["client"]["host_volume"]["io"]["path"], "/srv/nomad/io");
        assert_eq!(v["plugin"]["docker"]["config"]["allow_privileged"], false);
        assert_eq!(v["plugin"]["docker"]["config"]["volumes"]["enabled"], false);
        assert_eq!(v["disable_update_check"], true);
        assert!(http_listens_on_loopback(&text));
        assert!(text.ends_with("disable_update_check = true\n"));
        assert_idempotent(&text, &pds_and_io());
    }

    #[test]
    fn fresh_config_without_io() {
        let text = fresh_config(&[vol("pds", "/srv/nomad/pds")]);
        assert!(text.contains(
            "  network_interface = \"lo\"\n\n  host_volume \"pds\" {\n    path = \"/srv/nomad/pds\"\n    read_only = false\n  }\n}\n"
        ));
        assert!(!text.contains("host_volume \"io\""));
    }

    #[test]
    fn patches_the_official_package_config() {
        let patched = ensure_host_volumes(OFFICIAL, &pds_and_io()).unwrap();
        assert!(patched.changed);
        assert_eq!(
            patched.text,
            r#"# Full configuration options can be found at https://www.nomadproject.io/docs/configuration

data_dir  = "/opt/nomad/data"
bind_addr = "0.0.0.0"

server {
  # license_path is required as of Nomad v1.1.1+
  #license_path = "/opt/nomad/license.hclic"
  enabled          = true
  bootstrap_expect = 1
}

client {
  enabled = true
  servers = ["127.0.0.1"]

  host_volume "pds" {
    path = "/srv/nomad/pds"
    read_only = false
  }

  host_volume "io" {
    path = "/srv/nomad/io"
    read_only = false
  }
}
"#
        );
        assert_eq!(
            patched.paths,
            vec![
                ("pds".into(), "/srv/nomad/pds".into()),
                ("io".into(), "/srv/nomad/io".into())
            ]
        );
        assert!(!http_listens_on_loopback(&patched.text));
        assert_idempotent(&patched.text, &pds_and_io());
    }

    #[test]
    fn patches_droplet_superpowers_config() {
        let patched = ensure_host_volumes(DROPLET_SUPERPOWERS, &pds_and_io()).unwrap();
        assert!(patched.changed);
        assert_eq!(
            patched.text,
            r#"data_dir  = "/opt/nomad/data"
bind_addr = "0.0.0.0"

server {
  enabled          = true
  bootstrap_expect = 1
  heartbeat_grace  = "1m"
}

client {
  enabled = true
  servers = ["127.0.0.1"]

  host_volume "io" {
    path = "/srv/nomad/io"
    read_only = false
  }

  host_volume "pds" {
    path = "/srv/nomad/pds"
    read_only = false
  }
}

"#
        );
        assert_idempotent(&patched.text, &pds_and_io());
    }

    #[test]
    fn existing_volume_with_another_path_is_kept_and_reported() {
        let text = "client {\n  enabled = true\n  host_volume \"pds\" {\n    path      = \"/data/pds\" # mine\n    read_only = false\n  }\n}\n";
        let patched = ensure_host_volumes(text, &[vol("pds", "/srv/nomad/pds")]).unwrap();
        assert!(!patched.changed);
        assert_eq!(patched.text, text);
        assert_eq!(patched.paths, vec![("pds".into(), "/data/pds".into())]);

        // Only the missing one is added; the user's path is still reported.
        let patched = ensure_host_volumes(text, &pds_and_io()).unwrap();
        assert!(patched.changed);
        assert_eq!(
            patched.paths,
            vec![
                ("pds".into(), "/data/pds".into()),
                ("io".into(), "/srv/nomad/io".into())
            ]
        );
        assert_eq!(patched.text.matches("host_volume \"pds\"").count(), 1);
        assert!(patched
            .text
            .contains("    read_only = false\n  }\n\n  host_volume \"io\" {\n"));
    }

    #[test]
    fn no_client_block_appends_one() {
        let text = "# mine\ndata_dir = \"/opt/nomad/data\"\n";
        let patched = ensure_host_volumes(text, &[vol("pds", "/srv/nomad/pds")]).unwrap();
        assert_eq!(
            patched.text,
            "# mine\ndata_dir = \"/opt/nomad/data\"\n\nclient {\n  enabled = true\n\n  host_volume \"pds\" {\n    path = \"/srv/nomad/pds\"\n    read_only = false\n  }\n}\n"
        );
        assert_idempotent(&patched.text, &[vol("pds", "/srv/nomad/pds")]);

        // Also at the very end of a file without a final newline, and of an empty file.
        let patched = ensure_host_volumes("a = 1", &[vol("pds", "/p")]).unwrap();
        assert!(
            patched.text.starts_with("a = 1\n\nclient {\n"),
            "{}",
            patched.text
        );
        let patched = ensure_host_volumes("", &[vol("pds", "/p")]).unwrap();
        assert!(patched
            .text
            .starts_with("client {\n  enabled = true\n\n  host_volume"));
        // A `client` nested in another block is not the agent's client block.
        let patched =
            ensure_host_volumes("x {\n  client {\n  }\n}\n", &[vol("pds", "/p")]).unwrap();
        assert!(
            patched
                .text
                .starts_with("x {\n  client {\n  }\n}\n\nclient {\n"),
            "{}",
            patched.text
        );
    }

    #[test]
    fn several_client_blocks_use_the_first() {
        let text = "client {\n  enabled = true\n}\n\nclient {\n  host_volume \"io\" {\n    path = \"/io\"\n  }\n}\n";
        let patched = ensure_host_volumes(text, &pds_and_io()).unwrap();
        assert_eq!(
            patched.text,
            "client {\n  enabled = true\n\n  host_volume \"pds\" {\n    path = \"/srv/nomad/pds\"\n    read_only = false\n  }\n}\n\nclient {\n  host_volume \"io\" {\n    path = \"/io\"\n  }\n}\n"
        );
        assert_eq!(patched.paths[1], ("io".into(), "/io".into()));
    }

    #[test]
    fn syntax_error_leaves_the_file_untouched() {
        let err = ensure_host_volumes("client {\n  enabled = \n}\n", &pds_and_io()).unwrap_err();
        let ConfigError::Syntax { line, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*line, 2);
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("left untouched"), "{msg}");
    }

    #[test]
    fn indentation_follows_the_neighbours() {
        let tabs = "client {\n\tenabled = true\n}\n";
        let patched = ensure_host_volumes(tabs, &[vol("pds", "/p")]).unwrap();
        assert_eq!(
            patched.text,
            "client {\n\tenabled = true\n\n\thost_volume \"pds\" {\n\t\tpath = \"/p\"\n\t\tread_only = false\n\t}\n}\n"
        );
        let four = "client {\n    enabled = true\n}\n";
        let patched = ensure_host_volumes(four, &[vol("pds", "/p")]).unwrap();
        assert!(patched.text.contains("\n    host_volume \"pds\" {\n        path = \"/p\"\n        read_only = false\n    }\n}"));
        // An empty client block: no blank line right after `{`.
        let patched = ensure_host_volumes("client {\n}\n", &[vol("pds", "/p")]).unwrap();
        assert_eq!(
            patched.text,
            "client {\n  host_volume \"pds\" {\n    path = \"/p\"\n    read_only = false\n  }\n}\n"
        );
    }

    #[test]
    fn one_line_client_block_is_expanded() {
        let patched =
            ensure_host_volumes("client { enabled = true }\n", &[vol("pds", "/p")]).unwrap();
        assert_eq!(
            patched.text,
            "client {\n  enabled = true\n\n  host_volume \"pds\" {\n    path = \"/p\"\n    read_only = false\n  }\n}\n"
        );
        let patched = ensure_host_volumes("client {}\n", &[vol("pds", "/p")]).unwrap();
        assert_eq!(
            patched.text,
            "client {\n  host_volume \"pds\" {\n    path = \"/p\"\n    read_only = false\n  }\n}\n"
        );
    }

    #[test]
    fn crlf_files_stay_crlf() {
        let lf = OFFICIAL.to_string();
        let crlf = lf.replace('\n', "\r\n");
        let patched = ensure_host_volumes(&crlf, &pds_and_io()).unwrap();
        assert_eq!(
            patched.text,
            ensure_host_volumes(&lf, &pds_and_io())
                .unwrap()
                .text
                .replace('\n', "\r\n")
        );
        assert_idempotent(&patched.text, &pds_and_io());

        let mixed = "a = 1\r\nclient {\n  enabled = true\n}\n";
        let err = ensure_host_volumes(mixed, &pds_and_io()).unwrap_err();
        assert!(matches!(err, ConfigError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("left untouched"));
    }

    #[test]
    fn read_only_and_odd_names_are_written_as_hcl() {
        let volume = HostVolume {
            name: "a \"b\"".into(),
            path: "/srv/${x}".into(),
            read_only: true,
        };
        let patched = ensure_host_volumes(
            "client {\n  enabled = true\n}\n",
            std::slice::from_ref(&volume),
        )
        .unwrap();
        let v: serde_json::Value = hcl::from_str(&patched.text).unwrap();
        assert_eq!(v["client"]["host_volume"]["a \"b\""]["path"], "/srv/${x}");
        assert_eq!(v["client"]["host_volume"]["a \"b\""]["read_only"], true);
        assert_idempotent(&patched.text, &[volume]);
    }

    #[test]
    fn duplicate_requests_are_added_once() {
        let patched =
            ensure_host_volumes("client {\n}\n", &[vol("pds", "/a"), vol("pds", "/b")]).unwrap();
        assert_eq!(patched.text.matches("host_volume").count(), 1);
        assert_eq!(patched.paths, vec![("pds".into(), "/a".into())]);
    }

    const LOOPBACK_TASKS: &str = "  # Task ports on loopback: the PDS is reachable only through the proxy (added by pdsup).\n  network_interface = \"lo\"\n";

    #[test]
    fn official_config_gets_loopback_task_ports_once() {
        assert_eq!(task_interface(OFFICIAL), TaskInterface::Unset);
        let patched = ensure_loopback_tasks(OFFICIAL).unwrap();
        assert!(patched.changed);
        assert_eq!(
            patched.text,
            OFFICIAL.replace(
                "  servers = [\"127.0.0.1\"]\n}",
                &format!("  servers = [\"127.0.0.1\"]\n\n{LOOPBACK_TASKS}}}")
            )
        );
        assert_eq!(task_interface(&patched.text), TaskInterface::Loopback);
        assert!(!ensure_loopback_tasks(&patched.text).unwrap().changed);
        // The host volumes follow it, and the two patches together are idempotent.
        let both = ensure_host_volumes(&patched.text, &pds_and_io()).unwrap();
        assert!(both
            .text
            .contains(&format!("{LOOPBACK_TASKS}\n  host_volume \"pds\" {{")));
        assert_idempotent(&both.text, &pds_and_io());
        assert!(!ensure_loopback_tasks(&both.text).unwrap().changed);
        hcl::parse(&both.text).expect("valid HCL");
    }

    #[test]
    fn loopback_task_ports_go_before_volumes_and_into_one_line_clients() {
        let patched = ensure_loopback_tasks(DROPLET_SUPERPOWERS).unwrap();
        assert!(
            patched.text.contains(&format!(
                "  servers = [\"127.0.0.1\"]\n\n{LOOPBACK_TASKS}\n  host_volume \"io\" {{"
            )),
            "{}",
            patched.text
        );
        let oneline = ensure_loopback_tasks("client { enabled = true }\n").unwrap();
        assert_eq!(
            oneline.text,
            format!("client {{\n  enabled = true\n\n{LOOPBACK_TASKS}}}\n")
        );
        let crlf = OFFICIAL.replace('\n', "\r\n");
        let patched = ensure_loopback_tasks(&crlf).unwrap();
        assert_eq!(
            patched.text.matches('\n').count(),
            patched.text.matches("\r\n").count()
        );
        assert_eq!(task_interface(&patched.text), TaskInterface::Loopback);
    }

    #[test]
    fn a_chosen_interface_or_a_file_without_client_is_left_alone() {
        let eth0 = "client {\n  enabled = true\n  network_interface = \"eth0\"\n}\n";
        assert_eq!(task_interface(eth0), TaskInterface::Other("eth0".into()));
        assert!(!ensure_loopback_tasks(eth0).unwrap().changed);
        assert!(
            !ensure_loopback_tasks("data_dir = \"/x\"\n")
                .unwrap()
                .changed
        );
        assert_eq!(
            task_interface(&fresh_config(&pds_and_io())),
            TaskInterface::Loopback
        );
    }

    #[test]
    fn http_loopback_detection() {
        assert!(!http_listens_on_loopback(OFFICIAL));
        assert!(
            !http_listens_on_loopback("data_dir = \"/x\"\n"),
            "default bind_addr is 0.0.0.0"
        );
        assert!(http_listens_on_loopback("bind_addr = \"127.0.0.1\"\n"));
        assert!(http_listens_on_loopback(
            "bind_addr = \"0.0.0.0\"\naddresses {\n  http = \"127.0.0.1\"\n}\n"
        ));
        assert!(http_listens_on_loopback(
            "addresses {\n  http = \"127.0.0.1 ::1\"\n}\n"
        ));
        assert!(!http_listens_on_loopback(
            "addresses {\n  http = \"127.0.0.1 10.0.0.5\"\n}\n"
        ));
        assert!(!http_listens_on_loopback(
            "bind_addr = \"127.0.0.1\"\naddresses {\n  http = \"0.0.0.0\"\n}\n"
        ));
        assert!(http_listens_on_loopback(
            "addresses {\n  rpc = \"0.0.0.0\"\n}\nbind_addr = \"localhost\"\n"
        ));
        assert!(!http_listens_on_loopback(
            "bind_addr = \"{{ GetPrivateIP }}\"\n"
        ));
        assert!(!http_listens_on_loopback("bind_addr = \n"));
        // Only top-level settings count; the last `addresses` block wins.
        assert!(http_listens_on_loopback(
            "x {\n  bind_addr = \"0.0.0.0\"\n}\nbind_addr = \"127.0.0.1\"\n"
        ));
        assert!(http_listens_on_loopback(
            "addresses {\n  http = \"0.0.0.0\"\n}\naddresses {\n  http = \"127.0.0.1\"\n}\n"
        ));
    }

    #[test]
    fn systemd_unit_matches_the_official_package() {
        let unit = systemd_unit();
        for line in [
            "[Unit]",
            "Wants=network-online.target",
            "After=network-online.target",
            "[Service]",
            "User=root",
            "Group=root",
            "Type=notify",
            "EnvironmentFile=-/etc/nomad.d/nomad.env",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "ExecStart=/usr/local/bin/nomad agent -config /etc/nomad.d",
            "KillMode=process",
            "KillSignal=SIGINT",
            "LimitNOFILE=65536",
            "LimitNPROC=infinity",
            "TasksMax=infinity",
            "Restart=on-failure",
            "RestartSec=2",
            "OOMScoreAdjust=-1000",
            "[Install]",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
        assert!(!unit.contains("/usr/bin/nomad"));
    }
}

/// Property tests: random valid configs (comments of every kind, blank lines,
/// alignment, nested and one-line blocks, heredocs, indentation styles, zero to
/// two `client` blocks holding existing host volumes) patched with random volumes.
#[cfg(test)]
mod props {
    use std::collections::HashSet;

    use proptest::collection::vec;
    use proptest::prelude::*;
    use similar::{ChangeTag, TextDiff};

    use super::*;

    #[derive(Clone, Debug)]
    enum Item {
        Blank,
        /// A whole line: `# ..`, `// ..` or `/* .. */`.
        Comment(String),
        Attr {
            key: String,
            /// Spaces before `=` (alignment).
            pad: usize,
            value: String,
            trailing: String,
        },
        Block {
            ident: String,
            labels: Vec<String>,
            open: String,
            items: Vec<Item>,
            close: String,
            oneline: bool,
        },
    }

    #[derive(Clone, Debug)]
    struct Config {
        unit: String,
        pre: Vec<Item>,
        clients: Vec<Vec<Item>>,
        client_open: String,
        mid: Vec<Item>,
        post: Vec<Item>,
    }

    fn comment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,24}".prop_map(|t| format!("#{t}")),
            "[ -~]{0,24}".prop_map(|t| format!("//{t}")),
            "[a-z ]{0,12}".prop_map(|t| format!("/*{t}*/")),
            ("[a-z ]{0,8}", "[a-z ]{0,8}").prop_map(|(a, b)| format!("/* {a}\n{b} */")),
        ]
    }

    fn trailing() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just(String::new()),
            1 => "[ \t]{1,3}",
            1 => "[ -~]{0,16}".prop_map(|t| format!(" # {t}")),
            1 => "[ -~]{0,16}".prop_map(|t| format!(" // {t}")),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9/._ -]{0,16}".prop_map(|s| format!("\"{s}\"")),
            "[0-9]{1,5}",
            Just("true".to_string()),
            Just("false".to_string()),
            vec("[a-z0-9.]{1,9}", 0..3).prop_map(|v| format!(
                "[{}]",
                v.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            "[a-z ]{0,12}".prop_map(|s| format!("<<EOT\n{s}\nEOT")),
        ]
    }

    const KEYS: &[&str] = &[
        "enabled",
        "servers",
        "data_dir",
        "name",
        "region",
        "log_level",
        "node_class",
        "cpu_total_compute",
        "gc_interval",
        "datacenter",
        "path",
        "read_only",
    ];
    const IDENTS: &[&str] = &[
        "server",
        "meta",
        "options",
        "plugin",
        "config",
        "telemetry",
        "acl",
        "addresses",
        "reserved",
    ];

    fn attr() -> impl Strategy<Value = Item> {
        (
            proptest::sample::select(KEYS),
            0..4usize,
            value(),
            trailing(),
        )
            .prop_map(|(key, pad, value, trailing)| Item::Attr {
                key: key.to_string(),
                pad,
                value,
                trailing,
            })
    }

    fn leaf() -> impl Strategy<Value = Item> {
        prop_oneof![2 => Just(Item::Blank), 2 => comment().prop_map(Item::Comment), 4 => attr()]
    }

    fn item() -> impl Strategy<Value = Item> {
        leaf().prop_recursive(3, 24, 5, |inner| {
            (
                proptest::sample::select(IDENTS),
                vec("[a-z]{1,6}", 0..2),
                trailing(),
                vec(inner, 0..5),
                trailing(),
                any::<bool>(),
            )
                .prop_map(|(ident, labels, open, items, close, oneline)| Item::Block {
                    ident: ident.to_string(),
                    labels,
                    open,
                    items,
                    close,
                    oneline,
                })
        })
    }

    fn host_volume() -> impl Strategy<Value = Item> {
        (
            proptest::sample::select(&["pds", "io", "logs", "data"][..]),
            "/[a-z]{1,6}/[a-z]{1,6}",
            any::<bool>(),
            trailing(),
            0..3usize,
        )
            .prop_map(|(name, path, ro, close, pad)| Item::Block {
                ident: "host_volume".into(),
                labels: vec![name.to_string()],
                open: String::new(),
                items: vec![
                    Item::Attr {
                        key: "path".into(),
                        pad,
                        value: format!("\"{path}\""),
                        trailing: String::new(),
                    },
                    Item::Attr {
                        key: "read_only".into(),
                        pad: 0,
                        value: ro.to_string(),
                        trailing: String::new(),
                    },
                ],
                close,
                oneline: false,
            })
    }

    fn client_body() -> impl Strategy<Value = Vec<Item>> {
        vec(
            prop_oneof![3 => leaf(), 1 => item(), 2 => host_volume()],
            0..8,
        )
    }

    fn config() -> impl Strategy<Value = Config> {
        (
            proptest::sample::select(&["  ", "    ", "\t"][..]),
            vec(item(), 0..6),
            prop_oneof![1 => Just(0usize), 4 => Just(1usize), 1 => Just(2usize)],
            client_body(),
            client_body(),
            trailing(),
            vec(item(), 0..4),
            vec(item(), 0..4),
        )
            .prop_map(|(unit, pre, n, c1, c2, client_open, mid, post)| Config {
                unit: unit.to_string(),
                pre,
                clients: [c1, c2].into_iter().take(n).collect(),
                client_open,
                mid,
                post,
            })
    }

    fn requested() -> impl Strategy<Value = Vec<HostVolume>> {
        vec(
            (
                proptest::sample::select(&["pds", "io", "data", "web"][..]),
                "/srv/[a-z]{1,8}",
                any::<bool>(),
            ),
            0..4,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(name, path, read_only)| HostVolume {
                    name: name.to_string(),
                    path,
                    read_only,
                })
                .collect()
        })
    }

    /// Renders items; attribute keys are kept unique per body and host volume
    /// names unique per file (`volumes` collects them), as Nomad requires.
    fn render(
        items: &[Item],
        depth: usize,
        unit: &str,
        keys: &mut HashSet<String>,
        volumes: &mut Vec<(String, String)>,
        out: &mut String,
    ) {
        let indent = unit.repeat(depth);
        for item in items {
            match item {
                Item::Blank => out.push('\n'),
                Item::Comment(c) => out.push_str(&format!("{indent}{c}\n")),
                Item::Attr {
                    key,
                    pad,
                    value,
                    trailing,
                } => {
                    if keys.insert(key.clone()) {
                        let pad = " ".repeat(*pad);
                        out.push_str(&format!("{indent}{key}{pad} = {value}{trailing}\n"));
                    }
                }
                Item::Block {
                    ident,
                    labels,
                    open,
                    items,
                    close,
                    oneline,
                } => {
                    if ident == "host_volume" {
                        if volumes.iter().any(|(name, _)| *name == labels[0]) {
                            continue;
                        }
                        let path = match &items[0] {
                            Item::Attr { value, .. } => value.trim_matches('"').to_string(),
                            _ => unreachable!(),
                        };
                        volumes.push((labels[0].clone(), path));
                    }
                    let head: String = std::iter::once(ident.clone())
                        .chain(labels.iter().map(|l| format!("\"{l}\"")))
                        .collect::<Vec<_>>()
                        .join(" ");
                    let single = match items.as_slice() {
                        [Item::Attr { key, value, .. }] if *oneline && !value.contains('\n') => {
                            Some(format!("{key} = {value}"))
                        }
                        [] if *oneline => Some(String::new()),
                        _ => None,
                    };
                    match single {
                        Some(body) if body.is_empty() => {
                            out.push_str(&format!("{indent}{head} {{}}{close}\n"))
                        }
                        Some(body) => {
                            out.push_str(&format!("{indent}{head} {{ {body} }}{close}\n"))
                        }
                        None => {
                            out.push_str(&format!("{indent}{head} {{{open}\n"));
                            render(items, depth + 1, unit, &mut HashSet::new(), volumes, out);
                            out.push_str(&format!("{indent}}}{close}\n"));
                        }
                    }
                }
            }
        }
    }

    /// The text and the host volumes it declares inside `client` blocks.
    fn render_config(c: &Config) -> (String, Vec<(String, String)>) {
        let mut out = String::new();
        let mut volumes = Vec::new();
        let mut other_volumes = Vec::new();
        let mut keys = HashSet::new();
        render(&c.pre, 0, &c.unit, &mut keys, &mut other_volumes, &mut out);
        for (i, client) in c.clients.iter().enumerate() {
            let open = if i == 0 { c.client_open.as_str() } else { "" };
            out.push_str(&format!("client {{{open}\n"));
            render(
                client,
                1,
                &c.unit,
                &mut HashSet::new(),
                &mut volumes,
                &mut out,
            );
            out.push_str("}\n");
            let after = if i == 0 { &c.mid } else { &c.post };
            render(after, 0, &c.unit, &mut keys, &mut other_volumes, &mut out);
        }
        if c.clients.len() < 2 {
            render(&c.post, 0, &c.unit, &mut keys, &mut other_volumes, &mut out);
        }
        (out, volumes)
    }

    fn client_volume_labels(text: &str) -> Vec<Vec<String>> {
        let body = hcl::edit::parser::parse_body(text).unwrap();
        body.get_blocks("client")
            .map(|client| {
                client
                    .body
                    .get_blocks("host_volume")
                    .map(|b| b.labels[0].as_str().to_string())
                    .collect()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn patching_keeps_every_other_byte(c in config(), wanted in requested()) {
            let (original, existing) = render_config(&c);
            let had_client = !c.clients.is_empty();
            prop_assert!(hcl::edit::parser::parse_body(&original).is_ok(), "generated invalid HCL:\n{}", &original);

            let patched = ensure_host_volumes(&original, &wanted).unwrap();

            // The result is valid HCL, for the editor and for the plain parser.
            prop_assert!(hcl::parse(&patched.text).is_ok(), "does not parse:\n{}", patched.text);

            // Each requested volume exactly once inside `client`; new ones in the first block.
            let labels = client_volume_labels(&patched.text);
            let mut missing = false;
            for v in &wanted {
                let count = labels.iter().flatten().filter(|l| **l == v.name).count();
                prop_assert_eq!(count, 1, "{} in:\n{}", &v.name, &patched.text);
                match existing.iter().find(|(name, _)| *name == v.name) {
                    Some((_, path)) => {
                        let reported = patched.paths.iter().find(|(n, _)| *n == v.name).map(|(_, p)| p);
                        prop_assert_eq!(reported, Some(path));
                    }
                    None => {
                        missing = true;
                        prop_assert!(labels[0].contains(&v.name));
                    }
                }
            }
            prop_assert_eq!(patched.changed, missing);
            if !missing {
                prop_assert_eq!(&patched.text, &original);
            }

            // Removing the inserted lines gives back the original, byte for byte.
            let names: Vec<&str> = wanted.iter().map(|v| v.name.as_str()).collect();
            let diff = TextDiff::from_lines(&original, &patched.text);
            let mut kept = String::new();
            for change in diff.iter_all_changes() {
                match change.tag() {
                    ChangeTag::Equal => kept.push_str(change.value()),
                    ChangeTag::Delete => prop_assert!(false, "deleted {:?} in:\n{}", change.value(), &patched.text),
                    ChangeTag::Insert => {
                        let line = change.value().trim();
                        let ok = line.is_empty()
                            || line == "}"
                            || line.starts_with("path = \"/srv/")
                            || line == "read_only = false"
                            || line == "read_only = true"
                            || names.iter().any(|n| line == format!("host_volume \"{n}\" {{"))
                            || (!had_client && (line == "client {" || line == "enabled = true"));
                        prop_assert!(ok, "unexpected inserted line {:?} in:\n{}", change.value(), &patched.text);
                    }
                }
            }
            prop_assert_eq!(&kept, &original);

            // A second run changes nothing.
            let again = ensure_host_volumes(&patched.text, &wanted).unwrap();
            prop_assert!(!again.changed);
            prop_assert_eq!(&again.text, &patched.text);
            prop_assert_eq!(&again.paths, &patched.paths);
        }

        #[test]
        fn invalid_configs_are_refused_not_rewritten(c in config(), cut in 0usize..400, wanted in requested()) {
            let (original, _) = render_config(&c);
            // Cutting a config anywhere usually breaks it; when it does, the error says so.
            let cut = original.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(original.len());
            let broken = format!("{}{{\n", &original[..cut]);
            if hcl::edit::parser::parse_body(&broken).is_err() {
                let err = ensure_host_volumes(&broken, &wanted).unwrap_err();
                prop_assert!(matches!(err, ConfigError::Syntax { .. }), "{}", err);
                prop_assert!(err.to_string().contains("left untouched"));
            }
        }
    }

    /// The generator does produce what the properties are about.
    #[test]
    fn generator_covers_the_interesting_cases() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut comments, mut existing, mut no_client, mut two_clients, mut heredocs, mut oneline) =
            (0, 0, 0, 0, 0, 0);
        for _ in 0..300 {
            let c = config().new_tree(&mut runner).unwrap().current();
            let (text, volumes) = render_config(&c);
            assert!(
                hcl::edit::parser::parse_body(&text).is_ok(),
                "generated invalid HCL:\n{text}"
            );
            comments += usize::from(text.contains('#') || text.contains("//"));
            existing += usize::from(!volumes.is_empty());
            no_client += usize::from(c.clients.is_empty());
            two_clients += usize::from(c.clients.len() == 2);
            heredocs += usize::from(text.contains("<<EOT"));
            oneline += usize::from(text.lines().any(|l| l.ends_with(" }") && l.contains(" { ")));
        }
        for (what, n) in [
            ("comments", comments),
            ("existing volumes", existing),
            ("no client", no_client),
            ("two clients", two_clients),
            ("heredocs", heredocs),
            ("one-line blocks", oneline),
        ] {
            assert!(n >= 10, "only {n} configs with {what}");
        }
    }
}
