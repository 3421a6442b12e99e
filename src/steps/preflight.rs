//! Preflight: is this a droplet pdsup can set up? OS and architecture, systemd,
//! disk and memory, ports 80/443, the time zone in the droplet's tz database,
//! and the dpkg lock a fresh droplet's
//! unattended-upgrades holds for its first minutes (package installs wait for
//! it, so here it is only reported, with the program that holds it).

use crate::error::Result;
use crate::host::facts::Fact;
use crate::host::Script;

use super::packages::LockHolder;
use super::{Ctx, StepId, StepPlan};
use crate::host::Cmd;
use crate::nomad::release;
use crate::settings::{Proxy, Settings};

pub const ID: StepId = StepId::new("preflight", "preflight");

/// The probe of the machine's resources, whose output `parse` reads (the
/// release and the CPU come from their own facts, shared with other steps).
pub const PROBE: &str = r#"
echo "systemd=$(cat /proc/1/comm 2>/dev/null)"
echo "disk_free_mb=$(df -Pm / | awk 'NR==2 {print $4}')"
echo "mem_total_mb=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
if command -v ss >/dev/null; then
  ss -Hltnp '( sport = :80 or sport = :443 )' 2>/dev/null | sed 's/^/listener=/'
fi
"#;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub os_id: String,
    pub os_version: String,
    pub os_name: String,
    pub arch: String,
    pub init: String,
    pub disk_free_mb: u64,
    pub mem_total_mb: u64,
    /// Listeners on 80/443: `(port, process name)`.
    pub listeners: Vec<(u16, String)>,
    /// Who holds the dpkg lock, if anyone.
    pub dpkg_lock: Option<LockHolder>,
    /// Whether the droplet's tz database has `--timezone` (`None`: not asked).
    pub zone: Option<Zone>,
}

/// What the droplet's tz database says about a time zone name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    Known,
    Unknown,
    /// No `/usr/share/zoneinfo` at all (tzdata not installed): nothing to check against.
    NoDatabase,
}

/// Whether `/usr/share/zoneinfo/<timezone>` is a zone file on the droplet.
pub fn zone(timezone: &str) -> Fact<Zone> {
    Fact::new(
        Script::of(
            "if [ ! -d /usr/share/zoneinfo ]; then echo no-database; elif [ -f /usr/share/zoneinfo/{} ]; then echo known; else echo unknown; fi",
            &[timezone],
        ),
        |out| parse_zone(&out.stdout_str()),
    )
}

/// Reads [`zone`]'s answer; anything else counts as unknown.
pub fn parse_zone(text: &str) -> Zone {
    match text.trim() {
        "known" => Zone::Known,
        "no-database" => Zone::NoDatabase,
        _ => Zone::Unknown,
    }
}

impl Facts {
    pub fn fresh() -> Self {
        Facts {
            os_id: "ubuntu".into(),
            os_version: "24.04".into(),
            os_name: "Ubuntu 24.04 LTS (a fresh droplet)".into(),
            arch: "x86_64".into(),
            init: "systemd".into(),
            disk_free_mb: 20_000,
            mem_total_mb: 2_000,
            listeners: Vec::new(),
            dpkg_lock: None,
            zone: Some(Zone::Known),
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut f = Facts::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                // The release and CPU lines are not in PROBE (`gather` takes them
                // from their facts); read here too, so that one text describes a
                // whole droplet in the tests.
                "os_id" => f.os_id = value.into(),
                "os_version" => f.os_version = value.into(),
                "os_name" => f.os_name = value.into(),
                "arch" => f.arch = value.into(),
                "systemd" => f.init = value.into(),
                "disk_free_mb" => f.disk_free_mb = value.trim().parse().unwrap_or(0),
                "mem_total_mb" => f.mem_total_mb = value.trim().parse().unwrap_or(0),
                "listener" => {
                    if let Some(l) = parse_listener(value) {
                        f.listeners.push(l);
                    }
                }
                _ => {}
            }
        }
        f
    }
}

/// One `ss -Hltnp` line: `LISTEN 0 4096 0.0.0.0:80 0.0.0.0:* users:(("caddy",pid=1,fd=3))`.
fn parse_listener(line: &str) -> Option<(u16, String)> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    let local = cols.get(3)?;
    let port: u16 = local.rsplit(':').next()?.parse().ok()?;
    let process = line
        .split("((\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("an unknown program")
        .to_string();
    Some((port, process))
}

/// The commands of the facts [`gather`] reads.
pub fn probes(settings: &Settings) -> Vec<Cmd> {
    vec![
        super::facts::preflight().cmd,
        super::facts::os_release().cmd,
        crate::host::facts::uname_arch().cmd,
        super::facts::dpkg_lock_holder().cmd,
        zone(&settings.timezone).cmd,
    ]
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let mut facts = ctx.read_checked(&super::facts::preflight()).await?;
    let os = ctx.read(&super::facts::os_release()).await?;
    (facts.os_id, facts.os_version, facts.os_name) = (os.id, os.version_id, os.name);
    facts.arch = ctx.read(&crate::host::facts::uname_arch()).await?;
    facts.dpkg_lock = ctx.read(&super::facts::dpkg_lock_holder()).await?;
    facts.zone = Some(ctx.read(&zone(&ctx.settings.timezone)).await?);
    Ok(facts)
}

const SUPPORTED: &[(&str, &str)] = &[
    ("ubuntu", "22.04"),
    ("ubuntu", "24.04"),
    ("debian", "12"),
    ("debian", "13"),
];

/// Programs that may hold 80/443 because they are the proxy pdsup installs.
fn own_proxy_processes(proxy: Proxy) -> &'static [&'static str] {
    match proxy {
        Proxy::Caddy => &["caddy"],
        Proxy::Io => &["envoy", "io"],
    }
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    if !SUPPORTED.contains(&(facts.os_id.as_str(), facts.os_version.as_str())) {
        plan.blockers.push(format!(
            "unsupported OS {:?} ({} {}): pdsup supports Ubuntu 22.04/24.04 and Debian 12/13; create the droplet from one of those images",
            facts.os_name, facts.os_id, facts.os_version
        ));
    }
    if !matches!(facts.arch.as_str(), "x86_64" | "aarch64") {
        plan.blockers.push(format!(
            "unsupported architecture {}: pdsup supports amd64 (x86_64) and arm64 (aarch64)",
            facts.arch
        ));
    }
    if facts.init != "systemd" {
        plan.blockers.push(format!(
            "PID 1 is {:?}, not systemd: pdsup runs Docker, Nomad and the proxy as systemd services",
            facts.init
        ));
    }
    if facts.disk_free_mb < 2_048 {
        plan.blockers.push(format!(
            "only {} MB free on /: Docker images and the PDS need at least 2 GB; resize the disk",
            facts.disk_free_mb
        ));
    }
    if facts.mem_total_mb < 900 {
        plan.blockers.push(format!(
            "only {} MB of memory: the PDS, Nomad and Docker need a droplet with at least 1 GB",
            facts.mem_total_mb
        ));
    } else if facts.mem_total_mb < 1_800 {
        plan.notes.push(format!(
            "{} MB of memory is tight; 2 GB is comfortable",
            facts.mem_total_mb
        ));
    }
    let ours = own_proxy_processes(settings.proxy);
    for (port, process) in &facts.listeners {
        if !ours.contains(&process.as_str()) {
            plan.blockers.push(format!(
                "port {port} is held by {process:?}; the proxy needs 80 and 443: stop and disable it (e.g. `systemctl disable --now {process}`), then run pdsup again"
            ));
        }
    }
    match facts.zone {
        Some(Zone::Unknown) => plan.blockers.push(format!(
            "--timezone {:?} is not a time zone the droplet knows (no /usr/share/zoneinfo/{}): \
             give an IANA zone name such as UTC, Europe/Berlin or America/Los_Angeles \
             (abbreviations like PDT, the seed's, are not zones)",
            settings.timezone, settings.timezone
        )),
        Some(Zone::NoDatabase) => plan.notes.push(format!(
            "the droplet has no tz database (/usr/share/zoneinfo), so --timezone {:?} was not checked",
            settings.timezone
        )),
        Some(Zone::Known) | None => {}
    }
    if let Some(holder) = &facts.dpkg_lock {
        plan.notes.push(format!(
            "the dpkg lock is held by {holder} (unattended-upgrades on a fresh droplet?); package installs will wait for it"
        ));
    }
    // A --nomad-zip for another CPU is refused here, before anything changes.
    if let (Some(zip), Ok(arch)) = (&settings.nomad.zip, release::Arch::from_uname(&facts.arch)) {
        if !zip.arches.contains(&arch) {
            plan.blockers.push(format!(
                "--nomad-zip {} is {}, but the droplet is {arch} ({}): give {}",
                zip.path.display(),
                zip.describe_arches(),
                facts.arch,
                release::zip_name(&settings.nomad.version, arch)
            ));
        }
    }
    plan
}

/// The droplet can take a PDS: OS, architecture, memory, free ports, no stray proxy.
pub struct PreflightStep;

#[async_trait::async_trait(?Send)]
impl super::Step for PreflightStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts::fresh()
    }

    fn probes(&self, settings: &Settings) -> Vec<Cmd> {
        probes(settings)
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

    const DEBIAN: &str = "os_id=debian\nos_version=12\nos_name=Debian GNU/Linux 12 (bookworm)\narch=x86_64\nsystemd=systemd\ndisk_free_mb=50000\nmem_total_mb=2048\n";

    #[test]
    fn a_fresh_supported_droplet_passes() {
        let facts = Facts::parse(DEBIAN);
        assert_eq!(facts.os_version, "12");
        let plan = plan(&facts, &Settings::example());
        assert!(plan.blockers.is_empty(), "{:?}", plan.blockers);
        assert!(plan.is_unchanged());
    }

    #[test]
    fn unsupported_os_and_small_droplets_are_blocked() {
        let facts = Facts::parse(
            &DEBIAN
                .replace("os_version=12", "os_version=11")
                .replace("mem_total_mb=2048", "mem_total_mb=512"),
        );
        let plan = plan(&facts, &Settings::example());
        assert_eq!(plan.blockers.len(), 2, "{:?}", plan.blockers);
        assert!(plan.blockers[0].contains("unsupported OS"));
    }

    #[test]
    fn a_held_dpkg_lock_is_a_note_naming_its_holder() {
        let mut facts = Facts::parse(DEBIAN);
        facts.dpkg_lock = Some(LockHolder {
            pid: Some(1234),
            name: "unattended-upgr".into(),
            cmdline: String::new(),
        });
        let plan = plan(&facts, &Settings::example());
        assert!(plan.blockers.is_empty());
        assert_eq!(plan.notes.len(), 1);
        assert!(
            plan.notes[0].contains("held by unattended-upgr (pid 1234)"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn a_nomad_zip_for_another_cpu_is_blocked() {
        let mut settings = Settings::example();
        settings.nomad.zip = Some(release::LocalZip {
            path: "/tmp/nomad_1.10.5_linux_amd64.zip".into(),
            sha256: "0".repeat(64),
            arches: vec![release::Arch::Amd64],
        });
        let amd64 = Facts::parse(DEBIAN);
        assert!(plan(&amd64, &settings).blockers.is_empty());
        let arm = Facts::parse(&DEBIAN.replace("arch=x86_64", "arch=aarch64"));
        let p = plan(&arm, &settings);
        assert_eq!(p.blockers.len(), 1, "{:?}", p.blockers);
        assert!(
            p.blockers[0].contains("/tmp/nomad_1.10.5_linux_amd64.zip is the linux_amd64 release")
                && p.blockers[0].contains("give nomad_1.10.5_linux_arm64.zip"),
            "{}",
            p.blockers[0]
        );
    }

    #[test]
    fn a_time_zone_the_droplet_does_not_know_is_blocked() {
        let mut settings = Settings::example();
        settings.timezone = "PDT".into();
        // (the tz database's answer, blocked, noted)
        let table = [
            ("known\n", false, false),
            ("unknown\n", true, false),
            ("no-database\n", false, true),
            ("", true, false),
        ];
        for (answer, blocked, noted) in table {
            let facts = Facts {
                zone: Some(parse_zone(answer)),
                ..Facts::parse(DEBIAN)
            };
            let p = plan(&facts, &settings);
            assert_eq!(
                p.blockers.len(),
                usize::from(blocked),
                "{answer:?}: {:?}",
                p.blockers
            );
            if blocked {
                let b = &p.blockers[0];
                assert!(
                    b.contains("--timezone \"PDT\"")
                        && b.contains("/usr/share/zoneinfo/PDT")
                        && b.contains("America/Los_Angeles"),
                    "{b}"
                );
            }
            assert_eq!(
                p.notes.iter().any(|n| n.contains("not checked")),
                noted,
                "{answer:?}"
            );
        }
        let fact = zone("America/Los_Angeles");
        assert!(
            fact.cmd
                .script
                .contains("[ -f /usr/share/zoneinfo/America/Los_Angeles ]"),
            "{}",
            fact.cmd.script
        );
    }

    #[test]
    fn ports_held_by_others_are_blocked_but_our_proxy_is_fine() {
        let text = format!(
            "{DEBIAN}listener=LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:((\"nginx\",pid=812,fd=6))\nlistener=LISTEN 0 4096 *:443 *:* users:((\"caddy\",pid=9,fd=7))\n"
        );
        let facts = Facts::parse(&text);
        assert_eq!(
            facts.listeners,
            vec![(80, "nginx".into()), (443, "caddy".into())]
        );
        let mut settings = Settings::example();
        settings.proxy = Proxy::Caddy;
        let plan = plan(&facts, &settings);
        assert_eq!(plan.blockers.len(), 1);
        assert!(plan.blockers[0].contains("port 80 is held by \"nginx\""));
    }
}
