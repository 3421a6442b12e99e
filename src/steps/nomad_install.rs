//! Nomad: the pinned release installed at /usr/local/bin/nomad, with the official
//! package's user, directories and systemd unit.
//!
//! Trust chain: SHA256SUMS is fetched to this machine and its OpenPGP signature
//! checked against HashiCorp's key shipped in `assets/` (or `--nomad-release-key`
//! for a private mirror); the zip's SHA-256 from that file is then checked on the
//! droplet before anything is unpacked. `--nomad-zip FILE` uploads a local zip and
//! finds its SHA256SUMS and .sig beside it, for droplets without internet.

use std::io::Read;
use std::path::Path;

use crate::error::{bail, err, Context, ErrorKind, Result};
use sha2::{Digest, Sha256};

use super::facts;
use super::{Action, Contents, Ctx, StepId, StepPlan};
use crate::host::facts as host_facts;
use crate::host::{Cmd, FileMode, Script};
use crate::nomad::{config, release};
use crate::settings::Settings;

pub const ID: StepId = StepId::new("nomad", "nomad");

const UNIT_PATH: &str = "/etc/systemd/system/nomad.service";
const STAGING: &str = "/var/tmp/pdsup-nomad";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `1.10.5` from `nomad version`, when a nomad binary is installed.
    pub version: Option<String>,
    pub uname_arch: String,
    pub unit: Option<String>,
    pub has_user: bool,
    pub enabled: bool,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts {
            uname_arch: "x86_64".into(),
            ..Facts::default()
        }
    }
}

/// The packages the install needs on the droplet (to fetch and unpack the release).
const TOOLS: [&str; 3] = ["unzip", "curl", "ca-certificates"];

/// Those of [`TOOLS`] dpkg does not have installed, for the packages step's
/// transaction.
pub fn packages(dpkg: &super::packages::DpkgFacts) -> Vec<&'static str> {
    TOOLS.into_iter().filter(|p| !dpkg.installed(p)).collect()
}

/// The commands of the facts [`gather`] reads.
pub fn probes(_settings: &Settings) -> Vec<Cmd> {
    vec![
        host_facts::uname_arch().cmd,
        facts::nomad_version().cmd,
        facts::user_exists("nomad").cmd,
        host_facts::unit_enabled("nomad").cmd,
        host_facts::file_text(UNIT_PATH).cmd,
    ]
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    Ok(Facts {
        uname_arch: ctx.read(&host_facts::uname_arch()).await?,
        version: ctx.read(&facts::nomad_version()).await?,
        has_user: ctx.read(&facts::user_exists("nomad")).await?,
        enabled: ctx.read(&host_facts::unit_enabled("nomad")).await?,
        unit: ctx.read_checked(&host_facts::file_text(UNIT_PATH)).await?,
    })
}

pub use crate::nomad::install::{Install, Remote, RemoteAction, Source};

/// Stands for the zip's SHA-256 in the commands until the signed SHA256SUMS has
/// been verified at apply time.
pub fn sum_placeholder(zip: &str) -> String {
    format!("<sha256 of {zip} from the signed SHA256SUMS>")
}

/// The droplet's part of installing `version` from `source`, in order.
pub fn remote_commands(version: &str, arch: release::Arch, source: &Source) -> Vec<Remote> {
    let zip = release::zip_name(version, arch);
    let remote_zip = format!("{STAGING}/{zip}");
    let run = |cmd: Cmd| Remote {
        progress: None,
        action: RemoteAction::Run(cmd),
        on_failure: None,
    };
    let mut commands = vec![run(Script::of(
        "rm -rf {} && mkdir -p {}",
        &[STAGING, STAGING],
    )
    .cmd())];
    commands.push(match source {
        Source::Download { base_url } => {
            let url = release::url(base_url, version, &zip);
            Remote {
                progress: Some(format!("downloading {zip} on the droplet")),
                action: RemoteAction::Run(Cmd::argv([
                    "curl",
                    "-fsSL",
                    "--retry",
                    "3",
                    "-o",
                    &remote_zip,
                    &url,
                ])),
                on_failure: Some(format!(
                    "the droplet could not download {url}; use --nomad-zip FILE to upload a release instead"
                )),
            }
        }
        Source::LocalZip(path) => Remote {
            progress: Some(format!("uploading {}", path.display())),
            action: RemoteAction::Upload {
                local: path.clone(),
                path: remote_zip,
                mode: FileMode::root(0o600),
            },
            on_failure: None,
        },
    });
    let check = format!("{}  {zip}", sum_placeholder(&zip));
    commands.push(Remote {
        progress: Some("verifying and installing the nomad binary".into()),
        ..run(
            Script::new()
                .line("set -e", &[])
                .line("cd {}", &[STAGING])
                .line(
                    "echo {} | sha256sum -c --quiet - || { echo 'checksum mismatch: the downloaded zip is not the signed release' >&2; exit 1; }",
                    &[&check],
                )
                .line("unzip -o -q {} nomad", &[&zip])
                .line(
                    "install -m 0755 -o root -g root nomad /usr/local/bin/nomad.new",
                    &[],
                )
                .line("mv -f /usr/local/bin/nomad.new /usr/local/bin/nomad", &[])
                .line("cd / && rm -rf {}", &[STAGING])
                .line("systemctl try-restart nomad || true", &[])
                .cmd(),
        )
    });
    commands.push(Remote {
        progress: None,
        action: RemoteAction::ExpectVersion {
            cmd: Cmd::sh("/usr/local/bin/nomad version | head -n1"),
            version: version.to_string(),
        },
        on_failure: None,
    });
    commands
}

impl Install {
    /// The plan's detail: the checks here, then every command on the droplet.
    pub fn describe(&self) -> String {
        let zip = release::zip_name(&self.version, self.arch);
        let sums = release::sums_name(&self.version);
        let from = match &self.source {
            Source::Download { base_url } => release::url(base_url, &self.version, &zip),
            Source::LocalZip(p) => format!("{} (uploaded)", p.display()),
        };
        let mut out = format!(
            "from {from}\nSHA256SUMS signature checked against {}\n",
            key_name(self.key.as_deref())
        );
        match &self.source {
            Source::Download { base_url } => out.push_str(&format!(
                "here: fetch {} and its .sig, check the signature, take the SHA-256 of {zip} from it\n",
                release::url(base_url, &self.version, &sums),
            )),
            Source::LocalZip(p) => out.push_str(&format!(
                "here: read {sums} and its .sig beside {}, check the signature, check the zip's SHA-256 against it\n",
                p.display()
            )),
        }
        out.push_str("on the droplet:");
        for remote in &self.commands {
            let text = match &remote.action {
                RemoteAction::Run(cmd) => cmd.script.trim_end().to_string(),
                RemoteAction::Upload { local, path, mode } => format!(
                    "(upload {} to {path}, mode {:o})",
                    local.display(),
                    mode.mode
                ),
                RemoteAction::ExpectVersion { cmd, version } => {
                    format!("{}   (expect Nomad v{version})", cmd.script)
                }
            };
            let mut lines = text.lines();
            if let Some(first) = lines.next() {
                out.push_str(&format!("\n  $ {first}"));
            }
            for line in lines {
                out.push_str(&format!("\n    {line}"));
            }
        }
        out
    }
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    let arch = match release::Arch::from_uname(&facts.uname_arch) {
        Ok(a) => a,
        Err(e) => {
            plan.blockers.push(e.to_string());
            return plan;
        }
    };
    let wanted = &settings.nomad.version;
    if !facts.has_user {
        plan.change(
            "create the nomad system user and directories, like the official package",
            Action::Run(Cmd::sh(
                "set -e; id nomad >/dev/null 2>&1 || useradd --system --user-group --shell /bin/false nomad; \
                 mkdir -p /opt/nomad/data /etc/nomad.d; chown nomad:nomad /opt/nomad/data; chmod 700 /opt/nomad/data",
            )),
        );
    }
    if facts.version.as_deref() != Some(wanted.as_str()) {
        let source = match &settings.nomad.zip {
            Some(zip) => Source::LocalZip(zip.path.clone()),
            None => Source::Download {
                base_url: settings.nomad.release_url.clone(),
            },
        };
        let verb = match &facts.version {
            Some(v) => format!("upgrade Nomad {v} → {wanted}"),
            None => format!("install Nomad {wanted}"),
        };
        let install = Install {
            version: wanted.clone(),
            arch,
            commands: remote_commands(wanted, arch, &source),
            source,
            key: settings.nomad.release_key.clone(),
        };
        let detail = install.describe();
        plan.change(verb, Action::InstallNomad(install))
            .detail(detail);
    }
    let unit = config::systemd_unit();
    if facts.unit.as_deref() != Some(unit) {
        let diff = crate::plan::diff(facts.unit.as_deref().unwrap_or(""), unit);
        plan.change(
            format!("write {UNIT_PATH}"),
            Action::Write {
                path: UNIT_PATH.into(),
                contents: Contents::Text(unit.to_string()),
                mode: FileMode::root(0o644),
            },
        )
        .detail(diff);
        plan.change(
            "reload systemd",
            Action::Run(Cmd::sh("systemctl daemon-reload")),
        );
    }
    if !facts.enabled {
        plan.change(
            "enable the nomad service at boot",
            Action::Run(Cmd::sh("systemctl enable nomad")),
        );
    }
    plan
}

fn key_name(key: Option<&Path>) -> String {
    match key {
        Some(p) => format!("the key in {}", p.display()),
        None => format!("HashiCorp's release key {}", release::HASHICORP_FINGERPRINT),
    }
}

/// The zip's SHA-256 from the release's signed SHA256SUMS: fetched (or read
/// beside `--nomad-zip`) and verified here, before anything runs on the
/// droplet; a local zip is checked against it too.
async fn verified_sum(install: &Install, progress: &dyn Fn(&str)) -> Result<String> {
    let v = &install.version;
    let zip = release::zip_name(v, install.arch);
    let (sums, sig) = match &install.source {
        Source::Download { base_url } => {
            progress("fetching SHA256SUMS and its signature");
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?;
            let fetch = |name: String| {
                let url = release::url(base_url, v, &name);
                let client = client.clone();
                async move {
                    let resp = client
                        .get(&url)
                        .send()
                        .await
                        .with_context(|| format!("downloading {url}: check --nomad-release-url, or use --nomad-zip for offline installs"))?;
                    if !resp.status().is_success() {
                        bail!("downloading {url}: {}", resp.status());
                    }
                    Ok::<_, crate::error::Error>(resp.bytes().await?.to_vec())
                }
            };
            (
                fetch(release::sums_name(v)).await?,
                fetch(release::sig_name(v)).await?,
            )
        }
        Source::LocalZip(path) => {
            let dir = path.parent().unwrap_or(Path::new("."));
            let read = |name: String| {
                let p = dir.join(&name);
                std::fs::read(&p).with_context(|| {
                    format!("--nomad-zip needs {name} beside the zip, as published with the release ({} is missing)", p.display())
                }).kind(ErrorKind::BadInput)
            };
            (read(release::sums_name(v))?, read(release::sig_name(v))?)
        }
    };
    let key = match &install.key {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --nomad-release-key {}", path.display()))
                .kind(ErrorKind::BadInput)?;
            release::TrustedKey::from_armored(&text)?
        }
        None => release::TrustedKey::hashicorp()?,
    };
    release::verify_sums(&sums, &sig, &key)?;
    let expected = release::expected_sha256(&String::from_utf8_lossy(&sums), &zip)?;
    if let Source::LocalZip(path) = &install.source {
        let local = sha256_file(path)?;
        if local != expected {
            bail!(
                BadInput,
                "{} does not match the signed SHA256SUMS (expected {expected}, got {local}): the file is corrupt or not the release it claims to be",
                path.display()
            );
        }
    }
    Ok(expected)
}

/// `cmd` with the placeholder replaced by the verified sum. The sum is 64 hex
/// digits, so it stays inside the quoted word the placeholder was in.
pub fn with_sum(cmd: &Cmd, zip: &str, sum: &str) -> Result<Cmd> {
    if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the SHA-256 of {zip} from SHA256SUMS is not 64 hex digits");
    }
    Ok(Cmd {
        script: cmd.script.replace(&sum_placeholder(zip), sum),
        stdin: cmd.stdin.clone(),
    })
}

/// Verifies the release here, then runs the droplet's commands in order.
pub async fn apply(ctx: &mut Ctx<'_>, install: &Install) -> Result<()> {
    let zip = release::zip_name(&install.version, install.arch);
    let ui = ctx.progress;
    let sum = verified_sum(install, &|m| ui.progress(m)).await?;
    for remote in &install.commands {
        if let Some(progress) = &remote.progress {
            ui.progress(progress);
        }
        let done = match &remote.action {
            RemoteAction::Run(cmd) => ctx.host.run(&with_sum(cmd, &zip, &sum)?).await.map(drop),
            RemoteAction::Upload { local, path, mode } => ctx.host.upload(local, path, mode).await,
            RemoteAction::ExpectVersion { cmd, version } => {
                let got = ctx.host.run(cmd).await?;
                let installed = facts::parse_nomad_version(&got.stdout_str());
                if installed.as_deref() != Some(version.as_str()) {
                    bail!(
                        "after installing, `nomad version` says {:?}, expected {version}",
                        got.stdout_str().trim()
                    );
                }
                Ok(())
            }
        };
        match (&remote.on_failure, done) {
            (Some(hint), Err(e)) => return Err(e.context(hint.clone())),
            (None, Err(e)) => return Err(e),
            (_, Ok(())) => {}
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| err!(BadInput, "reading --nomad-zip {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The pinned Nomad release, its user and its systemd unit.
pub struct NomadInstallStep;

#[async_trait::async_trait(?Send)]
impl super::Step for NomadInstallStep {
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

    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()> {
        match action {
            Action::InstallNomad(install) => apply(ctx, install).await,
            other => ctx.apply(other).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_nomad_and_the_double() {
        let parse_version = facts::parse_nomad_version;
        assert_eq!(parse_version("Nomad v1.10.5").as_deref(), Some("1.10.5"));
        assert_eq!(
            parse_version("Nomad v1.10.5 (pdsup test double, not HashiCorp Nomad)").as_deref(),
            Some("1.10.5")
        );
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn fresh_droplet_gets_tools_user_release_and_unit() {
        let fresh = crate::steps::packages::DpkgFacts::default();
        assert_eq!(packages(&fresh), TOOLS);
        let some = crate::steps::packages::DpkgFacts::parse("status curl install ok installed\n");
        assert_eq!(packages(&some), ["unzip", "ca-certificates"]);
        let plan = plan(&Facts::fresh(), &Settings::example());
        let summaries: Vec<&str> = plan.changes.iter().map(|c| c.summary.as_str()).collect();
        assert!(summaries[0].contains("nomad system user"));
        assert!(summaries.contains(&"install Nomad 1.10.5"));
        assert!(summaries.iter().any(|s| s.contains("nomad.service")));
        let install = plan.changes.iter().find_map(|c| match &c.action {
            Action::InstallNomad(i) => Some(i),
            _ => None,
        });
        assert_eq!(
            install.unwrap().source,
            Source::Download {
                base_url: "https://releases.hashicorp.com".into()
            }
        );
    }

    #[test]
    fn converged_droplet_needs_nothing() {
        let facts = Facts {
            version: Some("1.10.5".into()),
            uname_arch: "aarch64".into(),
            unit: Some(config::systemd_unit().to_string()),
            has_user: true,
            enabled: true,
        };
        assert!(plan(&facts, &Settings::example()).is_unchanged());
        let old = Facts {
            version: Some("1.9.0".into()),
            ..facts
        };
        let p = plan(&old, &Settings::example());
        assert_eq!(p.changes.len(), 1);
        assert_eq!(p.changes[0].summary, "upgrade Nomad 1.9.0 → 1.10.5");
    }

    #[test]
    fn the_plan_shows_every_command_with_the_sum_to_come() {
        let plan = plan(&Facts::fresh(), &Settings::example());
        let change = plan
            .changes
            .iter()
            .find(|c| c.summary == "install Nomad 1.10.5")
            .unwrap();
        let detail = change.detail.as_deref().unwrap();
        let zip = "nomad_1.10.5_linux_amd64.zip";
        let order = [
            "rm -rf /var/tmp/pdsup-nomad && mkdir -p /var/tmp/pdsup-nomad",
            "$ curl -fsSL --retry 3 -o /var/tmp/pdsup-nomad/nomad_1.10.5_linux_amd64.zip https://releases.hashicorp.com/nomad/1.10.5/nomad_1.10.5_linux_amd64.zip",
            "echo '<sha256 of nomad_1.10.5_linux_amd64.zip from the signed SHA256SUMS>  nomad_1.10.5_linux_amd64.zip' | sha256sum -c --quiet -",
            "unzip -o -q nomad_1.10.5_linux_amd64.zip nomad",
            "install -m 0755 -o root -g root nomad /usr/local/bin/nomad.new",
            "mv -f /usr/local/bin/nomad.new /usr/local/bin/nomad",
            "systemctl try-restart nomad || true",
            "$ /usr/local/bin/nomad version | head -n1",
        ];
        let mut at = 0;
        for needle in order {
            let found = detail[at..]
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not after byte {at} in\n{detail}"));
            at += found + needle.len();
        }
        assert!(detail.contains(&format!("SHA-256 of {zip}")), "{detail}");

        // At apply time the placeholder becomes the verified sum, inside its quotes.
        let Action::InstallNomad(install) = &change.action else {
            panic!("{:?}", change.action)
        };
        let RemoteAction::Run(script) = &install.commands[2].action else {
            panic!("{:?}", install.commands[2])
        };
        let sum = "ab".repeat(32);
        let filled = with_sum(script, zip, &sum).unwrap();
        assert!(
            filled
                .script
                .contains(&format!("echo '{sum}  {zip}' | sha256sum -c")),
            "{}",
            filled.script
        );
        assert!(with_sum(script, zip, "not hex; reboot").is_err());
    }

    #[test]
    fn a_local_zip_is_uploaded_instead_of_downloaded() {
        let zip = std::path::PathBuf::from("/home/me/nomad_1.10.5_linux_arm64.zip");
        let commands = remote_commands(
            "1.10.5",
            release::Arch::Arm64,
            &Source::LocalZip(zip.clone()),
        );
        assert_eq!(
            commands[1].action,
            RemoteAction::Upload {
                local: zip,
                path: "/var/tmp/pdsup-nomad/nomad_1.10.5_linux_arm64.zip".into(),
                mode: FileMode::root(0o600),
            }
        );
        assert!(commands.iter().all(|c| !matches!(
            &c.action,
            RemoteAction::Run(cmd) if cmd.script.contains("curl")
        )));
    }
}
