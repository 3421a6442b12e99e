//! The proxy in front of the PDS. `--proxy io` (default): Agent IO's proxy as a
//! Nomad job plus the seed's ingress block in IO's config directory.
//! `--proxy caddy`: the distribution's Caddy with on-demand TLS for the hostname
//! and `*.hostname`, asking the PDS's `/tls-check` before each certificate.

use std::path::Path;

use crate::error::{err, Result};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;

use super::{facts, Action, Contents, Ctx, StepId, StepPlan};
use crate::assets;
use crate::host::config_file;
use crate::host::facts as host_facts;
use crate::host::{Cmd, FileMode, Script};
use crate::nomad::api::JobHealth;
use crate::nomad::job::{io_job, Job};
use crate::settings::{Proxy, Settings, PDS_PORT};

pub const ID: StepId = StepId::new("proxy", "proxy");

const CADDYFILE_PATH: &str = "/etc/caddy/Caddyfile";
const CADDY_ACME_ROOT: &str = "/etc/caddy/acme-ca-root.pem";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub caddy_installed: bool,
    pub caddy_active: bool,
    /// A backup of the Caddyfile is left over: a run stopped between moving a
    /// new Caddyfile into place and Caddy running on it.
    pub caddyfile_install_interrupted: bool,
    pub caddyfile: Option<String>,
    pub acme_root: Option<String>,
    pub io_ingress: Option<String>,
    /// Nomad says re-submitting the IO job would change nothing.
    pub io_job_unchanged: bool,
    /// The IO job's current version runs and is healthy. An unchanged job is not
    /// enough: a run that stopped because IO could not start (its image could not
    /// be pulled) left the job registered but not running.
    pub io_healthy: bool,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts::default()
    }
}

/// Checks that `--acme-ca-root` holds what Caddy's `acme_ca_root` needs (PEM
/// CA certificates, nothing else) before anything is uploaded: a file Caddy
/// cannot load would stop it on its next start, taking the site down.
pub fn check_pem_roots(path: &Path) -> Result<()> {
    let flag = "--acme-ca-root";
    let bytes =
        std::fs::read(path).map_err(|e| err!(BadInput, "{flag} {}: {e}", path.display()))?;
    let refuse = |why: String| {
        err!(
            BadInput,
            "{flag} {}: {why}. Give the PEM file of the ACME server's root certificate (\"-----BEGIN CERTIFICATE-----\")",
            path.display()
        )
    };
    let mut certificates = 0;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        let (kind, der) = section.map_err(|e| refuse(format!("not readable as PEM ({e})")))?;
        match kind {
            SectionKind::Certificate => {
                let der = CertificateDer::from(der);
                webpki::anchor_from_trusted_cert(&der).map_err(|e| {
                    refuse(format!(
                        "certificate {} is not a valid X.509 certificate ({e:?})",
                        certificates + 1
                    ))
                })?;
                certificates += 1;
            }
            SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
                return Err(refuse(
                    "it holds a private key, which must never be uploaded as a CA root".into(),
                ));
            }
            other => return Err(refuse(format!("it holds a {other:?}, not a certificate"))),
        }
    }
    if certificates == 0 {
        return Err(refuse("it holds no PEM certificate".into()));
    }
    Ok(())
}

pub fn caddyfile(settings: &Settings) -> String {
    let mut acme = String::new();
    if let Some(ca) = &settings.acme.ca {
        acme.push_str(&format!("\tacme_ca {ca}\n"));
    }
    if settings.acme.ca_root.is_some() {
        acme.push_str(&format!("\tacme_ca_root {CADDY_ACME_ROOT}\n"));
    }
    assets::render(
        assets::CADDYFILE,
        &[
            ("hostname", settings.hostname.as_str()),
            ("email", settings.email.as_str()),
            ("acme", &acme),
            ("pds_port", &PDS_PORT.to_string()),
        ],
    )
}

pub fn io_ingress(settings: &Settings) -> String {
    assets::render(
        assets::IO_INGRESS,
        &[("hostname", settings.hostname.as_str())],
    )
}

fn io_ingress_path(settings: &Settings) -> String {
    format!("{}/pds.hcl", settings.io.config_dir.trim_end_matches('/'))
}

/// The commands of the facts [`gather`] reads.
pub fn probes(settings: &Settings) -> Vec<Cmd> {
    match settings.proxy {
        Proxy::Caddy => vec![
            facts::dpkg_status(&["caddy"]).cmd,
            host_facts::unit_active("caddy").cmd,
            host_facts::exists(&config_file::backup_path(CADDYFILE_PATH)).cmd,
            host_facts::file_text(CADDYFILE_PATH).cmd,
            host_facts::file_text(CADDY_ACME_ROOT).cmd,
        ],
        Proxy::Io => vec![host_facts::file_text(&io_ingress_path(settings)).cmd],
    }
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let settings = ctx.settings;
    let mut facts = Facts::default();
    match settings.proxy {
        Proxy::Caddy => {
            // dpkg's word, not a binary on PATH: a cut install leaves one unconfigured.
            facts.caddy_installed = ctx
                .read(&facts::dpkg_status(&["caddy"]))
                .await?
                .installed("caddy");
            facts.caddy_active = ctx.read(&host_facts::unit_active("caddy")).await?;
            facts.caddyfile_install_interrupted = ctx
                .read(&host_facts::exists(&config_file::backup_path(
                    CADDYFILE_PATH,
                )))
                .await?;
            facts.caddyfile = ctx
                .read_checked(&host_facts::file_text(CADDYFILE_PATH))
                .await?;
            facts.acme_root = ctx
                .read_checked(&host_facts::file_text(CADDY_ACME_ROOT))
                .await?;
        }
        Proxy::Io => {
            facts.io_ingress = ctx
                .read_checked(&host_facts::file_text(&io_ingress_path(settings)))
                .await?;
            let job = io_job(&settings.io.image);
            facts.io_job_unchanged = job_unchanged(ctx, &job).await;
            facts.io_healthy = facts.io_job_unchanged && job_healthy(ctx, &job.id).await;
        }
    }
    Ok(facts)
}

/// Whether Nomad reports that submitting `job` would change nothing. Any failure
/// to ask (Nomad not installed yet in a dry run) means "it would change".
pub async fn job_unchanged(ctx: &mut Ctx<'_>, job: &Job) -> bool {
    let Ok(nomad) = ctx.nomad().await else {
        return false;
    };
    match nomad.plan_diff(job).await {
        Ok(diff) => diff.is_unchanged(),
        Err(e) => {
            log::debug!("planning job {}: {e:#}", job.id);
            false
        }
    }
}

/// Whether Nomad reports the job's current version running and healthy. Any
/// failure to ask means "not healthy" (the plan then waits for it).
pub async fn job_healthy(ctx: &mut Ctx<'_>, id: &str) -> bool {
    let Ok(nomad) = ctx.nomad().await else {
        return false;
    };
    let version = match nomad.job(id).await {
        Ok(Some(spec)) => spec["Version"].as_u64().unwrap_or(0),
        _ => return false,
    };
    match nomad.job_health(id, version).await {
        Ok(health) => {
            log::debug!("job {id} version {version}: {health:?}");
            health == JobHealth::Healthy
        }
        Err(e) => {
            log::debug!("health of job {id}: {e:#}");
            false
        }
    }
}

pub fn plan(facts: &Facts, settings: &Settings) -> Result<StepPlan> {
    let mut plan = StepPlan::new(ID);
    match settings.proxy {
        Proxy::Caddy => plan_caddy(&mut plan, facts, settings)?,
        Proxy::Io => plan_io(&mut plan, facts, settings),
    }
    Ok(plan)
}

fn plan_caddy(plan: &mut StepPlan, facts: &Facts, settings: &Settings) -> Result<()> {
    if !facts.caddy_installed {
        plan.change(
            "install Caddy from the distribution",
            Action::Apt(super::docker::apt_install(&["caddy"]).cmd()),
        );
    }
    let mut reload = false;
    if let Some(root) = &settings.acme.ca_root {
        let pem = std::fs::read_to_string(root)
            .map_err(|e| crate::err!(BadInput, "reading --acme-ca-root {}: {e}", root.display()))?;
        if facts.acme_root.as_deref() != Some(pem.as_str()) {
            plan.change(
                format!("install the ACME CA root at {CADDY_ACME_ROOT}"),
                Action::Write {
                    path: CADDY_ACME_ROOT.into(),
                    contents: Contents::Text(pem),
                    mode: FileMode::root(0o644),
                },
            );
            reload = true;
        }
    }
    let wanted = caddyfile(settings);
    if facts.caddyfile.as_deref() != Some(wanted.as_str()) || facts.caddyfile_install_interrupted {
        let install = config_file::Install {
            unit: "caddy".into(),
            file: Some(config_file::NewFile {
                path: CADDYFILE_PATH.into(),
                contents: wanted.clone(),
                mode: FileMode::root(0o644),
                validate: Some(caddy_validate(&config_file::candidate_path(CADDYFILE_PATH))),
            }),
        };
        let detail = format!(
            "{}\n{}",
            crate::plan::diff(facts.caddyfile.as_deref().unwrap_or(""), &wanted),
            install.describe()
        );
        plan.change(
            format!(
                "write {CADDYFILE_PATH} for {} and *.{}, check it with `caddy validate`, (re)start Caddy",
                settings.hostname, settings.hostname
            ),
            Action::InstallConfig(install),
        )
        .detail(detail);
    } else if reload || !facts.caddy_active {
        let install = config_file::Install {
            unit: "caddy".into(),
            file: None,
        };
        let detail = install.describe();
        plan.change(
            "(re)start Caddy with the new configuration",
            Action::InstallConfig(install),
        )
        .detail(detail);
    }
    Ok(())
}

/// `caddy validate` on a candidate Caddyfile. Caddy may set up its storage while
/// validating: a throwaway HOME keeps that away from root's and the service's.
fn caddy_validate(candidate: &str) -> Script {
    Script::of(
        "d=$(mktemp -d) && trap 'rm -rf \"$d\"' EXIT && HOME=\"$d\" XDG_DATA_HOME=\"$d\" XDG_CONFIG_HOME=\"$d\" caddy validate --config {} --adapter caddyfile",
        &[candidate],
    )
}

fn plan_io(plan: &mut StepPlan, facts: &Facts, settings: &Settings) {
    let path = io_ingress_path(settings);
    let wanted = io_ingress(settings);
    if facts.io_ingress.as_deref() != Some(wanted.as_str()) {
        plan.change(
            format!("write the IO ingress for {} to {path}", settings.hostname),
            Action::Write {
                path: path.clone(),
                contents: Contents::Text(wanted.clone()),
                mode: FileMode::root(0o644),
            },
        )
        .detail(crate::plan::diff(
            facts.io_ingress.as_deref().unwrap_or(""),
            &wanted,
        ));
    }
    if !facts.io_job_unchanged {
        let job = io_job(&settings.io.image);
        let hcl = job.to_hcl(false);
        plan.change(
            format!("submit the IO job ({})", settings.io.image),
            Action::SubmitJob(Box::new(job)),
        )
        .detail(hcl);
    }
    if !facts.io_job_unchanged || !facts.io_healthy {
        plan.change(
            "wait for IO to run",
            Action::WaitJobHealthy {
                job: "io".into(),
                image: settings.io.image.clone(),
            },
        );
    }
    plan.notes.push(
        "IO terminates TLS for the hostname; handles under it (alice.<hostname>) need their own IO host blocks or a custom-domain handle".into(),
    );
}

/// The proxy in front of the PDS: IO as a Nomad job, or Caddy.
pub struct ProxyStep;

#[async_trait::async_trait(?Send)]
impl super::Step for ProxyStep {
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
        plan(facts, input.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caddyfile_covers_hostname_wildcard_and_asks_the_pds() {
        let mut settings = Settings::example();
        settings.proxy = Proxy::Caddy;
        let text = caddyfile(&settings);
        assert!(text.contains("pds.example.com, *.pds.example.com {"));
        assert!(text.contains("ask http://127.0.0.1:3000/tls-check"));
        assert!(text.contains("reverse_proxy 127.0.0.1:3000"));
        assert!(!text.contains("acme_ca"));
        settings.acme.ca = Some("https://10.213.0.1:14000/dir".into());
        assert!(caddyfile(&settings).contains("\tacme_ca https://10.213.0.1:14000/dir\n"));
    }

    /// A self-signed P-256 CA certificate made with openssl for this test.
    const TEST_ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIBjDCCATGgAwIBAgIUb7rFDxWMIpdhvTWDyD1+/Bu9p58wCgYIKoZIzj0EAwIw\nGjEYMBYGA1UEAwwPcGRzdXAgdGVzdCByb290MCAXDTI2MTIwMzA4MTM1N1oYDzIx\nMjYxMTA5MDgxMzU3WjAaMRgwFgYDVQQDDA9wZHN1cCB0ZXN0IHJvb3QwWTATBgcq\nhkjOPQIBBggqhkjOPQMBBwNCAARnM5Fuis5fj5/Ft1XlyksMuUV3CksKVlcVidNh\nCUW++L4I4eKbnGEk+4lZFTeios+Bil/D5C8doTny0lnEuHhCo1MwUTAdBgNVHQ4E\nFgQUAk885UkPG/7hk9/Xb7WZmGQnY5MwHwYDVR0jBBgwFoAUAk885UkPG/7hk9/X\nb7WZmGQnY5MwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAt+ed\nDoAK8+r3VsrVnVPh2XOnaQCCGctkeU0w+dSIqeECIQCn12q9SucFs4OwtxDkBOYj\nxVwzmME/dFrIyLAm+A0yqQ==\n-----END CERTIFICATE-----\n";

    fn pem_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn pem_roots_are_ca_certificates_and_nothing_else() {
        check_pem_roots(pem_file(TEST_ROOT).path()).unwrap();
        check_pem_roots(pem_file(&format!("{TEST_ROOT}{TEST_ROOT}")).path()).unwrap();
        let key = "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n";
        let garbled = TEST_ROOT.replacen("MIIB", "MII*", 1);
        let not_der = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
        for (text, why) in [
            ("", "no PEM certificate"),
            ("not a certificate\n", "no PEM certificate"),
            (key, "private key"),
            (&format!("{TEST_ROOT}{key}"), "private key"),
            (&garbled, "not readable as PEM"),
            (not_der, "not a valid X.509 certificate"),
        ] {
            let file = pem_file(text);
            let msg = format!("{:#}", check_pem_roots(file.path()).unwrap_err());
            assert!(msg.contains(why), "{text:?}: {msg}");
            assert!(msg.contains("--acme-ca-root"), "{msg}");
            assert!(msg.contains(&file.path().display().to_string()), "{msg}");
        }
    }

    #[test]
    fn io_ingress_is_the_seed_block() {
        let text = io_ingress(&Settings::example());
        assert!(text.contains(
            "host \"pds.example.com\" {\n  name    = \"pds\"\n  backend = \"nomad:pds\"\n}"
        ));
        hcl::parse(&text).expect("valid HCL");
    }

    #[test]
    fn caddy_converged_is_unchanged_and_fresh_installs() {
        let mut settings = Settings::example();
        settings.proxy = Proxy::Caddy;
        let fresh = plan(&Facts::fresh(), &settings).unwrap();
        assert_eq!(fresh.changes.len(), 2);
        match &fresh.changes[1].action {
            Action::InstallConfig(config_file::Install {
                unit,
                file: Some(file),
            }) => {
                assert_eq!(unit, "caddy");
                assert_eq!(file.path, CADDYFILE_PATH);
                assert_eq!(file.contents, caddyfile(&settings));
                let check = file.validate.as_deref().unwrap();
                assert!(
                    check.contains("caddy validate --config /etc/caddy/Caddyfile.pdsup-new --adapter caddyfile"),
                    "{check}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let detail = fresh.changes[1].detail.as_deref().unwrap();
        assert!(detail.contains("caddy validate"), "{detail}");
        assert!(detail.contains("systemctl restart caddy"), "{detail}");
        let done = Facts {
            caddy_installed: true,
            caddy_active: true,
            caddyfile: Some(caddyfile(&settings)),
            ..Facts::default()
        };
        assert!(plan(&done, &settings).unwrap().is_unchanged());
        // A run stopped after moving the Caddyfile in, before Caddy ran on it.
        let interrupted = Facts {
            caddyfile_install_interrupted: true,
            ..done
        };
        let p = plan(&interrupted, &settings).unwrap();
        assert_eq!(p.changes.len(), 1);
        assert!(matches!(
            &p.changes[0].action,
            Action::InstallConfig(config_file::Install { file: Some(_), .. })
        ));
    }

    #[test]
    fn io_fresh_writes_ingress_and_submits_job() {
        let plan = plan(&Facts::fresh(), &Settings::example()).unwrap();
        let summaries: Vec<&str> = plan.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(summaries.len(), 3, "{summaries:?}");
        assert!(summaries[0]
            .starts_with("write the IO ingress for pds.example.com to /srv/nomad/io/pds.hcl"));
        assert!(summaries[1].contains("agentio/io:latest"));
    }

    #[test]
    fn io_registered_but_not_running_is_waited_for_again() {
        let settings = Settings::example();
        let landed = Facts {
            io_ingress: Some(io_ingress(&settings)),
            io_job_unchanged: true,
            io_healthy: false,
            ..Facts::default()
        };
        let p = plan(&landed, &settings).unwrap();
        let summaries: Vec<&str> = p.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(summaries, ["wait for IO to run"]);
        let running = Facts {
            io_healthy: true,
            ..landed
        };
        assert!(plan(&running, &settings).unwrap().is_unchanged());
    }
}
