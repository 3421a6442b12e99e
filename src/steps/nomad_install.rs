//! Nomad: the pinned release installed at /usr/local/bin/nomad, with the official
//! package's user, directories and systemd unit.
//!
//! Trust chain: SHA256SUMS is fetched to this machine and its OpenPGP signature
//! checked against HashiCorp's key shipped in `assets/` (or `--nomad-release-key`
//! for a private mirror); the zip's SHA-256 from that file is then checked on the
//! droplet before anything is unpacked. `--nomad-zip FILE` uploads a local zip and
//! finds its SHA256SUMS and .sig beside it, for droplets without internet.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{bail, err, Context, ErrorKind, Result};
use sha2::{Digest, Sha256};

use super::docker::APT;
use super::packages;
use super::{Action, Contents, Ctx, StepId, StepPlan};
use crate::host::{quote, Cmd, FileMode};
use crate::nomad::{config, release};
use crate::settings::Settings;

const UNIT_PATH: &str = "/etc/systemd/system/nomad.service";
const STAGING: &str = "/var/tmp/pdsup-nomad";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `1.10.5` from `nomad version`, when a nomad binary is installed.
    pub version: Option<String>,
    pub uname_arch: String,
    pub unit: Option<String>,
    pub has_user: bool,
    pub has_tools: bool,
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

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let out = ctx
        .probe(&format!(
            "echo arch=$(uname -m); \
             if [ -x /usr/local/bin/nomad ]; then echo version=$(/usr/local/bin/nomad version 2>/dev/null | head -n1); fi; \
             id nomad >/dev/null 2>&1 && echo user=yes; \
             systemctl is-enabled --quiet nomad 2>/dev/null && echo enabled=yes\n{}",
            packages::status_probe(&TOOLS)
        ))
        .await?
        .stdout_str();
    let mut facts = Facts::default();
    let dpkg = packages::DpkgFacts::parse(&out);
    facts.has_tools = TOOLS.iter().all(|p| dpkg.installed(p));
    for line in out.lines() {
        match line.split_once('=') {
            Some(("arch", v)) => facts.uname_arch = v.to_string(),
            Some(("version", v)) => facts.version = parse_version(v),
            Some(("user", _)) => facts.has_user = true,
            Some(("enabled", _)) => facts.enabled = true,
            _ => {}
        }
    }
    facts.unit = ctx
        .host
        .read_file(UNIT_PATH)
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(facts)
}

/// `Nomad v1.10.5` (possibly followed by more words) → `1.10.5`.
fn parse_version(line: &str) -> Option<String> {
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.strip_prefix('v'))
        .map(str::to_string)
}

/// Where the release comes from; decided at plan time, carried out by `apply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    pub version: String,
    pub arch: release::Arch,
    pub source: Source,
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Download { base_url: String },
    LocalZip(PathBuf),
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(StepId::Nomad);
    let arch = match release::Arch::from_uname(&facts.uname_arch) {
        Ok(a) => a,
        Err(e) => {
            plan.blockers.push(e.to_string());
            return plan;
        }
    };
    let wanted = &settings.nomad.version;
    if !facts.has_tools {
        plan.change(
            "install unzip and curl (to fetch and unpack the Nomad release)",
            Action::Apt(Cmd::sh(format!(
                "set -e\n{APT} update\n{APT} install {}",
                TOOLS.join(" ")
            ))),
        );
    }
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
        let from = match &source {
            Source::Download { base_url } => {
                release::url(base_url, wanted, &release::zip_name(wanted, arch))
            }
            Source::LocalZip(p) => format!("{} (uploaded)", p.display()),
        };
        let verb = match &facts.version {
            Some(v) => format!("upgrade Nomad {v} → {wanted}"),
            None => format!("install Nomad {wanted}"),
        };
        plan.change(
            verb,
            Action::InstallNomad(Install {
                version: wanted.clone(),
                arch,
                source,
                key: settings.nomad.release_key.clone(),
            }),
        )
        .detail(format!(
            "from {from}\nSHA256SUMS signature checked against {}",
            key_name(settings.nomad.release_key.as_deref())
        ));
    }
    let unit = config::systemd_unit();
    if facts.unit.as_deref() != Some(unit) {
        let diff = crate::ui::diff(facts.unit.as_deref().unwrap_or(""), unit);
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

/// Fetches and verifies the checksums here, then installs on the droplet.
pub async fn apply(ctx: &mut Ctx<'_>, install: &Install) -> Result<()> {
    let v = &install.version;
    let zip = release::zip_name(v, install.arch);
    let (sums, sig) = match &install.source {
        Source::Download { base_url } => {
            ctx.ui.progress("fetching SHA256SUMS and its signature");
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
    let remote_zip = format!("{STAGING}/{zip}");
    ctx.host
        .run(&Cmd::sh(format!("rm -rf {STAGING} && mkdir -p {STAGING}")))
        .await?;
    match &install.source {
        Source::Download { base_url } => {
            let url = release::url(base_url, v, &zip);
            ctx.ui
                .progress(&format!("downloading {zip} on the droplet"));
            ctx.host
                .run(&Cmd::sh(format!(
                    "curl -fsSL --retry 3 -o {} {}",
                    quote(&remote_zip),
                    quote(&url)
                )))
                .await
                .with_context(|| format!("the droplet could not download {url}; use --nomad-zip FILE to upload a release instead"))?;
        }
        Source::LocalZip(path) => {
            let local = sha256_file(path)?;
            if local != expected {
                bail!(
                    BadInput,
                    "{} does not match the signed SHA256SUMS (expected {expected}, got {local}): the file is corrupt or not the release it claims to be",
                    path.display()
                );
            }
            ctx.ui.progress(&format!("uploading {}", path.display()));
            ctx.host
                .upload(path, &remote_zip, &FileMode::root(0o600))
                .await?;
        }
    }
    ctx.ui.progress("verifying and installing the nomad binary");
    let script = format!(
        "set -e\ncd {STAGING}\n\
         echo {check} | sha256sum -c --quiet - || {{ echo 'checksum mismatch: the downloaded zip is not the signed release' >&2; exit 1; }}\n\
         unzip -o -q {zip} nomad\n\
         install -m 0755 -o root -g root nomad /usr/local/bin/nomad.new\n\
         mv -f /usr/local/bin/nomad.new /usr/local/bin/nomad\n\
         cd / && rm -rf {STAGING}\n\
         systemctl try-restart nomad || true\n",
        check = quote(&format!("{expected}  {zip}")),
        zip = quote(&zip),
    );
    ctx.host.run(&Cmd::sh(script)).await?;
    let got = ctx
        .host
        .run(&Cmd::sh("/usr/local/bin/nomad version | head -n1"))
        .await?;
    let installed = parse_version(&got.stdout_str());
    if installed.as_deref() != Some(v.as_str()) {
        bail!(
            "after installing, `nomad version` says {:?}, expected {v}",
            got.stdout_str().trim()
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_nomad_and_the_double() {
        assert_eq!(parse_version("Nomad v1.10.5").as_deref(), Some("1.10.5"));
        assert_eq!(
            parse_version("Nomad v1.10.5 (pdsup test double, not HashiCorp Nomad)").as_deref(),
            Some("1.10.5")
        );
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn fresh_droplet_gets_tools_user_release_and_unit() {
        let plan = plan(&Facts::fresh(), &Settings::example());
        let summaries: Vec<&str> = plan.changes.iter().map(|c| c.summary.as_str()).collect();
        assert!(summaries[0].contains("unzip"));
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
            has_tools: true,
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
}
