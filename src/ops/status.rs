//! `pdsup status`: one screen per site. What the droplet, Nomad and the PDS
//! say is gathered into [`Observed`] (one SSH round trip for the droplet's own
//! facts, Nomad's API and the PDS's XRPC through the tunnels), then judged by a
//! pure function, [`assess`], into OK / WARN / FAIL lines. Anything not OK
//! makes the command fail with `Unhealthy`, so it can run from cron.

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::Result;
use crate::host::{Host, Script};
use crate::nomad::api::{AllocStub, NomadApi};
use crate::pds::xrpc::Xrpc;
use crate::plan::Progress;
use crate::settings::{Proxy, Settings, NOMAD_HTTP_PORT, PDS_PORT, PDS_VOLUME_PATH};

use super::site::Site;
use super::Output;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub message: String,
}

fn check(name: &str, level: Level, message: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        level,
        message: message.into(),
    }
}

/// The report: every check, worst first in the exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub hostname: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn worst(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    pub fn text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.hostname);
        for c in &self.checks {
            out.push_str(&format!(
                "  {} {:width$}  {}\n",
                c.level.label(),
                c.name,
                c.message
            ));
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "ok": self.worst() == Level::Ok,
            "status": self.worst(),
            "hostname": self.hostname,
            "checks": self.checks,
        })
    }

    /// The error `status` ends with when something is wrong: the failing
    /// checks by name, so a cron mail says what broke.
    pub fn problem(&self) -> Option<String> {
        let bad: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.level != Level::Ok)
            .map(|c| format!("{}: {}", c.name, c.message))
            .collect();
        (!bad.is_empty()).then(|| bad.join("; "))
    }
}

/// A Nomad job as status sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobObs {
    /// Registered at all.
    pub registered: bool,
    /// `nomad job stop` (or `pdsup down`) was run on it.
    pub stopped: bool,
    /// The newest allocation meant to run: its client status and health.
    pub alloc_status: Option<String>,
    pub alloc_healthy: Option<bool>,
    /// Restarts of the tasks of that allocation.
    pub restarts: u64,
    /// The last task event, for the message when it is not running.
    pub last_event: Option<String>,
    /// The image the job's first task runs.
    pub image: Option<String>,
}

impl JobObs {
    pub fn from_api(job: Option<&Value>, allocs: &[AllocStub]) -> Self {
        let Some(job) = job else {
            return JobObs::default();
        };
        let newest = allocs
            .iter()
            .filter(|a| a.desired_status == "run")
            .max_by_key(|a| (a.create_index, a.create_time));
        let image = job["TaskGroups"][0]["Tasks"][0]["Config"]["image"]
            .as_str()
            .map(str::to_string);
        JobObs {
            registered: true,
            stopped: job["Stop"].as_bool().unwrap_or(false),
            alloc_status: newest.map(|a| a.client_status.clone()),
            alloc_healthy: newest.and_then(AllocStub::healthy),
            restarts: newest
                .map(|a| a.task_states.values().map(|t| t.restarts).sum())
                .unwrap_or(0),
            last_event: newest.and_then(|a| {
                a.task_states
                    .values()
                    .filter_map(|t| t.last_event())
                    .max_by_key(|e| e.time)
                    .map(|e| e.to_string())
            }),
            image,
        }
    }
}

/// `https://HOSTNAME` asked from the droplet itself, through the proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsObs {
    /// The HTTP status (`None`: no answer at all).
    pub http_code: Option<u16>,
    /// curl's `ssl_verify_result`: 0 when the chain verifies against the droplet's roots.
    pub verify_result: Option<i64>,
    /// The certificate's notAfter, in seconds since the epoch.
    pub expires: Option<i64>,
    /// curl's own error line, when it failed.
    pub error: Option<String>,
}

/// Disk space of the PDS's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskObs {
    pub pds_used: Option<u64>,
    pub size: u64,
    pub free: u64,
}

/// Everything status found, each part `Err(text)` when it could not be asked.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub os: Option<String>,
    pub docker: Option<String>,
    pub nomad_cli: Option<String>,
    pub nomad_agent: Option<std::result::Result<String, String>>,
    pub caddy: Option<String>,
    pub caddy_active: Option<String>,
    /// The ACME CA Caddy is told to use instead of its default (`--acme-ca`).
    pub acme_ca: Option<String>,
    pub pds_job: Option<std::result::Result<JobObs, String>>,
    pub io_job: Option<std::result::Result<JobObs, String>>,
    pub pds_health: Option<std::result::Result<String, String>>,
    pub tls: Option<TlsObs>,
    pub now: Option<i64>,
    pub disk: Option<DiskObs>,
    pub accounts: Option<std::result::Result<usize, String>>,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: u64 = 1024 * 1024;

fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= GIB {
        format!("{:.1} GiB", n / GIB)
    } else {
        format!("{:.0} MiB", n / 1024.0 / 1024.0)
    }
}

/// Judges what was observed. A site on a test or staging ACME CA (`--acme-ca`,
/// as the proxy's config on the droplet says, or `private_acme`) has a
/// certificate the droplet's roots do not know, which is expected there.
pub fn assess(obs: &Observed, proxy: Proxy, private_acme: bool) -> Vec<Check> {
    let private_acme = private_acme || obs.acme_ca.is_some();
    let mut checks = vec![check("droplet", Level::Ok, "reachable over SSH")];
    let missing = |name: &str, what: &str| check(name, Level::Fail, format!("{what} not found"));
    checks.push(match &obs.os {
        Some(os) => check("os", Level::Ok, os.clone()),
        None => check("os", Level::Warn, "/etc/os-release has no PRETTY_NAME"),
    });
    checks.push(match &obs.docker {
        Some(v) => check("docker", Level::Ok, format!("Docker {v}")),
        None => check(
            "docker",
            Level::Fail,
            "Docker's daemon does not answer (`systemctl status docker` on the droplet)",
        ),
    });
    checks.push(match (&obs.nomad_agent, &obs.nomad_cli) {
        (Some(Ok(v)), _) => check("nomad", Level::Ok, format!("Nomad {v}, agent answering")),
        (Some(Err(e)), Some(cli)) => check(
            "nomad",
            Level::Fail,
            format!("{cli} installed, but its API does not answer: {e}"),
        ),
        (_, None) => missing("nomad", "the nomad binary"),
        (None, Some(cli)) => check("nomad", Level::Warn, format!("{cli} (API not asked)")),
    });
    match proxy {
        Proxy::Caddy => checks.push(match (&obs.caddy, obs.caddy_active.as_deref()) {
            (Some(v), Some("active")) => check("proxy", Level::Ok, format!("Caddy {v}, active")),
            (Some(v), state) => check(
                "proxy",
                Level::Fail,
                format!(
                    "Caddy {v} is {} (`pdsup logs proxy`)",
                    state.unwrap_or("not running")
                ),
            ),
            (None, _) => missing("proxy", "Caddy"),
        }),
        Proxy::Io => checks.push(job_check("proxy", "io", obs.io_job.as_ref())),
    }
    checks.push(job_check("pds job", "pds", obs.pds_job.as_ref()));
    checks.push(match &obs.pds_health {
        Some(Ok(v)) => check("pds", Level::Ok, format!("PDS {v}, /xrpc/_health answers")),
        Some(Err(e)) => check("pds", Level::Fail, format!("/xrpc/_health: {e}")),
        None => check("pds", Level::Fail, "not asked"),
    });
    checks.extend(tls_checks(obs.tls.as_ref(), obs.now, private_acme));
    checks.push(disk_check(obs.disk));
    checks.push(match &obs.accounts {
        Some(Ok(n)) => check("accounts", Level::Ok, format!("{n} hosted")),
        Some(Err(e)) => check("accounts", Level::Fail, format!("listRepos: {e}")),
        None => check("accounts", Level::Fail, "not asked"),
    });
    // DNS records: `dns --check` (ops::dns) is to add its check here.
    checks
}

fn job_check(name: &str, job: &str, obs: Option<&std::result::Result<JobObs, String>>) -> Check {
    let j = match obs {
        None => return check(name, Level::Fail, format!("job {job}: Nomad not asked")),
        Some(Err(e)) => return check(name, Level::Fail, format!("job {job}: {e}")),
        Some(Ok(j)) => j,
    };
    let restarts = match j.restarts {
        0 => String::new(),
        1 => ", restarted once".to_string(),
        n => format!(", restarted {n} times"),
    };
    let image = j
        .image
        .as_deref()
        .map(|i| format!(" ({i})"))
        .unwrap_or_default();
    if !j.registered {
        return check(
            name,
            Level::Fail,
            format!("job {job} is not in Nomad: run `pdsup up`"),
        );
    }
    if j.stopped {
        return check(
            name,
            Level::Fail,
            format!("job {job} is stopped: run `pdsup up` to start it again"),
        );
    }
    let event = j
        .last_event
        .as_deref()
        .map(|e| format!("; last event: {e}"))
        .unwrap_or_default();
    match (j.alloc_status.as_deref(), j.alloc_healthy) {
        (Some("running"), Some(false)) => check(
            name,
            Level::Fail,
            format!("job {job} runs but is unhealthy{restarts}{event}"),
        ),
        (Some("running"), _) if j.restarts > 3 => check(
            name,
            Level::Warn,
            format!("job {job} running{image}{restarts}{event}"),
        ),
        (Some("running"), _) => check(
            name,
            Level::Ok,
            format!("job {job} running{image}{restarts}"),
        ),
        (Some(other), _) => check(
            name,
            Level::Fail,
            format!("job {job} is {other}{restarts}{event} (`pdsup logs`)"),
        ),
        (None, _) => check(
            name,
            Level::Fail,
            format!("job {job} has no allocation to run{event}"),
        ),
    }
}

const DAY: i64 = 86_400;

fn tls_checks(tls: Option<&TlsObs>, now: Option<i64>, private_acme: bool) -> Vec<Check> {
    let Some(tls) = tls else {
        return vec![check("https", Level::Fail, "not asked")];
    };
    let https = match tls.http_code {
        None | Some(0) => check(
            "https",
            Level::Fail,
            format!(
                "no answer through the proxy over TLS{}",
                tls.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        ),
        Some(200) => check("https", Level::Ok, "/xrpc/_health answers 200 over TLS"),
        Some(code) => check(
            "https",
            Level::Fail,
            format!("/xrpc/_health answers {code} through the proxy"),
        ),
    };
    let answered = matches!(tls.http_code, Some(c) if c != 0);
    let mut checks = vec![https];
    if !answered {
        return checks;
    }
    let trust = match tls.verify_result {
        Some(0) => "trusted",
        _ if private_acme => "from the site's own ACME CA (--acme-ca)",
        _ => "",
    };
    let cert = match (tls.expires, now) {
        (Some(exp), Some(now)) => {
            let days = (exp - now).div_euclid(DAY);
            if trust.is_empty() {
                check(
                    "certificate",
                    Level::Warn,
                    format!(
                        "not trusted by the droplet's roots (verify result {}), expires in {days} days",
                        tls.verify_result.unwrap_or(-1)
                    ),
                )
            } else if exp <= now {
                check("certificate", Level::Fail, "expired")
            } else if days < 14 {
                check(
                    "certificate",
                    Level::Warn,
                    format!("{trust}, expires in {days} days: renewal is late"),
                )
            } else {
                check(
                    "certificate",
                    Level::Ok,
                    format!("{trust}, expires in {days} days"),
                )
            }
        }
        _ => check("certificate", Level::Warn, "its expiry date was not found"),
    };
    checks.push(cert);
    checks
}

fn disk_check(disk: Option<DiskObs>) -> Check {
    let Some(d) = disk.filter(|d| d.size > 0) else {
        return check(
            "disk",
            Level::Fail,
            format!("df {PDS_VOLUME_PATH} gave nothing"),
        );
    };
    let free_pct = d.free as f64 * 100.0 / d.size as f64;
    let used = d
        .pds_used
        .map(|u| format!("PDS data {}, ", bytes(u)))
        .unwrap_or_default();
    let text = format!(
        "{used}{} free of {} ({free_pct:.0}%)",
        bytes(d.free),
        bytes(d.size)
    );
    // Bounds that fit a 25 GB droplet and a 64 MB test volume alike: a tenth
    // (fail) and a fifth (warn) of the disk, at most 512 MiB and 2 GiB.
    let fail_below = (512 * MIB).min(d.size / 10);
    let warn_below = (2048 * MIB).min(d.size / 5);
    let level = if d.free < fail_below {
        Level::Fail
    } else if d.free < warn_below {
        Level::Warn
    } else {
        Level::Ok
    };
    let hint = if level == Level::Ok {
        ""
    } else {
        ": the disk is nearly full (blobs, SQLite); grow the droplet's volume"
    };
    check("disk", level, format!("{text}{hint}"))
}

/// The droplet's facts in one round trip: each section after a `##name` line.
const DROPLET_SCRIPT: &str = concat!(
    "echo '##os'; (. /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\")\n",
    "echo '##docker'; docker version --format '{{.Server.Version}}' 2>/dev/null\n",
    "echo '##nomad'; nomad version 2>/dev/null | head -n1\n",
    "echo '##caddy'; caddy version 2>/dev/null | head -n1 | cut -d' ' -f1\n",
    "echo '##caddy_active'; systemctl is-active caddy 2>/dev/null\n",
    "echo '##acme_ca'; grep -hsE '^[[:space:]]*(acme_ca|ca) ' /etc/caddy/Caddyfile /etc/caddy/pdsup.caddy\n",
    "echo '##du'; du -sb /srv/nomad/pds 2>/dev/null | cut -f1\n",
    "echo '##df'; df -B1 --output=size,avail /srv/nomad/pds 2>/dev/null | tail -n1\n",
    "echo '##now'; date +%s\n",
    "echo '##tls'; out=$(curl -sS -k -v -o /dev/null --max-time 30 --noproxy '*' ",
    "--resolve {}:443:127.0.0.1 -w 'result %{http_code} %{ssl_verify_result}\\n' ",
    "https://{}/xrpc/_health 2>&1); ",
    "printf '%s\\n' \"$out\" | grep -E '^(result |curl: )'; ",
    "exp=$(printf '%s\\n' \"$out\" | sed -n 's/^\\*  *expire date: //p' | head -n1); ",
    "[ -n \"$exp\" ] && echo \"expires $(date -d \"$exp\" +%s)\"; true\n",
);

fn sections(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("##") {
            current = Some(name.trim().to_string());
            out.insert(name.trim().to_string(), String::new());
        } else if let Some(name) = &current {
            let s: &mut String = out.get_mut(name).expect("inserted");
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

/// Reads the droplet script's output into `obs`.
pub fn parse_droplet(text: &str, obs: &mut Observed) {
    let s = sections(text);
    let first = |k: &str| {
        s.get(k)
            .and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty()))
            .map(str::to_string)
    };
    obs.os = first("os");
    obs.docker = first("docker");
    obs.nomad_cli = first("nomad");
    obs.caddy = first("caddy");
    obs.caddy_active = first("caddy_active");
    obs.acme_ca = first("acme_ca").and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    obs.now = first("now").and_then(|n| n.parse().ok());
    let used = first("du").and_then(|n| n.parse().ok());
    obs.disk = first("df").and_then(|line| {
        let mut words = line.split_whitespace().map(|w| w.parse::<u64>());
        match (words.next(), words.next()) {
            (Some(Ok(size)), Some(Ok(free))) => Some(DiskObs {
                pds_used: used,
                size,
                free,
            }),
            _ => None,
        }
    });
    let mut tls = TlsObs::default();
    for line in s.get("tls").map(String::as_str).unwrap_or("").lines() {
        if let Some(rest) = line.strip_prefix("result ") {
            let mut w = rest.split_whitespace();
            tls.http_code = w.next().and_then(|c| c.parse().ok());
            tls.verify_result = w.next().and_then(|c| c.parse().ok());
        } else if let Some(rest) = line.strip_prefix("expires ") {
            tls.expires = rest.trim().parse().ok();
        } else if line.starts_with("curl: ") {
            tls.error = Some(line.trim().to_string());
        }
    }
    obs.tls = Some(tls);
}

/// Gathers everything, reporting progress on the way.
pub async fn observe(
    host: &dyn Host,
    settings: &Settings,
    nomad: Option<&NomadApi>,
    pds: Option<&Xrpc>,
    progress: &dyn Progress,
) -> Observed {
    let mut obs = Observed::default();
    progress.progress("asking the droplet (OS, Docker, Nomad, proxy, disk, https)");
    let host_name = settings.hostname.as_str();
    let script = Script::of(DROPLET_SCRIPT, &[host_name, host_name]);
    match host.exec(&script.cmd()).await {
        Ok(out) => parse_droplet(&out.stdout_str(), &mut obs),
        Err(e) => log::warn!("status: the droplet's facts: {e:#}"),
    }
    progress.progress("asking Nomad for the jobs");
    if let Some(nomad) = nomad {
        obs.nomad_agent = Some(
            nomad
                .agent_self()
                .await
                .map(|a| a.version)
                .map_err(|e| e.to_string()),
        );
        obs.pds_job = Some(job_obs(nomad, "pds").await);
        if settings.proxy == Proxy::Io {
            obs.io_job = Some(job_obs(nomad, "io").await);
        }
    }
    progress.progress("asking the PDS");
    if let Some(pds) = pds {
        obs.pds_health = Some(pds.health().await.map_err(|e| format!("{e:#}")));
        obs.accounts = Some(
            crate::pds::admin::all_repos(pds, &mut |_| {})
                .await
                .map(|r| r.len())
                .map_err(|e| format!("{e:#}")),
        );
    }
    obs
}

async fn job_obs(nomad: &NomadApi, job: &str) -> std::result::Result<JobObs, String> {
    let spec = nomad.job(job).await.map_err(|e| e.to_string())?;
    let allocs = nomad.allocations(job).await.map_err(|e| e.to_string())?;
    Ok(JobObs::from_api(spec.as_ref(), &allocs))
}

/// `pdsup status`: connects, observes, prints, and fails with `Unhealthy`
/// when any check is not OK.
pub async fn status(
    site: Site,
    dest: Option<&str>,
    options: &crate::host::ssh::SshOptions,
    output: Output,
) -> Result<()> {
    let ui = crate::ui::Ui::new(output.json, output.quiet);
    let hostname = site.settings.hostname.as_str().to_string();
    let proxy = site.settings.proxy;
    let private_acme = site.settings.acme.ca.is_some();
    let destination = site.destination(dest)?;
    let report = match site.connect(destination.clone(), options).await {
        Err(e) => Report {
            hostname,
            checks: vec![check(
                "droplet",
                Level::Fail,
                format!("{destination}: {}", e.to_string().replace('\n', " ")),
            )],
        },
        Ok(session) => {
            let host = session.host.as_ref();
            let nomad = host.forward(NOMAD_HTTP_PORT).await.ok().map(NomadApi::new);
            let pds = host.forward(PDS_PORT).await.ok().map(Xrpc::new);
            let obs = observe(
                host,
                &session.site.settings,
                nomad.as_ref(),
                pds.as_ref(),
                &ui,
            )
            .await;
            let mut checks = assess(&obs, proxy, private_acme);
            if nomad.is_none() {
                checks.retain(|c| c.name != "nomad");
                checks.insert(
                    2,
                    check("nomad", Level::Fail, "no tunnel to Nomad's API (port 4646)"),
                );
            }
            Report { hostname, checks }
        }
    };
    ui.clear();
    if output.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    if let Some(problem) = report.problem() {
        return Err(super::Reported::wrap(crate::error::err!(
            Unhealthy,
            "{} is not healthy: {problem}",
            report.hostname
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPLET_OUT: &str = "##os\nDebian GNU/Linux 12 (bookworm)\n##docker\n24.0.7\n##nomad\nNomad v1.10.5\n##caddy\nv2.6.2\n##caddy_active\nactive\n##acme_ca\n##du\n123456789\n##df\n 100000000000  60000000000\n##now\n1764770000\n##tls\nresult 200 20\nexpires 1772546000\n";

    fn healthy() -> Observed {
        let mut obs = Observed::default();
        parse_droplet(DROPLET_OUT, &mut obs);
        obs.nomad_agent = Some(Ok("1.10.5".into()));
        obs.pds_job = Some(Ok(JobObs {
            registered: true,
            alloc_status: Some("running".into()),
            alloc_healthy: Some(true),
            image: Some("ghcr.io/bluesky-social/pds:0.4".into()),
            ..JobObs::default()
        }));
        obs.pds_health = Some(Ok("0.4.182".into()));
        obs.accounts = Some(Ok(3));
        obs
    }

    fn level_of(checks: &[Check], name: &str) -> (Level, String) {
        let c = checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:?}"));
        (c.level, c.message.clone())
    }

    #[test]
    fn the_droplets_answers_are_parsed() {
        let obs = healthy();
        assert_eq!(obs.os.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(obs.docker.as_deref(), Some("24.0.7"));
        assert_eq!(obs.caddy.as_deref(), Some("v2.6.2"));
        assert_eq!(
            obs.disk,
            Some(DiskObs {
                pds_used: Some(123456789),
                size: 100000000000,
                free: 60000000000
            })
        );
        let tls = obs.tls.unwrap();
        assert_eq!(
            (tls.http_code, tls.verify_result, tls.expires),
            (Some(200), Some(20), Some(1772546000))
        );
    }

    #[test]
    fn a_healthy_site_is_all_ok_with_a_private_acme_ca() {
        let checks = assess(&healthy(), Proxy::Caddy, true);
        let report = Report {
            hostname: "pds.example.com".into(),
            checks,
        };
        assert_eq!(report.worst(), Level::Ok, "{}", report.text());
        assert!(report.problem().is_none());
        let text = report.text();
        assert!(text.contains("OK   accounts"), "{text}");
        assert!(text.contains("expires in 90 days"), "{text}");
        assert_eq!(report.json()["ok"], true);
    }

    #[test]
    fn the_proxys_own_acme_ca_makes_its_certificate_expected() {
        let mut obs = Observed::default();
        let out = DROPLET_OUT.replace(
            "##acme_ca\n",
            "##acme_ca\n\t\tca https://10.213.0.1:14000/dir\n",
        );
        parse_droplet(&out, &mut obs);
        assert_eq!(obs.acme_ca.as_deref(), Some("https://10.213.0.1:14000/dir"));
        let (level, msg) = level_of(&assess(&obs, Proxy::Caddy, false), "certificate");
        assert_eq!(level, Level::Ok, "{msg}");
    }

    #[test]
    fn an_untrusted_certificate_on_a_public_ca_is_a_warning() {
        let checks = assess(&healthy(), Proxy::Caddy, false);
        let (level, msg) = level_of(&checks, "certificate");
        assert_eq!(level, Level::Warn, "{msg}");
        assert!(msg.contains("not trusted"), "{msg}");
    }

    #[test]
    fn a_stopped_pds_job_fails_and_is_named() {
        let mut obs = healthy();
        obs.pds_job = Some(Ok(JobObs {
            registered: true,
            stopped: true,
            ..JobObs::default()
        }));
        obs.pds_health = Some(Err("connection refused".into()));
        let report = Report {
            hostname: "h".into(),
            checks: assess(&obs, Proxy::Caddy, true),
        };
        assert_eq!(report.worst(), Level::Fail);
        let (level, msg) = level_of(&report.checks, "pds job");
        assert_eq!(level, Level::Fail);
        assert!(msg.contains("job pds is stopped"), "{msg}");
        assert!(report
            .problem()
            .unwrap()
            .contains("pds job: job pds is stopped"));
        assert_eq!(report.json()["status"], "fail");
    }

    #[test]
    fn job_states_and_restarts() {
        let run = |status: &str, healthy: Option<bool>, restarts: u64| {
            job_check(
                "j",
                "pds",
                Some(&Ok(JobObs {
                    registered: true,
                    alloc_status: Some(status.into()),
                    alloc_healthy: healthy,
                    restarts,
                    last_event: Some("Terminated: exit 1".into()),
                    ..JobObs::default()
                })),
            )
        };
        assert_eq!(run("running", Some(true), 0).level, Level::Ok);
        assert_eq!(run("running", Some(true), 5).level, Level::Warn);
        assert!(run("running", Some(true), 5)
            .message
            .contains("restarted 5 times"));
        assert_eq!(run("running", Some(false), 0).level, Level::Fail);
        let pending = run("pending", None, 2);
        assert_eq!(pending.level, Level::Fail);
        assert!(
            pending.message.contains("Terminated: exit 1"),
            "{pending:?}"
        );
        let gone = job_check("j", "pds", Some(&Ok(JobObs::default())));
        assert!(gone.message.contains("not in Nomad"), "{gone:?}");
    }

    #[test]
    fn a_nearly_full_disk_fails_and_a_filling_one_warns() {
        let at = |free: u64| {
            disk_check(Some(DiskObs {
                pds_used: None,
                size: 1000 * 1024 * 1024,
                free: free * 1024 * 1024,
            }))
        };
        assert_eq!(at(500).level, Level::Ok);
        assert_eq!(at(150).level, Level::Warn);
        let full = at(20);
        assert_eq!(full.level, Level::Fail);
        assert!(full.message.contains("nearly full"), "{full:?}");
        assert_eq!(disk_check(None).level, Level::Fail);
        // A big disk: 10 GiB free of 250 is plenty, 1 GiB is late, 100 MiB is full.
        let big = |free_mib: u64| {
            disk_check(Some(DiskObs {
                pds_used: None,
                size: 250 * 1024 * MIB,
                free: free_mib * MIB,
            }))
            .level
        };
        assert_eq!(big(10 * 1024), Level::Ok);
        assert_eq!(big(1024), Level::Warn);
        assert_eq!(big(100), Level::Fail);
    }

    #[test]
    fn no_answer_over_tls_fails_and_skips_the_certificate() {
        let tls = TlsObs {
            http_code: Some(0),
            error: Some("curl: (7) Failed to connect".into()),
            ..TlsObs::default()
        };
        let checks = tls_checks(Some(&tls), Some(0), true);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].level, Level::Fail);
        assert!(checks[0].message.contains("Failed to connect"));
        let expiring = TlsObs {
            http_code: Some(200),
            verify_result: Some(0),
            expires: Some(5 * DAY),
            error: None,
        };
        let checks = tls_checks(Some(&expiring), Some(0), false);
        assert_eq!(checks[1].level, Level::Warn, "{checks:?}");
        let expired = TlsObs {
            expires: Some(-1),
            ..expiring
        };
        assert_eq!(
            tls_checks(Some(&expired), Some(0), false)[1].level,
            Level::Fail
        );
    }

    #[test]
    fn the_script_quotes_the_hostname() {
        let s = Script::of(DROPLET_SCRIPT, &["pds.example.com", "pds.example.com"]);
        assert!(s.contains("--resolve pds.example.com:443:127.0.0.1"), "{s}");
        assert!(s.contains("https://pds.example.com/xrpc/_health"), "{s}");
        let odd = Script::of(DROPLET_SCRIPT, &["a b", "a b"]);
        assert!(odd.contains("--resolve 'a b':443:127.0.0.1"), "{odd}");
    }
}
