//! Debian packages on the droplet, as dpkg records them.
//!
//! Whether a package is installed is read from dpkg's database, never guessed
//! from a binary on `PATH`: a run killed while apt was working leaves files
//! unpacked (so `dockerd` exists) but the package unconfigured (`iU`), and only
//! dpkg's status says so. Such interrupted work is finished with
//! `dpkg --configure -a` and `apt-get -f install` before anything else uses apt.
//!
//! apt and dpkg calls wait for the dpkg lock (a fresh droplet's
//! unattended-upgrades holds it for minutes). pdsup waits in front of them and
//! says who holds the lock, found from `/proc/locks` so that nothing beyond
//! coreutils is needed on the droplet (`fuser` and `lsof` often are not there).
//!
//! **The packages step** installs what every later step needs from apt in one
//! transaction (one `apt-get update`, one `apt-get install`): each step says
//! which packages it still needs from dpkg's facts (`docker::packages`,
//! `nomad_install::packages`, `proxy::packages`), and the later steps only
//! configure and start their services. Docker's repository is staged and
//! checked before the transaction. The PDS image archive, which does not need
//! apt, is uploaded while apt works, over the same connection.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::error::{bail, Result};

use super::docker::{self, apt_get, OsRelease};
use super::{nomad_install, pds_image, proxy};
use super::{Action, Ctx, StepId, StepPlan};
use crate::host::{Cmd, Script};
use crate::settings::Settings;

pub const ID: StepId = StepId::new("packages", "packages");

/// What the packages step asks the droplet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Every package's dpkg status, and `dpkg --audit`: what the steps need,
    /// and any package work an interrupted run (of pdsup or anything else)
    /// left half done.
    pub dpkg: DpkgFacts,
    /// Which of Docker's repository suites applies.
    pub os: OsRelease,
    /// The PDS image and its staged archive (asked only with `--pds-image-archive`).
    pub image: pds_image::ImageFacts,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts {
            os: OsRelease::fresh(),
            ..Facts::default()
        }
    }
}

/// dpkg first: the release and the image are asked only when there is package
/// work to plan with them (a converged droplet costs one round trip here).
pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let settings = ctx.settings;
    let mut facts = Facts {
        dpkg: ctx.read(&super::facts::dpkg_status(&[])).await?,
        ..Facts::default()
    };
    let wanted = wanted(settings, &facts.dpkg);
    if wanted.iter().any(|(step, _)| *step == docker::ID) {
        facts.os = ctx.read(&super::facts::os_release()).await?;
    }
    if !wanted.is_empty() && settings.pds_image_archive.is_some() {
        facts.image = pds_image::gather_image(ctx).await?;
    }
    Ok(facts)
}

/// The packages each later step still needs, by step, in the order they run.
pub fn wanted(settings: &Settings, dpkg: &DpkgFacts) -> Vec<(StepId, Vec<&'static str>)> {
    [
        (docker::ID, docker::packages(settings, dpkg).to_vec()),
        (nomad_install::ID, nomad_install::packages(dpkg)),
        (proxy::ID, proxy::packages(settings, dpkg).to_vec()),
    ]
    .into_iter()
    .filter(|(_, packages)| !packages.is_empty())
    .collect()
}

/// `apt-get update` once, then one `apt-get install` of `packages`, after
/// `source` (lines that add an apt source, when there is one to add).
pub fn transaction_script(source: Option<&docker::AptRepo>, packages: &[&str]) -> Script {
    let script = Script::new().line("set -e", &[]);
    let script = match source {
        Some(repo) => docker::add_source(script, repo),
        None => script,
    };
    script
        .line(concat!(apt_get!(), " update"), &[])
        .push(concat!(apt_get!(), " install"), &[])
        .words(packages)
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    // Before any apt call of this run.
    if let Some((summary, detail, script)) = repair(&facts.dpkg) {
        plan.change(summary, Action::Apt(script.cmd()))
            .detail(detail);
    }
    let wanted = wanted(settings, &facts.dpkg);
    if wanted.is_empty() {
        return plan;
    }
    let docker_repo = wanted.iter().any(|(step, _)| *step == docker::ID)
        && settings.docker_source == crate::settings::DockerSource::Docker;
    let repo = if docker_repo {
        let ca = facts.dpkg.installed("ca-certificates");
        match docker::plan_repository(&mut plan, &facts.os, settings, ca) {
            Some(repo) => Some(repo),
            None => return plan,
        }
    } else {
        None
    };
    let packages: Vec<&str> = wanted.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let script = transaction_script(repo.as_ref(), &packages);
    let by_step: Vec<String> = wanted
        .iter()
        .map(|(step, p)| format!("{} ({})", p.join(" "), step.name()))
        .collect();
    let mut summary = format!("install {} in one apt transaction", by_step.join(", "));
    let mut detail = String::new();
    if let Some(repo) = &repo {
        summary.push_str(&format!(
            ", Docker Engine from Docker's apt repository: {}",
            repo.sources_line("/etc/apt/keyrings/docker.asc")
        ));
    }
    detail.push_str(&script);
    let action = match pds_image::archive_upload(settings, &facts.image) {
        Some((upload, action)) => {
            summary.push_str(&format!("; meanwhile {upload}"));
            detail.push_str(&format!("\nmeanwhile: {upload}"));
            Action::Together(vec![Action::Apt(script.cmd()), action])
        }
        None => Action::Apt(script.cmd()),
    };
    plan.change(summary, action).detail(detail);
    plan
}

/// Everything the later steps install from apt, in one transaction.
pub struct PackagesStep;

#[async_trait::async_trait(?Send)]
impl super::Step for PackagesStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn probes(&self, _settings: &Settings) -> Vec<Cmd> {
        vec![super::facts::dpkg_status(&[]).cmd]
    }

    fn fresh(&self) -> Facts {
        Facts::fresh()
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        gather(ctx).await
    }

    fn plan(&self, facts: &Facts, input: &super::PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(facts, input.settings))
    }
}

/// One line per package: `status <name> <want> <flag> <state>` (quoted for `sh`).
macro_rules! status_format {
    () => {
        "'status ${Package} ${Status}\\n'"
    };
}

/// A probe printing dpkg's status of `packages` (every package when empty) and,
/// for every package, `dpkg --audit`'s findings, in the form [`DpkgFacts::parse`] reads.
pub fn status_probe(packages: &[&str]) -> Script {
    let query = Script::new()
        .push(concat!("dpkg-query -W -f=", status_format!()), &[])
        .words(packages)
        .line(" 2>/dev/null", &[]);
    let query = if packages.is_empty() {
        query.line("dpkg --audit 2>/dev/null | sed 's/^/audit /'", &[])
    } else {
        query
    };
    query.push("true", &[])
}

/// A package's entry in dpkg's status database (`${Status}`: want, flag, state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub want: String,
    pub flag: String,
    pub state: String,
}

impl Status {
    /// Only `install ok installed` counts: anything else is not ready to use.
    pub fn installed(&self) -> bool {
        self.flag == "ok" && self.state == "installed"
    }

    /// Work dpkg started and did not finish (`dpkg -l` shows `iU`, `iF`, `iH`,
    /// `iW`, `iT` or an `R` error flag).
    pub fn interrupted(&self) -> bool {
        self.flag == "reinstreq"
            || matches!(
                self.state.as_str(),
                "half-installed"
                    | "unpacked"
                    | "half-configured"
                    | "triggers-awaited"
                    | "triggers-pending"
            )
    }
}

/// What dpkg says about the droplet's packages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DpkgFacts {
    pub packages: BTreeMap<String, Status>,
    /// `dpkg --audit` lines (empty on a healthy system).
    pub audit: Vec<String>,
}

impl DpkgFacts {
    /// Reads the output of [`status_probe`]; other lines are ignored.
    pub fn parse(text: &str) -> Self {
        let mut facts = DpkgFacts::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("status ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if let [name, want, flag, state] = words[..] {
                    facts.packages.insert(
                        name.to_string(),
                        Status {
                            want: want.into(),
                            flag: flag.into(),
                            state: state.into(),
                        },
                    );
                }
            } else if let Some(rest) = line.strip_prefix("audit ") {
                if !rest.trim().is_empty() {
                    facts.audit.push(rest.trim_end().to_string());
                }
            }
        }
        facts
    }

    pub fn installed(&self, package: &str) -> bool {
        self.packages.get(package).is_some_and(Status::installed)
    }

    pub fn interrupted(&self, package: &str) -> bool {
        self.packages.get(package).is_some_and(Status::interrupted)
    }

    /// Packages left half done, with their state: `docker.io (unpacked)`.
    pub fn half_done(&self) -> Vec<String> {
        self.packages
            .iter()
            .filter(|(_, s)| s.interrupted())
            .map(|(name, s)| {
                let state = if s.flag == "reinstreq" {
                    format!("{}, needs reinstalling", s.state)
                } else {
                    s.state.clone()
                };
                format!("{name} ({state})")
            })
            .collect()
    }
}

/// Finishes what an interrupted dpkg or apt run left half done. Config files
/// the user changed are kept (`--force-confold`), as in every apt call of pdsup.
/// `dpkg --configure -a` fails for packages whose dependencies were never
/// unpacked (the run was cut short before them); `apt-get -f install` then
/// fetches those and configures the rest, and its outcome is the repair's.
pub fn repair_script() -> Script {
    Script::of(
        concat!(
            "set -e\nexport DEBIAN_FRONTEND=noninteractive\n",
            "dpkg --force-confdef --force-confold --configure -a || echo 'some packages need apt-get -f install' >&2\n",
            apt_get!(),
            " -f install\n"
        ),
        &[],
    )
}

/// The change that repairs interrupted package work, if dpkg reports any:
/// `(summary, detail, script)`. `dpkg --audit` findings that `--configure -a`
/// cannot fix (a package missing its md5sums file) are not a reason to run it,
/// or every run would; they are shown with a real repair.
pub fn repair(facts: &DpkgFacts) -> Option<(String, String, Script)> {
    let half_done = facts.half_done();
    if half_done.is_empty() {
        return None;
    }
    const SHOWN: usize = 4;
    let named = if half_done.len() <= SHOWN {
        half_done.join(", ")
    } else {
        format!(
            "{} and {} more",
            half_done[..SHOWN].join(", "),
            half_done.len() - SHOWN
        )
    };
    let summary = format!(
        "finish interrupted package work (dpkg --configure -a, apt-get -f install): {named}"
    );
    let mut detail = String::from("left half done:\n");
    for package in &half_done {
        detail.push_str(&format!("  {package}\n"));
    }
    detail.push_str(&repair_script());
    if !facts.audit.is_empty() {
        detail.push_str("dpkg --audit reports:\n");
        for line in &facts.audit {
            detail.push_str(&format!("  {line}\n"));
        }
    }
    Some((summary, detail, repair_script()))
}

/// Prints the inode of each dpkg and apt lock file, `/proc/locks`, and the name
/// and command line of every process in it, for [`lock_holder`]. apt's own locks
/// count too: an `apt-get update` left running on the droplet by a cut SSH
/// connection holds the lists lock, and apt fails at once on that one
/// (`DPkg::Lock::Timeout` waits only for dpkg's).
pub const LOCK_PROBE: &str = r#"for f in /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock; do
  [ -e "$f" ] && echo "file $(stat -c %i "$f") $f"
done
sed 's/^/lock /' /proc/locks 2>/dev/null
for pid in $(awk '$2 != "->" {print $5}' /proc/locks 2>/dev/null | sort -u); do
  [ -r "/proc/$pid/comm" ] && echo "comm $pid $(cat "/proc/$pid/comm" 2>/dev/null)"
  [ -r "/proc/$pid/cmdline" ] && echo "cmdline $pid $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)"
done
true"#;

/// A process holding the dpkg lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockHolder {
    /// `None` when the kernel does not say (a process in another PID namespace,
    /// an open file description lock).
    pub pid: Option<u32>,
    /// `/proc/PID/comm`: `unattended-upgr`, `apt-get`, `dpkg`.
    pub name: String,
    /// `/proc/PID/cmdline`, arguments separated by spaces.
    pub cmdline: String,
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pid, self.name.is_empty()) {
            (Some(pid), false) => write!(f, "{} (pid {pid})", self.name),
            (Some(pid), true) => write!(f, "pid {pid}"),
            (None, _) => f.write_str("a process /proc/locks does not name"),
        }
    }
}

/// Who holds the dpkg lock, from [`LOCK_PROBE`]'s output, or `None` when it is
/// free. dpkg and apt lock with `fcntl`, so `/proc/locks` lists the holder with
/// the lock file's inode (`MAJ:MIN:INODE`); only the inode is compared because
/// on overlay filesystems `stat` and `/proc/locks` name different devices. The
/// frontend lock (apt's) wins over dpkg's own when both are held.
pub fn lock_holder(probe: &str) -> Option<LockHolder> {
    let mut inodes: Vec<&str> = Vec::new();
    let mut holders: Vec<(&str, Option<u32>)> = Vec::new();
    let mut comm: BTreeMap<u32, &str> = BTreeMap::new();
    let mut cmdline: BTreeMap<u32, &str> = BTreeMap::new();
    for line in probe.lines() {
        let Some((kind, rest)) = line.split_once(' ') else {
            continue;
        };
        match kind {
            "file" => {
                if let Some(inode) = rest.split_whitespace().next() {
                    inodes.push(inode);
                }
            }
            "lock" => {
                // `1: POSIX  ADVISORY  WRITE 1234 fd:01:393228 0 EOF`; waiters
                // (`1: -> POSIX ...`) do not hold it.
                let cols: Vec<&str> = rest.split_whitespace().collect();
                if cols.get(1) == Some(&"->") || cols.len() < 6 {
                    continue;
                }
                let pid = cols[4].parse::<i64>().ok();
                let Some(inode) = cols[5].rsplit(':').next() else {
                    continue;
                };
                let pid = pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
                holders.push((inode, pid));
            }
            "comm" | "cmdline" => {
                let (pid, text) = rest.split_once(' ').unwrap_or((rest, ""));
                if let Ok(pid) = pid.parse::<u32>() {
                    let map = if kind == "comm" {
                        &mut comm
                    } else {
                        &mut cmdline
                    };
                    map.insert(pid, text.trim());
                }
            }
            _ => {}
        }
    }
    inodes.iter().find_map(|inode| {
        holders
            .iter()
            .find(|(held, _)| held == inode)
            .map(|(_, pid)| LockHolder {
                pid: *pid,
                name: pid.and_then(|p| comm.get(&p)).unwrap_or(&"").to_string(),
                cmdline: pid.and_then(|p| cmdline.get(&p)).unwrap_or(&"").to_string(),
            })
    })
}

pub async fn gather_lock_holder(ctx: &Ctx<'_>) -> Result<Option<LockHolder>> {
    super::facts::dpkg_lock_holder().read(ctx.host).await
}

/// How long pdsup waits for another program's package work (as `APT` does).
const LOCK_WAIT: Duration = Duration::from_secs(900);
const LOCK_POLL: Duration = Duration::from_secs(2);
/// How often a plain (non-terminal) progress log repeats that it still waits.
const LOCK_REPEAT: Duration = Duration::from_secs(15);

/// The progress line while waiting.
pub fn waiting_message(holder: &LockHolder, waited: Duration) -> String {
    let mut text = format!("waiting for the dpkg lock held by {holder}");
    if !holder.cmdline.is_empty() && holder.cmdline != holder.name {
        text.push_str(&format!(": {}", shorten(&holder.cmdline, 80)));
    }
    if waited >= Duration::from_secs(1) {
        text.push_str(&format!(" ({}s so far)", waited.as_secs()));
    }
    text
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

/// Waits until no other program holds the dpkg lock, saying who does meanwhile.
pub async fn wait_for_dpkg_lock(ctx: &Ctx<'_>) -> Result<()> {
    let started = Instant::now();
    let mut last_said: Option<(Instant, LockHolder)> = None;
    loop {
        let Some(holder) = gather_lock_holder(ctx).await? else {
            return Ok(());
        };
        let waited = started.elapsed();
        if waited > LOCK_WAIT {
            bail!(
                TimedOut,
                "the dpkg lock has been held by {holder} for {} minutes: let it finish (or stop it), then run pdsup again",
                LOCK_WAIT.as_secs() / 60
            );
        }
        let message = waiting_message(&holder, waited);
        let repeat = match &last_said {
            None => true,
            Some((at, who)) => *who != holder || at.elapsed() >= LOCK_REPEAT,
        };
        if repeat {
            ctx.progress.waiting(&message);
            last_said = Some((Instant::now(), holder));
        } else {
            ctx.progress.progress(&message);
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// Runs an apt or dpkg command once the dpkg lock is free. apt's own
/// `DPkg::Lock::Timeout` still covers a program that takes the lock between
/// the check and the call.
pub async fn run_apt(ctx: &Ctx<'_>, cmd: &Cmd) -> Result<()> {
    wait_for_dpkg_lock(ctx).await?;
    ctx.host.run(cmd).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{DockerSource, Proxy};

    fn bench_settings() -> Settings {
        let mut settings = Settings::example();
        settings.proxy = Proxy::Caddy;
        settings.docker_source = DockerSource::Distro;
        settings
    }

    fn summaries(plan: &StepPlan) -> Vec<&str> {
        plan.changes.iter().map(|c| c.summary.as_str()).collect()
    }

    #[test]
    fn a_fresh_droplet_gets_one_transaction_with_one_update() {
        let plan = plan(&Facts::fresh(), &bench_settings());
        assert_eq!(
            summaries(&plan),
            ["install docker.io (docker), unzip curl ca-certificates (nomad), caddy (proxy) in one apt transaction"]
        );
        let Action::Apt(cmd) = &plan.changes[0].action else {
            panic!("{:?}", plan.changes[0].action)
        };
        assert_eq!(cmd.script.matches(" update").count(), 1, "{}", cmd.script);
        assert_eq!(cmd.script.matches(" install ").count(), 1, "{}", cmd.script);
        assert!(
            cmd.script
                .ends_with(" install docker.io unzip curl ca-certificates caddy"),
            "{}",
            cmd.script
        );
        assert!(cmd.script.contains("DPkg::Lock::Timeout=900"));
    }

    #[test]
    fn docker_repository_is_checked_then_added_in_the_transaction() {
        let mut settings = bench_settings();
        settings.docker_source = DockerSource::Docker;
        let plan = plan(&Facts::fresh(), &settings);
        let s = summaries(&plan);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].starts_with("trust Docker's apt signing key"), "{s:?}");
        assert!(s[1].starts_with("check that https://download.docker.com/linux/ubuntu noble"));
        assert!(s[2].starts_with("install docker-ce docker-ce-cli containerd.io (docker), unzip curl ca-certificates (nomad), caddy (proxy) in one apt transaction, Docker Engine from Docker's apt repository: deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable"), "{s:?}");
        let script = |i: usize| match &plan.changes[i].action {
            Action::Apt(cmd) => cmd.script.clone(),
            other => panic!("{other:?}"),
        };
        // ca-certificates is not there: the check installs it first (its own update).
        assert!(
            script(1).contains("install ca-certificates"),
            "{}",
            script(1)
        );
        let tx = script(2);
        let source = tx.find("> /etc/apt/sources.list.d/docker.list").unwrap();
        let update = tx.find(" update").unwrap();
        assert!(source < update, "{tx}");
        assert_eq!(tx.matches(" update").count(), 1, "{tx}");
        // With ca-certificates there, the check runs no full update of its own.
        let facts = Facts {
            dpkg: DpkgFacts::parse("status ca-certificates install ok installed\n"),
            ..Facts::fresh()
        };
        let plan = super::plan(&facts, &settings);
        let Action::Apt(check) = &plan.changes[1].action else {
            panic!()
        };
        assert!(
            !check.script.contains("install ca-certificates"),
            "{}",
            check.script
        );
        assert!(!check.script.contains("-y -q update"), "{}", check.script);
        // Nor for a mirror over http, which needs no CA roots.
        settings.docker_apt.url = "http://10.213.0.1:8080/docker-apt/linux".into();
        let plan = super::plan(&Facts::fresh(), &settings);
        let Action::Apt(check) = &plan.changes[1].action else {
            panic!()
        };
        assert!(
            !check.script.contains("install ca-certificates"),
            "{}",
            check.script
        );
    }

    #[test]
    fn installed_packages_converge_and_half_done_work_is_repaired_first() {
        let all = "status docker.io install ok installed\nstatus unzip install ok installed\n\
                   status curl install ok installed\nstatus ca-certificates install ok installed\n\
                   status caddy install ok installed\n";
        let facts = Facts {
            dpkg: DpkgFacts::parse(all),
            ..Facts::fresh()
        };
        assert!(plan(&facts, &bench_settings()).is_unchanged());
        // docker-ce counts as an engine too, whatever --docker-source says.
        let ce = Facts {
            dpkg: DpkgFacts::parse(&all.replace("docker.io", "docker-ce")),
            ..Facts::fresh()
        };
        assert!(plan(&ce, &bench_settings()).is_unchanged());
        let half = Facts {
            dpkg: DpkgFacts::parse(
                &all.replace("caddy install ok installed", "caddy install ok unpacked"),
            ),
            ..Facts::fresh()
        };
        let p = plan(&half, &bench_settings());
        assert_eq!(p.changes.len(), 2, "{:?}", summaries(&p));
        assert!(p.changes[0]
            .summary
            .starts_with("finish interrupted package work"));
        // caddy was not `install ok installed`, so the transaction has it (apt
        // leaves a package the repair finished alone).
        assert!(
            p.changes[1].summary.starts_with("install caddy (proxy)"),
            "{:?}",
            summaries(&p)
        );
    }

    #[test]
    fn the_image_archive_is_uploaded_while_apt_runs() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("pds.tar");
        std::fs::write(&archive, b"0123456789").unwrap();
        let mut settings = bench_settings();
        settings.pds_image_archive = Some(archive.clone());
        let p = plan(&Facts::fresh(), &settings);
        assert_eq!(p.changes.len(), 1);
        assert!(
            p.changes[0].summary.ends_with(&format!(
                "in one apt transaction; meanwhile upload the PDS image archive {}",
                archive.display()
            )),
            "{}",
            p.changes[0].summary
        );
        match &p.changes[0].action {
            Action::Together(actions) => {
                assert!(matches!(actions[0], Action::Apt(_)), "{actions:?}");
                assert!(
                    matches!(&actions[1], Action::Upload { local, .. } if *local == archive),
                    "{actions:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Staged already (a run cut short after the transaction), or the image loaded: apt alone.
        for image in [
            pds_image::ImageFacts {
                present: false,
                staged_size: Some(10),
            },
            pds_image::ImageFacts {
                present: true,
                staged_size: None,
            },
        ] {
            let facts = Facts {
                image,
                ..Facts::fresh()
            };
            let p = plan(&facts, &settings);
            assert!(
                matches!(p.changes[0].action, Action::Apt(_)),
                "{:?}",
                p.changes[0]
            );
        }
    }

    #[test]
    fn status_lines_parse_and_only_ok_installed_counts() {
        let text = "status docker.io install ok unpacked\n\
                    status containerd install ok half-configured\n\
                    status curl install ok installed\n\
                    status unzip deinstall ok config-files\n\
                    status caddy unknown ok not-installed\n\
                    status libfoo1 install reinstreq half-installed\n\
                    status man-db install ok triggers-pending\n\
                    status runc install ok triggers-awaited\n\
                    status tini install ok installed\n\
                    audit The following packages are only half configured, probably due to problems\n\
                    audit  containerd           daemon to control containers\n\
                    systemd=active\n\
                    status broken-line\n";
        let facts = DpkgFacts::parse(text);
        let table = [
            ("docker.io", false, true),
            ("containerd", false, true),
            ("curl", true, false),
            ("unzip", false, false),
            ("caddy", false, false),
            ("libfoo1", false, true),
            ("man-db", false, true),
            ("runc", false, true),
            ("tini", true, false),
            ("sqlite3", false, false),
        ];
        for (name, installed, interrupted) in table {
            assert_eq!(facts.installed(name), installed, "{name} installed");
            assert_eq!(facts.interrupted(name), interrupted, "{name} interrupted");
        }
        assert_eq!(facts.audit.len(), 2);
        assert_eq!(facts.packages.len(), 9);
        assert_eq!(
            facts.half_done(),
            [
                "containerd (half-configured)",
                "docker.io (unpacked)",
                "libfoo1 (half-installed, needs reinstalling)",
                "man-db (triggers-pending)",
                "runc (triggers-awaited)",
            ]
        );
    }

    #[test]
    fn repair_only_when_dpkg_has_unfinished_work() {
        let healthy = DpkgFacts::parse("status curl install ok installed\n");
        assert_eq!(repair(&healthy), None);
        // An audit finding that `--configure -a` cannot fix does not make every run repair.
        let md5 = DpkgFacts::parse(
            "status curl install ok installed\naudit The following packages are missing the md5sums control file\n",
        );
        assert_eq!(repair(&md5), None);
        let half = DpkgFacts::parse(
            "status docker.io install ok unpacked\naudit The following packages have been unpacked but not yet configured.\n",
        );
        let (summary, detail, script) = repair(&half).expect("a repair");
        assert!(summary.contains("docker.io (unpacked)"), "{summary}");
        assert!(script.contains("dpkg --force-confdef --force-confold --configure -a"));
        assert!(script.contains("apt-get -o DPkg::Lock::Timeout=900"));
        assert!(script.contains("-y -q -f install"), "{script}");
        assert!(
            detail.contains("unpacked but not yet configured"),
            "{detail}"
        );
        // Many packages (a kill during a big install): a few named, all in the detail.
        let many: String = (0..30)
            .map(|i| format!("status lib{i:02} install ok unpacked\n"))
            .collect();
        let (summary, detail, _) = repair(&DpkgFacts::parse(&many)).expect("a repair");
        assert!(
            summary.ends_with(": lib00 (unpacked), lib01 (unpacked), lib02 (unpacked), lib03 (unpacked) and 26 more"),
            "{summary}"
        );
        assert!(detail.contains("  lib29 (unpacked)\n"), "{detail}");
    }

    #[test]
    fn status_probe_asks_for_the_named_packages_or_all_with_audit() {
        let one = status_probe(&["docker.io", "containerd.io"]);
        assert!(
            one.contains(
                "dpkg-query -W -f='status ${Package} ${Status}\\n' docker.io containerd.io"
            ),
            "{one}"
        );
        assert!(!one.contains("--audit"));
        let all = status_probe(&[]);
        assert!(all.contains("dpkg --audit"), "{all}");
        // The probe runs as written against this (Debian) machine's dpkg: the
        // format reaches dpkg-query with its `\n`, and dpkg itself is installed.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(status_probe(&["dpkg", "pdsup-no-such-package"]))
            .output()
            .unwrap();
        assert!(out.status.success());
        let facts = DpkgFacts::parse(&String::from_utf8_lossy(&out.stdout));
        assert!(facts.installed("dpkg"), "{facts:?}");
        assert!(!facts.installed("pdsup-no-such-package"));
    }

    const FILES: &str = "file 393228 /var/lib/dpkg/lock-frontend\nfile 393227 /var/lib/dpkg/lock\n";

    #[test]
    fn lock_holders_are_found_from_proc_locks() {
        let cases: Vec<(&str, String, Option<LockHolder>)> = vec![
            (
                "nothing locked",
                format!("{FILES}lock 1: FLOCK  ADVISORY  WRITE 88 00:1a:77 0 EOF\ncomm 88 cron\n"),
                None,
            ),
            (
                "unattended-upgrades on the frontend lock",
                format!(
                    "{FILES}lock 1: POSIX  ADVISORY  WRITE 1234 fd:01:393228 0 EOF\n\
                     lock 2: POSIX  ADVISORY  WRITE 1234 fd:01:393227 0 EOF\n\
                     lock 3: POSIX  ADVISORY  WRITE 9 00:19:1000 0 EOF\n\
                     comm 1234 unattended-upgr\n\
                     cmdline 1234 /usr/bin/python3 /usr/bin/unattended-upgrade --download-only \n\
                     comm 9 systemd\n"
                ),
                Some(LockHolder {
                    pid: Some(1234),
                    name: "unattended-upgr".into(),
                    cmdline: "/usr/bin/python3 /usr/bin/unattended-upgrade --download-only".into(),
                }),
            ),
            (
                "dpkg alone on its own lock, a waiter queued on the frontend",
                format!(
                    "{FILES}lock 1: -> POSIX  ADVISORY  WRITE 77 08:02:393228 0 EOF\n\
                     lock 2: POSIX  ADVISORY  WRITE 555 08:02:393227 0 EOF\n\
                     comm 555 dpkg\ncmdline 555 /usr/bin/dpkg --configure -a \n"
                ),
                Some(LockHolder {
                    pid: Some(555),
                    name: "dpkg".into(),
                    cmdline: "/usr/bin/dpkg --configure -a".into(),
                }),
            ),
            (
                "an apt-get update left running by a cut connection, on apt's lists lock",
                format!(
                    "{FILES}file 401 /var/lib/apt/lists/lock\nfile 402 /var/cache/apt/archives/lock\n\
                     lock 1: POSIX  ADVISORY  WRITE 133 00:2b:401 0 EOF\n\
                     comm 133 apt-get\ncmdline 133 apt-get -y -q update \n"
                ),
                Some(LockHolder {
                    pid: Some(133),
                    name: "apt-get".into(),
                    cmdline: "apt-get -y -q update".into(),
                }),
            ),
            (
                "a holder in another PID namespace",
                format!("{FILES}lock 1: POSIX  ADVISORY  WRITE 0 00:2b:393228 0 EOF\n"),
                Some(LockHolder {
                    pid: None,
                    name: String::new(),
                    cmdline: String::new(),
                }),
            ),
            (
                "a holder that exited between the two reads",
                format!("{FILES}lock 1: POSIX  ADVISORY  WRITE 4321 00:2b:393228 0 EOF\n"),
                Some(LockHolder {
                    pid: Some(4321),
                    name: String::new(),
                    cmdline: String::new(),
                }),
            ),
            (
                "no dpkg lock files at all",
                "lock 1: POSIX  ADVISORY  WRITE 4321 00:2b:393228 0 EOF\n".to_string(),
                None,
            ),
            ("empty output", String::new(), None),
        ];
        for (what, probe, want) in cases {
            assert_eq!(lock_holder(&probe), want, "{what}");
        }
    }

    #[test]
    fn waiting_message_names_the_holder() {
        let holder = LockHolder {
            pid: Some(1234),
            name: "unattended-upgr".into(),
            cmdline: "/usr/bin/python3 /usr/bin/unattended-upgrade".into(),
        };
        assert_eq!(
            waiting_message(&holder, Duration::from_secs(42)),
            "waiting for the dpkg lock held by unattended-upgr (pid 1234): /usr/bin/python3 /usr/bin/unattended-upgrade (42s so far)"
        );
        let bare = LockHolder {
            pid: Some(7),
            ..LockHolder::default()
        };
        assert_eq!(
            waiting_message(&bare, Duration::ZERO),
            "waiting for the dpkg lock held by pid 7"
        );
    }

    /// The lock probe runs with the tools of a minimal Debian (sh, sed, awk,
    /// stat, tr) and its output parses; on this machine the lock files may not
    /// exist, so only the shape is checked.
    #[test]
    fn lock_probe_runs_under_sh() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(LOCK_PROBE)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().all(|l| ["file ", "lock ", "comm ", "cmdline "]
                .iter()
                .any(|p| l.starts_with(p))),
            "{text}"
        );
    }
}
