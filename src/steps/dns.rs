//! DNS: the records to add, printed at the end. `A` for the hostname and its
//! wildcard (handles under the hostname), and `TXT _atproto.<domain>` for a
//! custom-domain handle.

use std::net::IpAddr;

use crate::error::Result;

use super::{Ctx, StepId, StepPlan};
use crate::inputs::Handle;
use crate::settings::Settings;

pub const ID: StepId = StepId::new("dns", "dns");

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

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let from_dest = ctx
        .destination_host
        .as_deref()
        .and_then(|h| h.parse::<IpAddr>().ok())
        .filter(is_public);
    let public_ip = match from_dest {
        Some(ip) => Some(ip.to_string()),
        None => {
            // The source address of the default route: a local lookup, no traffic.
            ctx.read(&super::facts::default_route_ipv4()).await?
        }
    };
    let facts = Facts {
        public_ip,
        did: ctx.outcome.account.as_ref().map(|a| a.did.clone()),
    };
    ctx.outcome.dns_records = records(&facts, ctx.settings);
    Ok(facts)
}

fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_private() || v4.is_loopback() || v4.is_link_local()),
        IpAddr::V6(v6) => !v6.is_loopback(),
    }
}

pub fn records(facts: &Facts, settings: &Settings) -> Vec<Record> {
    let ip = facts
        .public_ip
        .clone()
        .unwrap_or_else(|| "<droplet's public IPv4>".into());
    let host = settings.hostname.as_str();
    let mut out = vec![
        Record {
            kind: "A",
            name: host.to_string(),
            value: ip.clone(),
        },
        Record {
            kind: "A",
            name: format!("*.{host}"),
            value: ip,
        },
    ];
    if let Handle::Custom { domain, .. } = &settings.handle {
        let did = facts
            .did
            .clone()
            .unwrap_or_else(|| "<the account's DID>".into());
        out.push(Record {
            kind: "TXT",
            name: format!("_atproto.{domain}"),
            value: format!("\"did={did}\""),
        });
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
        vec![super::facts::default_route_ipv4().cmd]
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

    #[test]
    fn records_for_hostname_and_custom_handle() {
        let mut settings = Settings::example();
        let facts = Facts {
            public_ip: Some("203.0.113.7".into()),
            did: Some("did:plc:abc".into()),
        };
        let r = records(&facts, &settings);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].name, "*.pds.example.com");
        assert_eq!(r[1].value, "203.0.113.7");
        settings.handle = Handle::parse("alice.com", &settings.hostname).unwrap();
        let r = records(&facts, &settings);
        assert_eq!(
            r[2].to_string().split_whitespace().collect::<Vec<_>>(),
            ["TXT", "_atproto.alice.com", "\"did=did:plc:abc\""]
        );
    }

    #[test]
    fn private_destinations_are_not_public_addresses() {
        assert!(!is_public(&"127.0.0.1".parse().unwrap()));
        assert!(!is_public(&"10.213.0.5".parse().unwrap()));
        assert!(is_public(&"203.0.113.7".parse().unwrap()));
    }
}
