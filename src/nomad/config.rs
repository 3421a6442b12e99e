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
    // hcl-edit keeps comments and spacing but writes "\n" after each structure;
    // a file with CRLF line endings throughout is edited as LF and converted back.
    let (bom, rest) = match existing.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", existing),
    };
    let crlf = rest.contains("\r\n") && rest.matches('\n').count() == rest.matches("\r\n").count();
    let text: Cow<str> = if crlf { Cow::Owned(rest.replace("\r\n", "\n")) } else { Cow::Borrowed(rest) };

    let mut body: Body = hcl::edit::parser::parse_body(&text).map_err(|e| syntax_error(&e))?;
    if body.to_string() != *text {
        let why = if rest.contains('\r') { "it mixes line endings" } else { "the HCL editor does not reproduce it exactly" };
        return Err(ConfigError::Unsupported(why.into()));
    }

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

    let client = body.iter().position(|s| s.as_block().is_some_and(|b| b.has_ident("client")));
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

/// Inserts the blocks after the client's last `host_volume` (or at the end of
/// its body), indented like the structure they follow.
fn add_to_client(body: &mut Body, index: usize, volumes: &[&HostVolume]) {
    let outer = body.get(index).map(|s| last_line_indent(prefix(s))).unwrap_or_default();
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
        let before = decor.prefix().map(|p| p.trim_start().to_string()).unwrap_or_default();
        let after = decor.suffix().map(|s| s.trim_end().to_string()).unwrap_or_default();
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
    let mut enabled = Attribute::new(Decorated::new(Ident::new("enabled")), Expression::from(true));
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
    last.chars().take_while(|c| *c == ' ' || *c == '\t').collect()
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
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod scratch {
    use super::*;
    #[test]
    fn show() {
        let v = vec![
            HostVolume { name: "pds".into(), path: "/srv/nomad/pds".into(), read_only: false },
            HostVolume { name: "io".into(), path: "/srv/nomad/io".into(), read_only: false },
        ];
        println!("=====FRESH\n{}=====", fresh_config(&v));
        let official = "# Full configuration options can be found at https://www.nomadproject.io/docs/configuration\n\ndata_dir  = \"/opt/nomad/data\"\nbind_addr = \"0.0.0.0\"\n\nserver {\n  # license_path is required as of Nomad v1.1.1+\n  #license_path = \"/opt/nomad/license.hclic\"\n  enabled          = true\n  bootstrap_expect = 1\n}\n\nclient {\n  enabled = true\n  servers = [\"127.0.0.1\"]\n}\n";
        println!("=====OFFICIAL\n{}=====", ensure_host_volumes(official, &v).unwrap().text);
        let ds = "data_dir  = \"/opt/nomad/data\"\nbind_addr = \"0.0.0.0\"\n\nserver {\n  enabled          = true\n  bootstrap_expect = 1\n  heartbeat_grace  = \"1m\"\n}\n\nclient {\n  enabled = true\n  servers = [\"127.0.0.1\"]\n\n  host_volume \"io\" {\n    path = \"/srv/nomad/io\"\n    read_only = false\n  }\n}\n\n";
        println!("=====DS\n{}=====", ensure_host_volumes(ds, &v).unwrap().text);
        for s in ["client { enabled = true }\n", "client {}", "a = 1", "# only\n", "", "server {\n\tenabled = true\n}\nclient {\n\tenabled = true\n}\n", "x {\n  client {\n    a = 1\n  }\n}\n"] {
            println!("=====\n{}=====", ensure_host_volumes(s, &v).unwrap().text);
        }
        println!("{}", ensure_host_volumes("client {\n  a = \n}\n", &v).unwrap_err());
    }
}
