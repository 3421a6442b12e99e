//! What the world can reach, checked before anything changes: Nomad's HTTP API
//! (4646) and the PDS's own port (3000) must not answer on the droplet's
//! public address (tried from here, as a stranger would), since anyone who
//! reaches Nomad's API can run containers on the droplet, and the PDS port
//! bypasses the proxy's TLS. The user may accept it with `--allow-exposed-api`
//! (a firewall pdsup cannot see, a lab). When `ufw` is active it is told to let
//! the proxy's 80 and 443 in, or certificates and visitors would never arrive.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::Result;

use super::{Action, Ctx, StepId, StepPlan};
use crate::host::facts::Fact;
use crate::host::{Cmd, Output, Script};
use crate::settings::{Settings, NOMAD_HTTP_PORT, PDS_PORT};

pub const ID: StepId = StepId::new("exposure", "exposure");

/// How long a port may take to answer before it counts as closed: a filtered
/// port never answers, and the check must not hold up every run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The ports the proxy serves, which an active ufw must let in.
const PROXY_PORTS: [u16; 2] = [80, 443];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Every (address, port) that answered from here.
    pub answering: Vec<SocketAddr>,
    /// The addresses tried (for the plan's note).
    pub tried: Vec<IpAddr>,
    pub ufw: Ufw,
}

/// `ufw status` as far as the proxy's ports go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ufw {
    pub active: bool,
    /// Ports of [`PROXY_PORTS`] that a rule already allows.
    pub allowed: Vec<u16>,
}

/// ufw's state; inactive when there is no ufw.
pub fn ufw_status() -> Fact<Ufw> {
    Fact::new(
        Cmd::sh("command -v ufw >/dev/null 2>&1 && ufw status 2>/dev/null; true"),
        |out: &Output| parse_ufw_status(&out.stdout_str()),
    )
}

/// `Status: active` and rules such as `80/tcp  ALLOW  Anywhere`,
/// `443  ALLOW IN  Anywhere (v6)` or `80,443/tcp  ALLOW  Anywhere`.
pub fn parse_ufw_status(text: &str) -> Ufw {
    let active = text
        .lines()
        .any(|l| l.trim().eq_ignore_ascii_case("status: active"));
    let mut allowed = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(to), Some(action)) = (words.next(), words.next()) else {
            continue;
        };
        if action != "ALLOW" {
            continue;
        }
        let (ports, proto) = to.split_once('/').unwrap_or((to, "tcp"));
        if proto != "tcp" {
            continue;
        }
        for port in ports.split(',').filter_map(|p| p.parse::<u16>().ok()) {
            if PROXY_PORTS.contains(&port) && !allowed.contains(&port) {
                allowed.push(port);
            }
        }
    }
    allowed.sort_unstable();
    Ufw { active, allowed }
}

/// Whether `addr` accepts a TCP connection within [`PROBE_TIMEOUT`].
async fn answers(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Tries every port on every address at once; the ones that answered.
pub async fn probe(addresses: &[IpAddr], ports: &[u16]) -> Vec<SocketAddr> {
    let mut set = tokio::task::JoinSet::new();
    for ip in addresses {
        for port in ports {
            let addr = SocketAddr::new(*ip, *port);
            set.spawn(async move { answers(addr).await.then_some(addr) });
        }
    }
    let mut open: Vec<SocketAddr> = set.join_all().await.into_iter().flatten().collect();
    open.sort_unstable();
    open
}

/// The droplet's public addresses as seen from here: DEST when it names a
/// routable address, and the droplet's own default-route address (its public
/// IPv4 on DigitalOcean). Loopback is left out: from here it is this machine.
async fn public_addresses(ctx: &mut Ctx<'_>) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    if let Some(host) = ctx.destination_host.clone() {
        if let Ok(found) = tokio::net::lookup_host((host.as_str(), 0)).await {
            out.extend(found.map(|a| a.ip()));
        }
    }
    if let Some(ip) = ctx.read(&super::facts::default_route_ipv4()).await? {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            out.push(ip);
        }
    }
    out.retain(|ip| !ip.is_loopback() && !ip.is_unspecified());
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn what_answers(port: u16) -> &'static str {
    if port == NOMAD_HTTP_PORT {
        "Nomad's HTTP API"
    } else {
        "the PDS's own port"
    }
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    for addr in &facts.answering {
        let port = addr.port();
        let why = if port == NOMAD_HTTP_PORT {
            "anyone who reaches it can read the jobs and run containers on the droplet. Let Nomad's \
             HTTP API listen on loopback only (`addresses { http = \"127.0.0.1\" }` in /etc/nomad.d/nomad.hcl) \
             or close the port in a firewall (`ufw deny 4646`, or a DigitalOcean cloud firewall)"
        } else {
            "the PDS is reachable there past the proxy, without TLS. Close the port in a firewall \
             (`ufw deny 3000`, or a DigitalOcean cloud firewall) or stop what publishes it"
        };
        let found = format!(
            "{} (port {port}) answers on the droplet's public address {}",
            what_answers(port),
            addr.ip()
        );
        if settings.allow_exposed_api {
            plan.notes
                .push(format!("{found}: accepted with --allow-exposed-api"));
        } else {
            plan.blockers.push(format!(
                "{found}: {why}; then run again, or give --allow-exposed-api to go on as it is"
            ));
        }
    }
    if facts.ufw.active {
        let missing: Vec<u16> = PROXY_PORTS
            .iter()
            .copied()
            .filter(|p| !facts.ufw.allowed.contains(p))
            .collect();
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|p| format!("{p}/tcp")).collect();
            let mut script = Script::new();
            for (i, port) in list.iter().enumerate() {
                if i > 0 {
                    script = script.push(" && ", &[]);
                }
                script = script.push("ufw allow {}", &[port]);
            }
            plan.change(
                format!(
                    "allow {} in ufw (it is active): the proxy serves there",
                    list.join(" and ")
                ),
                Action::Run(script.cmd()),
            );
        }
    }
    plan
}

/// The exposure checks and ufw's rules for the proxy.
pub struct ExposureStep;

#[async_trait::async_trait(?Send)]
impl super::Step for ExposureStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts::default()
    }

    fn probes(&self, _settings: &Settings) -> Vec<crate::host::Cmd> {
        vec![super::facts::default_route_ipv4().cmd, ufw_status().cmd]
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        let tried = public_addresses(ctx).await?;
        Ok(Facts {
            answering: probe(&tried, &[NOMAD_HTTP_PORT, PDS_PORT]).await,
            tried,
            ufw: ctx.read(&ufw_status()).await?,
        })
    }

    fn plan(&self, facts: &Facts, input: &super::PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(facts, input.settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufw_status_table() {
        let table: [(&str, bool, &[u16]); 6] = [
            ("", false, &[]),
            ("Status: inactive\n", false, &[]),
            (
                "Status: active\n\nTo                         Action      From\n--                         ------      ----\n22/tcp                     ALLOW       Anywhere\n",
                true,
                &[],
            ),
            (
                "Status: active\n\nTo Action From\n80/tcp ALLOW Anywhere\n443 ALLOW Anywhere\n80/tcp (v6) ALLOW Anywhere (v6)\n",
                true,
                &[80, 443],
            ),
            ("Status: active\n80,443/tcp ALLOW Anywhere\n", true, &[80, 443]),
            ("Status: active\n80/udp ALLOW Anywhere\n443/tcp DENY Anywhere\n", true, &[]),
        ];
        for (text, active, allowed) in table {
            let got = parse_ufw_status(text);
            assert_eq!(
                (got.active, got.allowed.as_slice()),
                (active, allowed),
                "{text:?}"
            );
        }
    }

    #[test]
    fn an_answering_port_blocks_unless_accepted() {
        let mut settings = Settings::example();
        let facts = Facts {
            answering: vec![
                "203.0.113.7:4646".parse().unwrap(),
                "203.0.113.7:3000".parse().unwrap(),
            ],
            tried: vec!["203.0.113.7".parse().unwrap()],
            ufw: Ufw::default(),
        };
        let p = plan(&facts, &settings);
        assert!(p.is_unchanged());
        assert_eq!(p.blockers.len(), 2, "{:?}", p.blockers);
        assert!(p.blockers[0].starts_with(
            "Nomad's HTTP API (port 4646) answers on the droplet's public address 203.0.113.7"
        ));
        assert!(p.blockers[0].contains("--allow-exposed-api"));
        assert!(p.blockers[1].starts_with("the PDS's own port (port 3000)"));
        settings.allow_exposed_api = true;
        let p = plan(&facts, &settings);
        assert!(p.blockers.is_empty() && p.is_unchanged());
        assert!(p.notes[0].contains("accepted with --allow-exposed-api"));
        assert!(plan(&Facts::default(), &settings).is_unchanged());
    }

    #[test]
    fn an_active_ufw_lets_the_proxy_in() {
        let settings = Settings::example();
        let facts = |allowed: Vec<u16>| Facts {
            ufw: Ufw {
                active: true,
                allowed,
            },
            ..Facts::default()
        };
        let p = plan(&facts(vec![]), &settings);
        assert_eq!(p.changes.len(), 1);
        assert_eq!(
            p.changes[0].summary,
            "allow 80/tcp and 443/tcp in ufw (it is active): the proxy serves there"
        );
        assert_eq!(
            p.changes[0].detail.as_deref(),
            Some("ufw allow 80/tcp && ufw allow 443/tcp")
        );
        let p = plan(&facts(vec![80]), &settings);
        assert_eq!(p.changes[0].detail.as_deref(), Some("ufw allow 443/tcp"));
        assert!(plan(&facts(vec![80, 443]), &settings).is_unchanged());
        let inactive = Facts::default();
        assert!(plan(&inactive, &settings).is_unchanged());
    }

    /// A real listener answers the probe; a closed port does not.
    #[tokio::test]
    async fn probe_finds_a_listening_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let found = probe(&[ip], &[open, closed]).await;
        assert_eq!(found, vec![SocketAddr::new(ip, open)]);
    }
}
