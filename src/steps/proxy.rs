//! The proxy in front of the PDS. `--proxy io` (default): Agent IO's proxy as a
//! Nomad job plus an ingress block in IO's config directory, in the syntax of
//! the IO the site runs (`--io-ingress-syntax`), with IO's image pinned by
//! digest once it first runs.
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
use crate::host::{FileMode, Script};
use crate::nomad::api::JobHealth;
use crate::nomad::job::{io_job, Job};
use crate::settings::{IoIngressSyntax, Proxy, Settings, PDS_PORT};
use crate::state::IoImagePin;

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
    /// The IO image the site runs, by digest, as `site.toml` records it.
    pub io_image_pin: Option<IoImagePin>,
    /// Asked only while IO runs healthy and is not pinned yet: the digest of
    /// the image it runs (`None` when not asked).
    pub io_image_digest: Option<ImageDigest>,
}

/// What Docker on the droplet says about an image's registry digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageDigest {
    /// `repository@sha256:…`, the form a job can run.
    Found(String),
    /// The image has no digest of a registry for its repository (it was built
    /// or loaded on the droplet), or Docker does not have it.
    Unavailable,
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

/// The ingress file for the hostname, in the syntax of the IO the site runs.
pub fn io_ingress(settings: &Settings) -> String {
    let template = match settings.io.ingress_syntax {
        IoIngressSyntax::Ingress => assets::IO_INGRESS,
        IoIngressSyntax::Host => assets::IO_INGRESS_HOST,
    };
    assets::render(template, &[("hostname", settings.hostname.as_str())])
}

/// The image the IO job runs: the pinned digest when `site.toml` has one for
/// this image reference, else the reference itself (a reference given with a
/// digest is pinned already).
pub fn io_image(settings: &Settings, pin: Option<&IoImagePin>) -> String {
    match pin {
        Some(pin) if pin.image == settings.io.image && !settings.io.image.contains('@') => {
            pin.by_digest.clone()
        }
        _ => settings.io.image.clone(),
    }
}

/// Whether the IO image still needs pinning: a reference without a digest and
/// no pin recorded for it, unless Docker already said it has no digest.
fn needs_pin(facts: &Facts, settings: &Settings) -> bool {
    let pinned = settings.io.image.contains('@')
        || facts
            .io_image_pin
            .as_ref()
            .is_some_and(|pin| pin.image == settings.io.image);
    !pinned && facts.io_image_digest != Some(ImageDigest::Unavailable)
}

/// The registry digest of the image the droplet's IO task runs for `image`:
/// the running `io-<alloc>` container's image when its reference is `image`,
/// else the image Docker has under that reference (what Nomad last pulled).
pub fn io_image_digest(image: &str) -> host_facts::Fact<ImageDigest> {
    host_facts::Fact::new(
        Script::of(
            r#"want={}
img=
for c in $(docker ps -q --filter name=^io- 2>/dev/null); do
  if [ "$(docker inspect -f '{{.Config.Image}}' "$c")" = "$want" ]; then img=$(docker inspect -f '{{.Image}}' "$c"); break; fi
done
printf 'image=%s\n' "$want"
printf 'digests=%s\n' "$(docker image inspect -f '{{json .RepoDigests}}' "${img:-$want}" 2>/dev/null)""#,
            &[image],
        ),
        |out| parse_image_digest(&out.stdout_str()),
    )
}

/// Reads [`io_image_digest`]'s output: the repository digest of the wanted
/// reference's repository, among the image's `RepoDigests`.
pub fn parse_image_digest(text: &str) -> ImageDigest {
    let mut image = None;
    let mut digests = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("image=") {
            image = Some(v.trim());
        } else if let Some(v) = line.strip_prefix("digests=") {
            digests = serde_json::from_str::<Vec<String>>(v.trim()).ok();
        }
    }
    let (Some(image), Some(digests)) = (image, digests) else {
        return ImageDigest::Unavailable;
    };
    let want = repository(image);
    digests
        .into_iter()
        .find(|d| {
            d.split_once('@').is_some_and(|(repo, digest)| {
                repository(repo) == want
                    && digest.strip_prefix("sha256:").is_some_and(|hex| {
                        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
                    })
            })
        })
        .map_or(ImageDigest::Unavailable, ImageDigest::Found)
}

/// An image reference's repository in Docker's short form: no digest, no tag,
/// no `docker.io/` or `library/` (`docker.io/library/nginx:1` → `nginx`).
fn repository(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    let name = match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    };
    let name = name
        .strip_prefix("docker.io/")
        .or_else(|| name.strip_prefix("index.docker.io/"))
        .unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name)
}

fn io_ingress_path(settings: &Settings) -> String {
    format!("{}/pds.hcl", settings.io.config_dir.trim_end_matches('/'))
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let settings = ctx.settings;
    let mut facts = Facts::default();
    match settings.proxy {
        Proxy::Caddy => {
            let host = ctx.host;
            // dpkg's word, not a binary on PATH: a cut install leaves one unconfigured.
            facts.caddy_installed = facts::dpkg_status(&["caddy"])
                .read(host)
                .await?
                .installed("caddy");
            facts.caddy_active = host_facts::unit_active("caddy").read(host).await?;
            facts.caddyfile_install_interrupted =
                host_facts::exists(&config_file::backup_path(CADDYFILE_PATH))
                    .read(host)
                    .await?;
            facts.caddyfile = host.read_text(CADDYFILE_PATH).await?;
            facts.acme_root = host.read_text(CADDY_ACME_ROOT).await?;
        }
        Proxy::Io => {
            facts.io_ingress = ctx.host.read_text(&io_ingress_path(settings)).await?;
            facts.io_image_pin = ctx.record.io_image_pin.clone();
            let job = io_job(&io_image(settings, facts.io_image_pin.as_ref()));
            facts.io_job_unchanged = job_unchanged(ctx, &job).await;
            facts.io_healthy = facts.io_job_unchanged && job_healthy(ctx, &job.id).await;
            if facts.io_healthy && needs_pin(&facts, settings) {
                facts.io_image_digest =
                    Some(io_image_digest(&settings.io.image).read(ctx.host).await?);
            }
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
        let block = match settings.io.ingress_syntax {
            IoIngressSyntax::Ingress => "ingress",
            IoIngressSyntax::Host => "host (the seed's, for IO before July 2026)",
        };
        plan.change(
            format!(
                "write the IO ingress for {} to {path} ({block} block)",
                settings.hostname
            ),
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
    let image = io_image(settings, facts.io_image_pin.as_ref());
    if !facts.io_job_unchanged {
        let job = io_job(&image);
        let hcl = job.to_hcl(false);
        plan.change(
            format!("submit the IO job ({image})"),
            Action::SubmitJob(Box::new(job)),
        )
        .detail(hcl);
    }
    if !facts.io_job_unchanged || !facts.io_healthy {
        plan.change(
            "wait for IO to run",
            Action::WaitJobHealthy {
                job: "io".into(),
                image: image.clone(),
            },
        );
    }
    if needs_pin(facts, settings) {
        let summary = match &facts.io_image_digest {
            Some(ImageDigest::Found(digest)) => format!(
                "pin IO's image: record {digest} for {} in site.toml and run IO by that digest",
                settings.io.image
            ),
            _ => format!(
                "pin IO's image: once IO runs, record the digest of its {} in site.toml and run IO by that digest",
                settings.io.image
            ),
        };
        plan.change(
            summary,
            Action::PinIoImage {
                image: settings.io.image.clone(),
            },
        );
    } else if facts.io_image_digest == Some(ImageDigest::Unavailable) {
        plan.notes.push(format!(
            "IO's image {} has no registry digest on the droplet (built or loaded there?): it is not pinned",
            settings.io.image
        ));
    }
    plan.notes.push(
        "IO terminates TLS for the hostname only: a handle under it (alice.<hostname>) is verified by its DNS TXT record (see the DNS records)".into(),
    );
}

/// Records the digest of the image IO runs and runs IO by it. IO runs when this
/// is applied (the plan waits for it first); an image without a registry digest
/// is left unpinned, and the re-check then finds nothing to do.
async fn apply_pin(ctx: &mut Ctx<'_>, image: &str) -> Result<()> {
    let digest = match io_image_digest(image).read(ctx.host).await? {
        ImageDigest::Found(digest) => digest,
        ImageDigest::Unavailable => {
            ctx.progress.note(&format!(
                "IO's image {image} has no registry digest on the droplet: it is not pinned"
            ));
            return Ok(());
        }
    };
    ctx.record.io_image_pin = Some(IoImagePin {
        image: image.to_string(),
        by_digest: digest.clone(),
    });
    ctx.site.save_record(&ctx.record)?;
    let job = io_job(&digest);
    if !job_unchanged(ctx, &job).await {
        ctx.apply(&Action::SubmitJob(Box::new(job))).await?;
    }
    ctx.apply(&Action::WaitJobHealthy {
        job: "io".into(),
        image: digest,
    })
    .await
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

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        gather(ctx).await
    }

    fn plan(&self, facts: &Facts, input: &super::PlanInput<'_>) -> Result<StepPlan> {
        plan(facts, input.settings)
    }

    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()> {
        match action {
            Action::PinIoImage { image } => apply_pin(ctx, image).await,
            other => ctx.apply(other).await,
        }
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
    fn io_ingress_takes_the_syntax_of_the_io_the_site_runs() {
        let mut settings = Settings::example();
        // (syntax, the block, a form that must not be there)
        let table = [
            (
                IoIngressSyntax::Ingress,
                "ingress \"pds.example.com\" {\n  name    = \"pds\"\n  backend = \"nomad:pds\"\n}\n",
                "host \"",
            ),
            (
                IoIngressSyntax::Host,
                "host \"pds.example.com\" {\n  name    = \"pds\"\n  backend = \"nomad:pds\"\n}\n",
                "ingress \"",
            ),
        ];
        for (syntax, block, not) in table {
            settings.io.ingress_syntax = syntax;
            let text = io_ingress(&settings);
            assert!(text.contains(block), "{syntax:?}: {text}");
            assert!(!text.contains(not), "{syntax:?}: {text}");
            // One block of that name, with exactly IO's two attributes.
            let body = hcl::parse(&text).expect("valid HCL");
            let blocks: Vec<_> = body.blocks().collect();
            assert_eq!(blocks.len(), 1, "{text}");
            let name = format!("{syntax:?}").to_lowercase();
            assert_eq!(blocks[0].identifier(), name);
            let attrs: Vec<&str> = blocks[0].body().attributes().map(|a| a.key()).collect();
            assert_eq!(attrs, ["name", "backend"]);
        }
    }

    #[test]
    fn the_default_ingress_syntax_is_io_s_current_one() {
        assert_eq!(
            Settings::example().io.ingress_syntax,
            IoIngressSyntax::Ingress
        );
        assert!(io_ingress(&Settings::example()).contains("ingress \"pds.example.com\" {"));
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
    fn io_fresh_writes_ingress_submits_job_then_pins_its_image() {
        let plan = plan(&Facts::fresh(), &Settings::example()).unwrap();
        let summaries: Vec<&str> = plan.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(summaries.len(), 4, "{summaries:?}");
        assert!(summaries[0].starts_with(
            "write the IO ingress for pds.example.com to /srv/nomad/io/pds.hcl (ingress block)"
        ));
        assert!(summaries[1].contains("agentio/io:latest"));
        assert_eq!(summaries[2], "wait for IO to run");
        assert!(
            matches!(&plan.changes[3].action, Action::PinIoImage { image } if image == "agentio/io:latest"),
            "{summaries:?}"
        );
    }

    const DIGEST: &str =
        "agentio/io@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pin() -> IoImagePin {
        IoImagePin {
            image: "agentio/io:latest".into(),
            by_digest: DIGEST.into(),
        }
    }

    #[test]
    fn io_registered_but_not_running_is_waited_for_again() {
        let settings = Settings::example();
        let landed = Facts {
            io_ingress: Some(io_ingress(&settings)),
            io_job_unchanged: true,
            io_healthy: false,
            io_image_pin: Some(pin()),
            ..Facts::default()
        };
        let p = plan(&landed, &settings).unwrap();
        let summaries: Vec<&str> = p.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(summaries, ["wait for IO to run"]);
        match &p.changes[0].action {
            Action::WaitJobHealthy { image, .. } => assert_eq!(image, DIGEST),
            other => panic!("unexpected {other:?}"),
        }
        let running = Facts {
            io_healthy: true,
            ..landed
        };
        assert!(plan(&running, &settings).unwrap().is_unchanged());
    }

    #[test]
    fn a_pinned_image_runs_by_digest_until_another_image_is_asked_for() {
        let mut settings = Settings::example();
        // (what, --io-image, the pin, the image the job runs)
        let table = [
            ("pinned", "agentio/io:latest", Some(pin()), DIGEST),
            ("not pinned yet", "agentio/io:latest", None, "agentio/io:latest"),
            ("another tag", "agentio/io:v2", Some(pin()), "agentio/io:v2"),
            (
                "a digest given",
                "agentio/io@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                Some(pin()),
                "agentio/io@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            ),
        ];
        for (what, image, pin, want) in table {
            settings.io.image = image.into();
            assert_eq!(io_image(&settings, pin.as_ref()), want, "{what}");
            let facts = Facts {
                io_image_pin: pin,
                ..Facts::fresh()
            };
            let p = plan(&facts, &settings).unwrap();
            match &p.changes[1].action {
                Action::SubmitJob(job) => {
                    assert_eq!(job.groups[0].tasks[0].image, want, "{what}")
                }
                other => panic!("{what}: unexpected {other:?}"),
            }
            let pins = p
                .changes
                .iter()
                .filter(|c| matches!(c.action, Action::PinIoImage { .. }))
                .count();
            let expect_pin = want == image && !image.contains('@');
            assert_eq!(pins, usize::from(expect_pin), "{what}");
        }
    }

    #[test]
    fn a_running_unpinned_io_is_pinned_unless_it_has_no_registry_digest() {
        let settings = Settings::example();
        let running = Facts {
            io_ingress: Some(io_ingress(&settings)),
            io_job_unchanged: true,
            io_healthy: true,
            io_image_digest: Some(ImageDigest::Found(DIGEST.into())),
            ..Facts::default()
        };
        let p = plan(&running, &settings).unwrap();
        assert_eq!(p.changes.len(), 1);
        assert!(
            p.changes[0].summary.contains(DIGEST),
            "{}",
            p.changes[0].summary
        );
        let local = Facts {
            io_image_digest: Some(ImageDigest::Unavailable),
            ..running
        };
        let p = plan(&local, &settings).unwrap();
        assert!(p.is_unchanged(), "{:?}", p.changes);
        assert!(
            p.notes.iter().any(|n| n.contains("not pinned")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn image_digests_parse_from_docker_s_repo_digests() {
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let io = format!("agentio/io@sha256:{hex}");
        let table = [
            // A pulled image: its one digest.
            (
                format!("image=agentio/io:latest\ndigests=[\"{io}\"]\n"),
                ImageDigest::Found(io.clone()),
            ),
            // Docker's long form of the same repository, and a digest of another one.
            (
                format!(
                    "image=docker.io/agentio/io:latest\ndigests=[\"mirror.example:5000/io@sha256:{hex}\",\"{io}\"]\n"
                ),
                ImageDigest::Found(io.clone()),
            ),
            (
                format!("image=docker.io/library/nginx:1\ndigests=[\"nginx@sha256:{hex}\"]\n"),
                ImageDigest::Found(format!("nginx@sha256:{hex}")),
            ),
            (
                format!("image=registry.example:5000/team/io:2\ndigests=[\"registry.example:5000/team/io@sha256:{hex}\"]\n"),
                ImageDigest::Found(format!("registry.example:5000/team/io@sha256:{hex}")),
            ),
            // Loaded with `docker load` or built there: no registry digest.
            (
                "image=agentio/io:latest\ndigests=[]\n".into(),
                ImageDigest::Unavailable,
            ),
            // Docker does not have the image.
            (
                "image=agentio/io:latest\ndigests=\n".into(),
                ImageDigest::Unavailable,
            ),
            // Only another repository's digest.
            (
                format!("image=agentio/io:latest\ndigests=[\"other/io@sha256:{hex}\"]\n"),
                ImageDigest::Unavailable,
            ),
            // Garbled digests.
            (
                "image=agentio/io:latest\ndigests=[\"agentio/io@sha256:abc\"]\n".into(),
                ImageDigest::Unavailable,
            ),
            ("".into(), ImageDigest::Unavailable),
            ("garbage\n".into(), ImageDigest::Unavailable),
        ];
        for (text, want) in table {
            assert_eq!(parse_image_digest(&text), want, "{text:?}");
        }
        let fact = io_image_digest("agentio/io:latest");
        assert!(
            fact.cmd.script.starts_with("want=agentio/io:latest\n"),
            "{}",
            fact.cmd.script
        );
    }
}
