//! `pdsup dns [--check]`: the DNS records the site needs (the dns step's rules,
//! `steps::dns::records`), and whether each one resolves as it should, asked
//! through a real resolver: the system's (`/etc/resolv.conf`) or a given
//! server (`--resolver ADDR`).
//!
//! [`check_records`] is the part `pdsup status` can call: records in, one
//! [`Checked`] per record out, no output of its own.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};
use serde::Serialize;

use super::site::Site;
use super::{Output, Reported};
use crate::error::{bail, err, Result};
use crate::host::ssh::SshOptions;
use crate::steps::dns::{self as dns_step, Record};

/// The label asked under the hostname to see whether `*.<hostname>` resolves:
/// any name no one would define by hand.
pub const WILDCARD_PROBE: &str = "pdsup-wildcard-check";

/// What the resolver said about one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Resolves to the expected value and nothing else.
    Right,
    /// No such name, or no record of that type.
    Missing,
    /// Resolves, to something else (or to more than the expected value).
    Wrong,
    /// The lookup itself failed (timeout, refused, no resolver).
    Failed,
    /// The expected value is not known (no account yet, no public address).
    Unknown,
}

/// One record and what was found for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checked {
    #[serde(flatten)]
    pub record: Record,
    pub state: State,
    /// The values found (addresses, or `did=` TXT strings), sorted.
    pub found: Vec<String>,
    /// Why the lookup failed, or why it could not be made.
    pub error: Option<String>,
}

impl Checked {
    pub fn is_right(&self) -> bool {
        self.state == State::Right
    }
}

/// `--resolver ADDR`: an IP address (port 53) or `IP:PORT` (`[v6]:PORT`).
pub fn parse_resolver(text: &str) -> Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    bail!(
        BadInput,
        "--resolver {text:?}: expected a DNS server's IP address, optionally with a port \
         (1.1.1.1, 127.0.0.1:5353, [2606:4700:4700::1111]:53)"
    )
}

/// A resolver: the given server's, or the system's.
pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver> {
    let builder = match server {
        Some(addr) => {
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| {
            err!(
                Local,
                "cannot read this machine's resolver configuration: {e}; pass --resolver ADDR"
            )
        })?,
    };
    let mut builder = builder;
    let options: &mut ResolverOpts = builder.options_mut();
    // A fresh answer each time: the point is to see a record just added.
    options.cache_size = 0;
    options.attempts = 2;
    Ok(builder.build())
}

/// The name to ask for a record: the wildcard is probed through one label under it.
pub fn query_name(record: &Record) -> String {
    match record.name.strip_prefix("*.") {
        Some(parent) => format!("{WILDCARD_PROBE}.{parent}"),
        None => record.name.clone(),
    }
}

/// The value a record must resolve to; `None` while it is a placeholder.
fn expected_value(record: &Record) -> Option<String> {
    let value = match record.kind {
        "TXT" => record.value.trim_matches('"').to_string(),
        _ => record.value.clone(),
    };
    if value.contains('<') {
        None
    } else {
        Some(value)
    }
}

/// How a lookup ended, for [`judge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Vec<String>),
    NotFound,
    Failed(String),
}

/// The verdict on one record from what the lookup found (pure).
///
/// An A record is right when the name resolves to the address and nothing
/// else (a second address would send some visitors elsewhere). A TXT record
/// counts only `did=` strings, and is right when there is exactly one and it
/// is the expected one: atproto refuses a handle with several.
pub fn judge(record: &Record, lookup: Lookup) -> Checked {
    let mut checked = Checked {
        record: record.clone(),
        state: State::Unknown,
        found: Vec::new(),
        error: None,
    };
    let Some(expected) = expected_value(record) else {
        checked.error = Some(format!(
            "the expected value is not known yet: {}",
            record.value
        ));
        return checked;
    };
    match lookup {
        Lookup::Failed(why) => {
            checked.state = State::Failed;
            checked.error = Some(why);
        }
        Lookup::NotFound => checked.state = State::Missing,
        Lookup::Found(values) => {
            let relevant: BTreeSet<String> = values
                .into_iter()
                .filter(|v| record.kind != "TXT" || v.starts_with("did="))
                .collect();
            checked.found = relevant.iter().cloned().collect();
            checked.state = if relevant.is_empty() {
                State::Missing
            } else if relevant.len() == 1 && relevant.contains(&expected) {
                State::Right
            } else {
                State::Wrong
            };
        }
    }
    checked
}

fn lookup_result<T>(
    result: std::result::Result<T, ResolveError>,
    values: impl Fn(T) -> Vec<String>,
) -> Lookup {
    match result {
        Ok(found) => Lookup::Found(values(found)),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Lookup::NotFound,
        Err(e) => Lookup::Failed(e.to_string()),
    }
}

/// Asks `resolver` for each record, one after the other, and judges it.
pub async fn check_records(resolver: &TokioResolver, records: &[Record]) -> Vec<Checked> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        // A fully qualified name: no search domain from resolv.conf is tried.
        let name = format!("{}.", query_name(record));
        let lookup = match record.kind {
            "A" => lookup_result(resolver.ipv4_lookup(name).await, |found| {
                found
                    .iter()
                    .map(|a| Ipv4Addr::from(*a).to_string())
                    .collect()
            }),
            "TXT" => lookup_result(resolver.txt_lookup(name).await, |found| {
                found
                    .iter()
                    .map(|txt| {
                        txt.txt_data()
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect::<String>()
                    })
                    .collect()
            }),
            other => Lookup::Failed(format!("pdsup does not check {other} records")),
        };
        out.push(judge(record, lookup));
    }
    out
}

/// The site's records: its address from DEST when that is a public IP (no
/// connection), else from the droplet itself over SSH.
pub async fn site_records(
    site: &Site,
    dest: Option<&str>,
    options: impl FnOnce() -> Result<SshOptions>,
) -> Result<Vec<Record>> {
    let destination = site.destination(dest)?;
    let public_ip = match destination.host.parse::<IpAddr>() {
        Ok(ip) if dns_step::is_public(&ip) => Some(ip.to_string()),
        _ => {
            let host = crate::host::ssh::SshHost::connect(&destination, &options()?).await?;
            dns_step::public_ipv4()
                .read(&host)
                .await?
                .map(|ip| ip.to_string())
        }
    };
    let facts = dns_step::Facts {
        public_ip,
        did: site.record.account_did.clone(),
    };
    Ok(dns_step::records(&facts, &site.settings))
}

/// `pdsup dns`: prints the records; with `check`, their state, and an error
/// (exit code of `Unhealthy`) when any is not right.
pub async fn show(
    records: Vec<Record>,
    check: Option<Option<SocketAddr>>,
    output: Output,
) -> Result<()> {
    let Some(server) = check else {
        if output.json {
            let doc = serde_json::json!({ "ok": true, "records": records });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            println!("Add these DNS records at your DNS provider:");
            for record in &records {
                println!("  {record}");
            }
        }
        return Ok(());
    };
    let resolver = resolver(server)?;
    let checked = check_records(&resolver, &records).await;
    let wrong = checked.iter().filter(|c| !c.is_right()).count();
    if output.json {
        let doc = serde_json::json!({ "ok": wrong == 0, "records": checked });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render_checked(&checked));
    }
    if wrong == 0 {
        return Ok(());
    }
    let err = err!(
        Unhealthy,
        "{wrong} of {} DNS records are not right",
        checked.len()
    )
    .with_hint(
        "add or correct them at your DNS provider (`pdsup dns` lists them); new records can \
         take a while to appear, depending on their TTL",
    );
    Err(if output.json {
        Reported::wrap(err)
    } else {
        err
    })
}

/// One line per record: its state, the record, and what was found instead.
pub fn render_checked(checked: &[Checked]) -> String {
    let mut text = String::new();
    for c in checked {
        let state = match c.state {
            State::Right => "right",
            State::Missing => "MISSING",
            State::Wrong => "WRONG",
            State::Failed => "FAILED",
            State::Unknown => "UNKNOWN",
        };
        text.push_str(&format!("{state:<8} {}", c.record));
        if c.state == State::Wrong {
            text.push_str(&format!("  (found: {})", c.found.join(", ")));
        }
        if let Some(why) = &c.error {
            text.push_str(&format!("  ({why})"));
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: &str, value: &str) -> Record {
        Record {
            kind: "A",
            name: name.into(),
            value: value.into(),
        }
    }

    fn txt(name: &str, did: &str) -> Record {
        Record {
            kind: "TXT",
            name: name.into(),
            value: format!("\"did={did}\""),
        }
    }

    fn found(values: &[&str]) -> Lookup {
        Lookup::Found(values.iter().map(|v| v.to_string()).collect())
    }

    #[test]
    fn resolver_addresses_take_a_default_port() {
        let table = [
            ("1.1.1.1", "1.1.1.1:53"),
            ("127.0.0.1:5353", "127.0.0.1:5353"),
            ("::1", "[::1]:53"),
            ("[2606:4700:4700::1111]:53", "[2606:4700:4700::1111]:53"),
        ];
        for (text, want) in table {
            assert_eq!(parse_resolver(text).unwrap().to_string(), want, "{text}");
        }
        for bad in [
            "",
            "dns.google",
            "1.1.1.1:",
            "1.1.1.1:99999",
            "127.0.0.1 53",
        ] {
            let e = parse_resolver(bad).unwrap_err();
            assert!(e.to_string().contains("--resolver"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_wildcard_is_probed_through_a_label_under_it() {
        assert_eq!(
            query_name(&a("*.pds.example.com", "203.0.113.7")),
            "pdsup-wildcard-check.pds.example.com"
        );
        assert_eq!(
            query_name(&a("pds.example.com", "203.0.113.7")),
            "pds.example.com"
        );
    }

    #[test]
    fn verdicts_on_a_records() {
        let record = a("pds.example.com", "203.0.113.7");
        let table = [
            (found(&["203.0.113.7"]), State::Right),
            (found(&["203.0.113.7", "203.0.113.7"]), State::Right),
            (found(&["198.51.100.9"]), State::Wrong),
            (found(&["203.0.113.7", "198.51.100.9"]), State::Wrong),
            (found(&[]), State::Missing),
            (Lookup::NotFound, State::Missing),
            (Lookup::Failed("timed out".into()), State::Failed),
        ];
        for (lookup, want) in table {
            let shown = format!("{lookup:?}");
            assert_eq!(judge(&record, lookup).state, want, "{shown}");
        }
        let wrong = judge(&record, found(&["198.51.100.9"]));
        assert_eq!(wrong.found, vec!["198.51.100.9"]);
        let failed = judge(&record, Lookup::Failed("connection refused".into()));
        assert_eq!(failed.error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn verdicts_on_txt_records_count_only_did_strings() {
        let record = txt("_atproto.alice.example.com", "did:plc:abc");
        let table = [
            (found(&["did=did:plc:abc"]), State::Right),
            (found(&["did=did:plc:abc", "v=spf1 -all"]), State::Right),
            (found(&["did=did:plc:other"]), State::Wrong),
            (
                found(&["did=did:plc:abc", "did=did:plc:other"]),
                State::Wrong,
            ),
            (found(&["v=spf1 -all"]), State::Missing),
            (Lookup::NotFound, State::Missing),
        ];
        for (lookup, want) in table {
            let shown = format!("{lookup:?}");
            assert_eq!(judge(&record, lookup).state, want, "{shown}");
        }
        assert_eq!(
            judge(&record, found(&["did=did:plc:other", "v=spf1"])).found,
            vec!["did=did:plc:other"]
        );
    }

    #[test]
    fn placeholders_cannot_be_checked() {
        let unknown_ip = a("pds.example.com", "<droplet's public IPv4>");
        let c = judge(&unknown_ip, found(&["203.0.113.7"]));
        assert_eq!(c.state, State::Unknown);
        assert!(c.error.unwrap().contains("not known"));
        let unknown_did = txt("_atproto.alice.example.com", "<the account's DID>");
        assert_eq!(judge(&unknown_did, Lookup::NotFound).state, State::Unknown);
    }

    #[test]
    fn the_report_names_each_state_and_what_was_found() {
        let checked = vec![
            judge(
                &a("pds.example.com", "203.0.113.7"),
                found(&["203.0.113.7"]),
            ),
            judge(&a("*.pds.example.com", "203.0.113.7"), Lookup::NotFound),
            judge(
                &txt("_atproto.alice.com", "did:plc:abc"),
                found(&["did=did:plc:old"]),
            ),
        ];
        let text = render_checked(&checked);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("right ") && lines[0].contains("pds.example.com"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("MISSING") && lines[1].contains("*.pds.example.com"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("WRONG") && lines[2].ends_with("(found: did=did:plc:old)"),
            "{text}"
        );
        let json = serde_json::to_value(&checked[2]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "TXT",
                "name": "_atproto.alice.com",
                "value": "\"did=did:plc:abc\"",
                "state": "wrong",
                "found": ["did=did:plc:old"],
                "error": null,
            })
        );
    }
}
