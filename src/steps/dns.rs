//! DNS: the records to add, printed at the end. They follow the proxy:
//!
//! - **IO** gets a certificate for the hostname only, so handles are verified
//!   by DNS: `A <hostname>` and `TXT _atproto.<handle> "did=<did>"` for the
//!   account (its handle under the hostname, and its custom domain if any),
//!   as the seed article does. No wildcard: IO would not serve it.
//! - **Caddy** gets certificates on demand for `*.<hostname>`, so handles under
//!   the hostname are verified over HTTPS: `A <hostname>`, `A *.<hostname>`,
//!   and `TXT _atproto.<domain>` for a custom-domain handle.
//!
//! The address is DEST when that is a public IP; otherwise the droplet says:
//! DigitalOcean's metadata service first, then its default route's source.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::Result;

use super::{Ctx, StepId, StepPlan};
use crate::host::facts::Fact;
use crate::host::Script;
use crate::inputs::Handle;
use crate::settings::{Proxy, Settings};

pub const ID: StepId = StepId::new("dns", "dns");

/// DigitalOcean's metadata service: the droplet's public IPv4.
pub const DO_METADATA_IPV4: &str =
    "http://169.254.169.254/metadata/v1/interfaces/public/0/ipv4/address";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub kind: &'static str,
    pub name: String,
    pub value: String,
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<4} {:<40} {}", self.kind, self.name, self.value)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub public_ip: Option<String>,
    pub did: Option<String>,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts::default()
    }
}

/// The droplet's own view of its public IPv4, in one round trip: the metadata
/// service (asked only on a DigitalOcean droplet, with a short timeout, so
/// that other machines do not wait for it), then the default route's source.
pub fn public_ipv4() -> Fact<Option<Ipv4Addr>> {
    Fact::new(
        Script::of(
            r#"if [ "$(cat /sys/class/dmi/id/sys_vendor 2>/dev/null)" = DigitalOcean ] && command -v curl >/dev/null; then
  printf 'metadata=%s\n' "$(curl -fsS --connect-timeout 1 --max-time 2 {} 2>/dev/null)"
fi
printf 'route=%s\n' "$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')""#,
            &[DO_METADATA_IPV4],
        ),
        |out| parse_public_ipv4(&out.stdout_str()),
    )
}

/// Reads [`public_ipv4`]'s output: the metadata service's address when it is
/// one, else the default route's (which may be private behind NAT).
pub fn parse_public_ipv4(text: &str) -> Option<Ipv4Addr> {
    let value = |key: &str| {
        text.lines()
            .filter_map(|line| line.strip_prefix(key))
            .find_map(|v| v.trim().parse::<Ipv4Addr>().ok())
    };
    value("metadata=")
        .filter(|ip| is_public(&IpAddr::V4(*ip)))
        .or_else(|| value("route="))
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let from_dest = ctx
        .destination_host
        .as_deref()
        .and_then(|h| h.parse::<IpAddr>().ok())
        .filter(is_public);
    let public_ip = match from_dest {
        Some(ip) => Some(ip.to_string()),
        None => ctx.read(&public_ipv4()).await?.map(|ip| ip.to_string()),
    };
    let facts = Facts {
        public_ip,
        did: ctx.outcome.account.as_ref().map(|a| a.did.clone()),
    };
    ctx.outcome.dns_records = records(&facts, ctx.settings);
    Ok(facts)
}

/// Whether an address can be a DNS record's value (not private, loopback, CGNAT, ...).
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => !v6.is_loopback(),
    }
}

pub fn records(facts: &Facts, settings: &Settings) -> Vec<Record> {
    let ip = facts
        .public_ip
        .clone()
        .unwrap_or_else(|| "<droplet's public IPv4>".into());
    let host = settings.hostname.as_str();
    let did = facts
        .did
        .clone()
        .unwrap_or_else(|| "<the account's DID>".into());
    let txt = |name: &str| Record {
        kind: "TXT",
        name: format!("_atproto.{name}"),
        value: format!("\"did={did}\""),
    };
    let mut out = vec![Record {
        kind: "A",
        name: host.to_string(),
        value: ip.clone(),
    }];
    match settings.proxy {
        Proxy::Io => out.push(txt(settings.handle.initial())),
        Proxy::Caddy => out.push(Record {
            kind: "A",
            name: format!("*.{host}"),
            value: ip,
        }),
    }
    if let Handle::Custom { domain, .. } = &settings.handle {
        out.push(txt(domain));
    }
    out
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    for record in records(facts, settings) {
        plan.notes.push(format!("add: {record}"));
    }
    plan
}

/// The DNS records to add (nothing to change on the droplet).
pub struct DnsStep;

#[async_trait::async_trait(?Send)]
impl super::Step for DnsStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts::fresh()
    }

    fn probes(&self, _settings: &Settings) -> Vec<crate::host::Cmd> {
        vec![public_ipv4().cmd]
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        gather(ctx).await
    }

    fn plan(&self, facts: &Facts, input: &super::PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(facts, input.settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::tests::output;

    fn lines(records: &[Record]) -> Vec<Vec<String>> {
        records
            .iter()
            .map(|r| {
                r.to_string()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn records_follow_the_proxy() {
        let facts = Facts {
            public_ip: Some("203.0.113.7".into()),
            did: Some("did:plc:abc".into()),
        };
        let a = ["A", "pds.example.com", "203.0.113.7"];
        let wildcard = ["A", "*.pds.example.com", "203.0.113.7"];
        let under = [
            "TXT",
            "_atproto.alice.pds.example.com",
            "\"did=did:plc:abc\"",
        ];
        let domain = ["TXT", "_atproto.alice.com", "\"did=did:plc:abc\""];
        // (proxy, handle, the records)
        let table: [(Proxy, &str, Vec<&[&str; 3]>); 4] = [
            (Proxy::Io, "alice", vec![&a, &under]),
            (Proxy::Io, "alice.com", vec![&a, &under, &domain]),
            (Proxy::Caddy, "alice", vec![&a, &wildcard]),
            (Proxy::Caddy, "alice.com", vec![&a, &wildcard, &domain]),
        ];
        for (proxy, handle, want) in table {
            let mut settings = Settings::example();
            settings.proxy = proxy;
            settings.handle = Handle::parse(handle, &settings.hostname).unwrap();
            let want: Vec<Vec<String>> = want
                .iter()
                .map(|r| r.iter().map(|w| w.to_string()).collect())
                .collect();
            assert_eq!(
                lines(&records(&facts, &settings)),
                want,
                "{proxy:?} {handle}"
            );
        }
    }

    #[test]
    fn records_before_the_account_and_the_address_are_known_say_so() {
        let r = records(&Facts::fresh(), &Settings::example());
        assert_eq!(r[0].value, "<droplet's public IPv4>");
        assert_eq!(r[1].value, "\"did=<the account's DID>\"");
    }

    #[test]
    fn private_destinations_are_not_public_addresses() {
        for private in [
            "127.0.0.1",
            "10.213.0.5",
            "192.168.1.2",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(&private.parse().unwrap()), "{private}");
        }
        for public in ["203.0.113.7", "100.128.0.1", "8.8.8.8"] {
            assert!(is_public(&public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_public_ipv4_comes_from_the_metadata_service_then_the_default_route() {
        let table = [
            // A DigitalOcean droplet: the metadata service's answer.
            (
                "metadata=203.0.113.7\nroute=203.0.113.7\n",
                Some("203.0.113.7"),
            ),
            // Behind NAT (a VPC address on the default route): the metadata's.
            (
                "metadata=203.0.113.7\nroute=10.10.0.5\n",
                Some("203.0.113.7"),
            ),
            // Not DigitalOcean (no metadata line), or the service did not answer.
            ("route=198.51.100.4\n", Some("198.51.100.4")),
            ("metadata=\nroute=198.51.100.4\n", Some("198.51.100.4")),
            // An error page or a private address from the service is not taken.
            (
                "metadata=<html>404</html>\nroute=198.51.100.4\n",
                Some("198.51.100.4"),
            ),
            (
                "metadata=10.0.0.2\nroute=198.51.100.4\n",
                Some("198.51.100.4"),
            ),
            // Only a private route: said as it is (the user knows their NAT).
            ("route=10.0.0.5\n", Some("10.0.0.5")),
            ("route=\n", None),
            ("", None),
            ("garbage\n", None),
        ];
        for (stdout, want) in table {
            let got = (public_ipv4().parse)(&output(Some(0), stdout));
            assert_eq!(got.map(|ip| ip.to_string()).as_deref(), want, "{stdout:?}");
        }
        let script = public_ipv4().cmd.script;
        assert!(script.contains(DO_METADATA_IPV4), "{script}");
        assert!(script.contains("--max-time 2"), "{script}");
    }
}
