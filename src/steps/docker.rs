//! Docker: installed and running. `--docker-source docker` (default, the seed's
//! way) uses Docker's apt repository, or a mirror laid out like it
//! (`--docker-apt-url`, the OS id appended as in Docker's layout), trusting
//! Docker's key shipped in pdsup or `--docker-apt-key`; `distro` the
//! distribution's `docker.io`. The repository is fetched once with the trusted
//! key alone before anything in /etc/apt changes, so a repository that does not
//! verify is refused with apt's configuration as it was. An engine that is
//! already there is kept, whichever package it came from.
//!
//! The packages are installed by the packages step, in the one apt transaction
//! of a run ([`packages`] says which, [`plan_repository`] stages and checks the
//! repository first); this step starts the service and checks dpkg's word.

use std::path::Path;

use crate::error::{bail, err, Context, Result};

use super::facts;
use super::packages::DpkgFacts;
use super::{Action, Contents, Ctx, StepId, StepPlan};
use crate::host::facts as host_facts;
use crate::host::{Cmd, FileMode, Script};
use crate::nomad::release;
use crate::settings::{AptKey, DockerApt, DockerSource, Settings, DOCKER_APT_URL};

pub const ID: StepId = StepId::new("docker", "docker");

/// apt-get that waits for a fresh droplet's unattended-upgrades instead of failing
/// (a macro, so that scripts can `concat!` it into their static templates).
macro_rules! apt_get {
    () => {
        "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 -o Dpkg::Options::=--force-confold -y -q"
    };
}
pub(crate) use apt_get;

/// The same apt-get prefix, as a value.
pub const APT: &str = apt_get!();

/// Packages that provide a Docker engine (the distribution's or Docker's).
const ENGINE_PACKAGES: [&str; 2] = ["docker.io", "docker-ce"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The engine packages' dpkg status.
    pub dpkg: DpkgFacts,
    pub active: bool,
    pub enabled: bool,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts::default()
    }

    /// An engine package is `install ok installed`.
    pub fn engine_installed(&self) -> bool {
        ENGINE_PACKAGES.iter().any(|p| self.dpkg.installed(p))
    }
}

/// The commands of the facts [`gather`] reads.
pub fn probes(_settings: &Settings) -> Vec<Cmd> {
    vec![
        facts::dpkg_status(&ENGINE_PACKAGES).cmd,
        host_facts::unit_active("docker").cmd,
        host_facts::unit_enabled("docker").cmd,
    ]
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    Ok(Facts {
        dpkg: ctx.read(&facts::dpkg_status(&ENGINE_PACKAGES)).await?,
        active: ctx.read(&host_facts::unit_active("docker")).await?,
        enabled: ctx.read(&host_facts::unit_enabled("docker")).await?,
    })
}

/// What Docker needs apt to install: nothing when an engine is there, or was
/// being installed when its run was cut short (the repair finishes it, so
/// neither it nor its rival package is installed again).
pub fn packages(settings: &Settings, dpkg: &DpkgFacts) -> &'static [&'static str] {
    let engine = ENGINE_PACKAGES
        .iter()
        .any(|p| dpkg.installed(p) || dpkg.interrupted(p));
    match (engine, settings.docker_source) {
        (true, _) => &[],
        (false, DockerSource::Docker) => &DOCKER_CE_PACKAGES,
        (false, DockerSource::Distro) => &["docker.io"],
    }
}

/// Docker Engine's packages in Docker's repository.
const DOCKER_CE_PACKAGES: [&str; 3] = ["docker-ce", "docker-ce-cli", "containerd.io"];

/// Docker's apt signing key, shipped in `assets/` so that nothing fetched at run
/// time decides what the droplet trusts (fingerprint checked in the tests).
pub const DOCKER_APT_KEY: &str = include_str!("../../assets/docker-apt-key.asc");
pub const DOCKER_APT_KEY_FINGERPRINT: &str = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88";
const DOCKER_APT_KEY_PATH: &str = "/etc/apt/keyrings/docker.asc";
const DOCKER_APT_LIST_PATH: &str = "/etc/apt/sources.list.d/docker.list";
/// Where the key and a one-source list wait while the repository is checked, so
/// that apt's own configuration changes only once the repository verified. Not
/// under /tmp: apt reads keys as `_apt`, and the directory is made world-readable.
const STAGING: &str = "/var/tmp/pdsup-docker-apt";

/// The releases pdsup supports and the suite Docker publishes each under
/// (`<url>/<id>/dists/<codename>`). A table, not the droplet's `$VERSION_CODENAME`
/// spliced into a URL: a release missing here is refused before apt is touched,
/// and every line pdsup can write is unit-tested.
const DOCKER_SUITES: &[(&str, &str, &str)] = &[
    ("ubuntu", "22.04", "jammy"),
    ("ubuntu", "24.04", "noble"),
    ("debian", "12", "bookworm"),
    ("debian", "13", "trixie"),
];

/// The droplet's release, from /etc/os-release and dpkg.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`: debian, ubuntu.
    pub id: String,
    /// `VERSION_ID`: 12, 24.04.
    pub version_id: String,
    /// `VERSION_CODENAME`, when the file has one.
    pub codename: String,
    /// `dpkg --print-architecture`: amd64, arm64.
    pub arch: String,
    /// `PRETTY_NAME`, for messages: `Debian GNU/Linux 12 (bookworm)`.
    pub name: String,
}

impl OsRelease {
    /// What `pdsup plan` assumes without a droplet (preflight's fresh droplet).
    pub fn fresh() -> Self {
        OsRelease {
            id: "ubuntu".into(),
            version_id: "24.04".into(),
            codename: "noble".into(),
            arch: "amd64".into(),
            name: "Ubuntu 24.04 LTS (a fresh droplet)".into(),
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut os = OsRelease::default();
        for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
            let value = value.trim().to_string();
            match key {
                "id" => os.id = value,
                "version_id" => os.version_id = value,
                "codename" => os.codename = value,
                "arch" => os.arch = value,
                "name" => os.name = value,
                _ => {}
            }
        }
        os
    }
}

pub async fn gather_os(ctx: &mut Ctx<'_>) -> Result<OsRelease> {
    ctx.read(&facts::os_release()).await
}

/// Docker's repository (or a mirror of it) as one droplet uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptRepo {
    /// `<base>/<os id>`, e.g. https://download.docker.com/linux/debian.
    pub url: String,
    pub suite: &'static str,
    pub arch: String,
}

impl AptRepo {
    /// The repository for this droplet, or why there is none.
    pub fn for_droplet(base_url: &str, os: &OsRelease) -> Result<AptRepo, String> {
        let Some(&(id, _, suite)) = DOCKER_SUITES
            .iter()
            .find(|(id, version, _)| *id == os.id && *version == os.version_id)
        else {
            return Err(format!(
                "pdsup knows Docker's repository suites for Ubuntu 22.04/24.04 and Debian 12/13, not {} {}: use --docker-source distro",
                os.id, os.version_id
            ));
        };
        if !os.codename.is_empty() && os.codename != suite {
            return Err(format!(
                "the droplet's /etc/os-release names {} {} `{}`, not `{suite}`: its release files look altered; fix /etc/os-release or use --docker-source distro",
                os.id, os.version_id, os.codename
            ));
        }
        if !matches!(os.arch.as_str(), "amd64" | "arm64") {
            return Err(format!(
                "Docker's repository serves amd64 and arm64 for pdsup, but dpkg reports `{}`",
                os.arch
            ));
        }
        Ok(AptRepo {
            url: format!("{}/{id}", base_url.trim_end_matches('/')),
            suite,
            arch: os.arch.clone(),
        })
    }

    /// The one-line apt source, as Docker's install guide writes it.
    pub fn sources_line(&self, key_path: &str) -> String {
        format!(
            "deb [arch={} signed-by={key_path}] {} {} stable",
            self.arch, self.url, self.suite
        )
    }
}

/// Reads `--docker-apt-key FILE` here, before connecting: an ASCII-armored OpenPGP
/// public key whose self-signatures hold (apt writes it as an `.asc` keyring).
pub fn read_apt_key(path: &Path) -> Result<AptKey> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .with_context(|| format!("--docker-apt-key {shown}: cannot read it"))
        .kind(crate::error::ErrorKind::BadInput)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        err!(BadInput, "--docker-apt-key {shown}: not ASCII-armored (a binary keyring?); give the armored public key, `gpg --armor --export KEYID`")
    })?;
    if text.contains("PRIVATE KEY BLOCK") {
        bail!(BadInput, "--docker-apt-key {shown} holds a secret key: give only the public key (`gpg --armor --export KEYID`)");
    }
    let key = release::parse_key(&text).map_err(|e| {
        err!(BadInput, "--docker-apt-key {shown}: not an ASCII-armored OpenPGP public key ({e}); export one with `gpg --armor --export KEYID`")
    })?;
    key.verify_bindings().map_err(|e| {
        err!(BadInput, "--docker-apt-key {shown}: the key's self-signatures do not verify ({e}); export the key again from its owner")
    })?;
    Ok(AptKey {
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        armored: text,
        fingerprint: release::fingerprint(&key),
    })
}

/// The key the droplet will trust for the repository: its armored text, its name
/// (fingerprint only: it goes into scripts), and where it came from.
fn trusted_key(apt: &DockerApt) -> (String, String, String) {
    match &apt.key {
        Some(key) => (
            key.armored.clone(),
            format!("the key {}", key.fingerprint),
            format!(" from {}", key.path.display()),
        ),
        None => (
            DOCKER_APT_KEY.to_string(),
            format!("Docker's apt signing key {DOCKER_APT_KEY_FINGERPRINT}"),
            String::new(),
        ),
    }
}

/// Docker's repository, when the engine is to come from it: its key staged and
/// the repository checked against that key alone, before anything in /etc/apt
/// changes. Returns the repository, for [`add_source`] in the transaction; a
/// release Docker does not serve is a blocker. `ca_certificates`: dpkg says the
/// package is installed; without it, the check installs it first (a round of
/// apt of its own) when the repository is https.
pub fn plan_repository(
    plan: &mut StepPlan,
    os: &OsRelease,
    settings: &Settings,
    ca_certificates: bool,
) -> Option<AptRepo> {
    let repo = match AptRepo::for_droplet(&settings.docker_apt.url, os) {
        Ok(repo) => repo,
        Err(why) => {
            plan.blockers.push(why);
            return None;
        }
    };
    let (armored, key_name, origin) = trusted_key(&settings.docker_apt);
    plan.change(
        format!(
            "trust {key_name}{origin} for {} (staged in {STAGING})",
            repo.url
        ),
        Action::Write {
            path: format!("{STAGING}/docker.asc"),
            contents: Contents::Text(armored),
            mode: FileMode::root(0o644),
        },
    );
    // apt needs the CA roots for an https repository only (a mirror may be http).
    let tls_ready = ca_certificates || !repo.url.starts_with("https://");
    let check = check_script(&repo, &key_name, tls_ready);
    plan.change(
        format!(
            "check that {} {} is signed by that key",
            repo.url, repo.suite
        ),
        Action::Apt(check.clone().cmd()),
    )
    .detail(check.to_string());
    Some(repo)
}

/// Fetches the repository's signed index with the staged key only; on failure the
/// staging directory goes and nothing of apt's configuration has changed.
pub fn check_script(repo: &AptRepo, key_name: &str, tls_ready: bool) -> Script {
    let key = format!("{STAGING}/docker.asc");
    let list = format!("{STAGING}/docker.list");
    let none = format!("{STAGING}/none");
    let log = format!("{STAGING}/check.log");
    let (url, suite) = (&repo.url, repo.suite);
    let refused = format!(
        "pdsup: refused {url} {suite}: it is not signed by {key_name}. Nothing was changed. For a mirror of your own, give its key with --docker-apt-key FILE; otherwise the mirror (--docker-apt-url) may be tampered with."
    );
    let unreachable = format!(
        "pdsup: apt could not fetch {url} {suite}. Nothing was changed. Check --docker-apt-url: a mirror laid out like {DOCKER_APT_URL}, without the /debian or /ubuntu pdsup appends."
    );
    let script = Script::new()
        .line("# check the repository against the staged key alone", &[])
        .line("set -e", &[]);
    // Only when missing: its own `apt-get update` is a round of apt the run saves.
    let script = if tls_ready {
        script
    } else {
        script
            .line(concat!(apt_get!(), " update"), &[])
            .line(concat!(apt_get!(), " install ca-certificates"), &[])
    };
    script
        .line("chmod 0755 {}", &[STAGING])
        .line("echo {} > {}", &[&repo.sources_line(&key), &list])
        .line("mkdir -p {}", &[&none])
        .line(
            "if ! apt-get -q -o Dir::Etc::SourceList={} -o Dir::Etc::SourceParts={} -o APT::Get::List-Cleanup=0 update > {} 2>&1; then",
            &[&list, &none, &log],
        )
        .line("  grep -E '^(E|W|Err):' {} >&2 || tail -n 5 {} >&2", &[&log, &log])
        .line(
            "  if grep -qiE 'NO_PUBKEY|not signed|BADSIG|EXPKEYSIG|signature' {}; then",
            &[&log],
        )
        .line("    echo {} >&2", &[&refused])
        .line("  else", &[])
        .line("    echo {} >&2", &[&unreachable])
        .line("  fi", &[])
        .line("  rm -rf {}", &[STAGING])
        .line("  exit 1", &[])
        .line("fi", &[])
}

/// `script` then the lines that install the checked key and source for apt
/// (the transaction's `apt-get update` follows them).
pub fn add_source(script: Script, repo: &AptRepo) -> Script {
    let line = repo.sources_line(DOCKER_APT_KEY_PATH);
    script
        .line("# Docker's checked key and source", &[])
        .line("install -d -m 0755 /etc/apt/keyrings", &[])
        .line(
            "install -m 0644 {} {}",
            &[&format!("{STAGING}/docker.asc"), DOCKER_APT_KEY_PATH],
        )
        .line("echo {} > {}", &[&line, DOCKER_APT_LIST_PATH])
        .line("rm -rf {}", &[STAGING])
}

/// Docker's service, once the packages step installed the engine. A droplet
/// without an engine (a dry run, or a transaction that did not take) plans
/// the start, and the re-check fails on it after a real run.
pub fn plan(facts: &Facts) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    if !facts.engine_installed() || !facts.active || !facts.enabled {
        plan.change(
            "enable and start the docker service",
            Action::Run(Cmd::sh("systemctl enable --now docker")),
        );
    }
    plan
}

/// Docker Engine from Docker's apt repository or the distribution.
pub struct DockerStep;

#[async_trait::async_trait(?Send)]
impl super::Step for DockerStep {
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

    fn plan(&self, facts: &Facts, _input: &super::PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::{packages, Change};

    /// The droplet as the Docker tests see it: the other steps' packages are
    /// there unless the test's dpkg status says otherwise.
    #[derive(Clone, Default)]
    struct Facts {
        dpkg: DpkgFacts,
        active: bool,
        enabled: bool,
        os: OsRelease,
    }

    impl Facts {
        fn fresh() -> Self {
            Facts {
                os: OsRelease::fresh(),
                ..Facts::default()
            }
        }
    }

    /// The packages step's plan, then the docker step's (in a run it is planned
    /// after the transaction; here against the same facts), as a run shows them.
    fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
        let mut dpkg = facts.dpkg.clone();
        for other in ["unzip", "curl", "ca-certificates", "caddy"] {
            if !dpkg.packages.contains_key(other) {
                let ok = DpkgFacts::parse(&format!("status {other} install ok installed\n"));
                dpkg.packages.extend(ok.packages);
            }
        }
        let mut plan = packages::plan(
            &packages::Facts {
                dpkg,
                os: facts.os.clone(),
                image: Default::default(),
            },
            settings,
        );
        if !plan.blockers.is_empty() {
            return plan;
        }
        let docker = super::plan(&super::Facts {
            dpkg: facts.dpkg.clone(),
            active: facts.active,
            enabled: facts.enabled,
        });
        plan.changes.extend(docker.changes);
        plan
    }

    fn os(id: &str, version_id: &str, codename: &str, arch: &str) -> OsRelease {
        OsRelease {
            id: id.into(),
            version_id: version_id.into(),
            codename: codename.into(),
            arch: arch.into(),
            name: String::new(),
        }
    }

    fn line(os: &OsRelease) -> String {
        AptRepo::for_droplet(DOCKER_APT_URL, os)
            .expect("supported")
            .sources_line(DOCKER_APT_KEY_PATH)
    }

    // One test per supported release: the exact line written to docker.list.
    #[test]
    fn sources_line_ubuntu_22_04_jammy() {
        assert_eq!(
            line(&os("ubuntu", "22.04", "jammy", "amd64")),
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu jammy stable"
        );
        assert_eq!(
            line(&os("ubuntu", "22.04", "jammy", "arm64")),
            "deb [arch=arm64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu jammy stable"
        );
    }

    #[test]
    fn sources_line_ubuntu_24_04_noble() {
        assert_eq!(
            line(&os("ubuntu", "24.04", "noble", "amd64")),
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable"
        );
        assert_eq!(
            line(&os("ubuntu", "24.04", "noble", "arm64")),
            "deb [arch=arm64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable"
        );
    }

    #[test]
    fn sources_line_debian_12_bookworm() {
        assert_eq!(
            line(&os("debian", "12", "bookworm", "amd64")),
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable"
        );
        assert_eq!(
            line(&os("debian", "12", "bookworm", "arm64")),
            "deb [arch=arm64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable"
        );
    }

    #[test]
    fn sources_line_debian_13_trixie() {
        assert_eq!(
            line(&os("debian", "13", "trixie", "amd64")),
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian trixie stable"
        );
        assert_eq!(
            line(&os("debian", "13", "trixie", "arm64")),
            "deb [arch=arm64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian trixie stable"
        );
    }

    #[test]
    fn os_release_facts_are_parsed_and_an_os_release_without_codename_is_fine() {
        let parsed = OsRelease::parse("id=debian\nversion_id=13\ncodename=\narch=arm64\n");
        assert_eq!(parsed, os("debian", "13", "", "arm64"));
        assert!(line(&parsed).ends_with("/linux/debian trixie stable"));
    }

    #[test]
    fn releases_docker_does_not_serve_here_are_blocked_before_apt() {
        for (os, needle) in [
            (os("debian", "11", "bullseye", "amd64"), "not debian 11"),
            (os("ubuntu", "25.04", "plucky", "amd64"), "not ubuntu 25.04"),
            (
                os("debian", "12", "trixie", "amd64"),
                "`trixie`, not `bookworm`",
            ),
            (os("debian", "12", "bookworm", "armhf"), "`armhf`"),
        ] {
            let err = AptRepo::for_droplet(DOCKER_APT_URL, &os).unwrap_err();
            assert!(err.contains(needle), "{os:?}: {err}");
            let facts = Facts {
                os: os.clone(),
                ..Facts::fresh()
            };
            let plan = plan(&facts, &Settings::example());
            assert_eq!(plan.blockers, vec![err], "{os:?}");
            assert!(plan.changes.is_empty(), "{os:?}: {:?}", plan.changes);
        }
    }

    #[test]
    fn fresh_droplet_installs_from_the_chosen_source() {
        let mut settings = Settings::example();
        let plan = plan(&Facts::fresh(), &settings);
        let summaries: Vec<&str> = plan.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(plan.changes.len(), 4, "{summaries:?}");
        assert_eq!(
            summaries[0],
            "trust Docker's apt signing key 9DC858229FC7DD38854AE2D88D81803C0EBFCD88 for https://download.docker.com/linux/ubuntu (staged in /var/tmp/pdsup-docker-apt)"
        );
        match &plan.changes[0].action {
            Action::Write {
                path,
                contents: Contents::Text(text),
                ..
            } => {
                assert_eq!(path, "/var/tmp/pdsup-docker-apt/docker.asc");
                assert_eq!(text, DOCKER_APT_KEY);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            summaries[1],
            "check that https://download.docker.com/linux/ubuntu noble is signed by that key"
        );
        let check = script(&plan.changes[1]);
        assert!(check.contains("echo 'deb [arch=amd64 signed-by=/var/tmp/pdsup-docker-apt/docker.asc] https://download.docker.com/linux/ubuntu noble stable' > /var/tmp/pdsup-docker-apt/docker.list"), "{check}");
        assert!(
            check.contains("-o Dir::Etc::SourceList=/var/tmp/pdsup-docker-apt/docker.list"),
            "{check}"
        );
        // The check never writes to apt's own configuration.
        assert!(!check.contains("/etc/apt"), "{check}");
        assert!(summaries[2].contains("Docker's apt repository"));
        let install = script(&plan.changes[2]);
        assert!(install.contains("echo 'deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable' > /etc/apt/sources.list.d/docker.list"), "{install}");
        assert!(install.contains("install docker-ce docker-ce-cli containerd.io"));
        settings.docker_source = DockerSource::Distro;
        let plan = self::plan(&Facts::fresh(), &settings);
        assert!(script(&plan.changes[0]).contains("install docker.io"));
    }

    fn script(change: &Change) -> &str {
        match &change.action {
            Action::Run(cmd) | Action::Apt(cmd) => &cmd.script,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/docker-apt")
            .join(name)
    }

    #[test]
    fn a_mirror_and_its_own_key_are_used_and_named_in_the_plan() {
        let key = read_apt_key(&fixture("mirror-key.asc")).unwrap();
        assert_eq!(key.fingerprint, "5968A284C69DB5AABD29FA9DD0488F1CD634191D");
        let mut settings = Settings::example();
        settings.docker_apt = DockerApt {
            url: "http://10.213.0.1:8080/docker-apt/linux".into(),
            key: Some(key.clone()),
        };
        let facts = Facts {
            os: os("debian", "12", "bookworm", "amd64"),
            ..Facts::fresh()
        };
        let plan = plan(&facts, &settings);
        assert!(
            plan.changes[0]
                .summary
                .starts_with("trust the key 5968A284C69DB5AABD29FA9DD0488F1CD634191D from /"),
            "{}",
            plan.changes[0].summary
        );
        match &plan.changes[0].action {
            Action::Write {
                contents: Contents::Text(text),
                ..
            } => assert_eq!(text, &key.armored),
            other => panic!("unexpected {other:?}"),
        }
        assert!(script(&plan.changes[1])
            .contains("refused http://10.213.0.1:8080/docker-apt/linux/debian bookworm: it is not signed by the key 5968A284C69DB5AABD29FA9DD0488F1CD634191D"));
        assert!(script(&plan.changes[2]).contains(
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] http://10.213.0.1:8080/docker-apt/linux/debian bookworm stable"
        ));
    }

    #[test]
    fn apt_keys_that_are_not_armored_public_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = fixture("mirror-key.secret.asc");
        let err = read_apt_key(&secret).unwrap_err().to_string();
        assert!(err.contains("secret key"), "{err}");
        let binary = dir.path().join("key.gpg");
        std::fs::write(&binary, [0x99u8, 0x01, 0xff, 0xfe, 0x00]).unwrap();
        let err = read_apt_key(&binary).unwrap_err().to_string();
        assert!(err.contains("not ASCII-armored"), "{err}");
        let text = dir.path().join("key.asc");
        std::fs::write(&text, "not a key\n").unwrap();
        let err = read_apt_key(&text).unwrap_err().to_string();
        assert!(
            err.contains("not an ASCII-armored OpenPGP public key"),
            "{err}"
        );
        let err = read_apt_key(&dir.path().join("missing.asc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read it"), "{err}");
        // Docker's own key passes the same checks.
        let docker = dir.path().join("docker.asc");
        std::fs::write(&docker, DOCKER_APT_KEY).unwrap();
        assert_eq!(
            read_apt_key(&docker).unwrap().fingerprint,
            DOCKER_APT_KEY_FINGERPRINT
        );
    }

    #[test]
    fn shipped_docker_key_has_dockers_fingerprint() {
        use pgp::composed::{Deserializable, SignedPublicKey};
        use pgp::types::KeyDetails;
        let (key, _) = SignedPublicKey::from_string(DOCKER_APT_KEY).expect("armored key");
        assert_eq!(
            format!("{:X}", key.primary_key.fingerprint()),
            DOCKER_APT_KEY_FINGERPRINT
        );
    }

    fn with_packages(status: &str, active: bool) -> Facts {
        Facts {
            dpkg: DpkgFacts::parse(status),
            active,
            enabled: active,
            ..Facts::fresh()
        }
    }

    fn summaries(plan: &StepPlan) -> Vec<&str> {
        plan.changes.iter().map(|c| c.summary.as_str()).collect()
    }

    #[test]
    fn running_engine_is_left_alone_and_a_stopped_one_started() {
        for engine in ["docker.io", "docker-ce"] {
            let running = with_packages(&format!("status {engine} install ok installed\n"), true);
            assert!(plan(&running, &Settings::example()).is_unchanged());
            let stopped = Facts {
                active: false,
                ..running
            };
            let p = plan(&stopped, &Settings::example());
            assert_eq!(summaries(&p), ["enable and start the docker service"]);
        }
    }

    #[test]
    fn only_dpkg_decides_what_is_installed() {
        // Removed but its config left (`rc`), or known but never installed: install.
        for status in [
            "status docker.io deinstall ok config-files\n",
            "status docker-ce unknown ok not-installed\n",
        ] {
            let mut settings = Settings::example();
            settings.docker_source = DockerSource::Distro;
            let p = plan(&with_packages(status, false), &settings);
            assert_eq!(
                summaries(&p),
                [
                    "install docker.io (docker) in one apt transaction",
                    "enable and start the docker service"
                ],
                "{status}"
            );
            assert!(matches!(p.changes[0].action, Action::Apt(_)));
        }
    }

    #[test]
    fn interrupted_install_is_finished_before_anything_else() {
        // A kill during the install: docker.io unpacked (`iU`), dockerd on disk,
        // the service neither configured nor running.
        let killed = with_packages(
            "status docker.io install ok unpacked\nstatus containerd install ok half-configured\nstatus curl install ok installed\n",
            false,
        );
        for source in [DockerSource::Distro, DockerSource::Docker] {
            let mut settings = Settings::example();
            settings.docker_source = source;
            let p = plan(&killed, &settings);
            assert_eq!(p.changes.len(), 2, "{:?}", summaries(&p));
            assert_eq!(
                p.changes[0].summary,
                "finish interrupted package work (dpkg --configure -a, apt-get -f install): containerd (half-configured), docker.io (unpacked)"
            );
            match &p.changes[0].action {
                Action::Apt(cmd) => assert!(cmd
                    .script
                    .contains("dpkg --force-confdef --force-confold --configure -a")),
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(p.changes[1].summary, "enable and start the docker service");
        }
        // Half-done work of any other package is finished too, before this step's apt call.
        let other = with_packages("status caddy install ok half-configured\n", false);
        let p = plan(&other, &Settings::example());
        assert!(
            p.changes[0].summary.contains("caddy (half-configured)"),
            "{:?}",
            summaries(&p)
        );
        assert!(p
            .changes
            .iter()
            .any(|c| c.summary.contains("Docker's apt repository")));
        // Once repaired: nothing.
        let repaired = with_packages(
            "status docker.io install ok installed\nstatus containerd install ok installed\n",
            true,
        );
        assert!(plan(&repaired, &Settings::example()).is_unchanged());
    }
}
