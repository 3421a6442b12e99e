//! The proxy in front of the PDS. `--proxy io` (default): Agent IO's proxy as a
//! Nomad job plus an ingress block in IO's config directory, in the syntax of
//! the IO the site runs (`--io-ingress-syntax`), with IO's image pinned by
//! digest once it first runs.
//! `--proxy caddy`: the distribution's Caddy with on-demand TLS for the hostname
//! and `*.hostname`, asking the PDS's `/tls-check` before each certificate.
//!
//! Adopt, don't replace: what pdsup writes carries its mark (job `meta`, a
//! header line), and what runs without it is the user's. An `io` job of the
//! user's is left as it is (only the ingress file is written, after checking
//! that the job mounts the `io` host volume); a Caddyfile of the user's keeps
//! every byte but one `import` line of pdsup's site file (see [`plan_caddy`]).

use std::path::Path;

use crate::error::{err, Result};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;

use super::{adopt, facts, Action, Contents, Ctx, StepId, StepPlan};
use crate::assets;
use crate::host::config_file;
use crate::host::facts as host_facts;
use crate::host::{Cmd, FileMode, Script};
use crate::nomad::api::JobHealth;
use crate::nomad::job::{self, io_job, Job};
use crate::settings::{IoIngressSyntax, Proxy, Settings, PDS_PORT};
use crate::state::IoImagePin;

pub const ID: StepId = StepId::new("proxy", "proxy");

const CADDYFILE_PATH: &str = "/etc/caddy/Caddyfile";
/// pdsup's site when the Caddyfile is the user's, imported by one line of it.
const CADDY_SITE_PATH: &str = "/etc/caddy/pdsup.caddy";
/// Where the site file's check puts a copy of the user's Caddyfile that imports
/// the candidate instead (beside it, so its relative imports resolve alike).
const CADDY_CHECK_PATH: &str = "/etc/caddy/Caddyfile.pdsup-check";
const CADDY_ACME_ROOT: &str = "/etc/caddy/acme-ca-root.pem";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub caddy_installed: bool,
    pub caddy_active: bool,
    /// A backup of the Caddyfile is left over: a run stopped between moving a
    /// new Caddyfile into place and Caddy running on it.
    pub caddyfile_install_interrupted: bool,
    pub caddyfile: Option<String>,
    /// The Caddyfile is the one the caddy package shipped, untouched (dpkg's
    /// checksum of the conffile): nobody's, so pdsup writes its own.
    pub caddyfile_is_package_default: bool,
    /// pdsup's site file, imported by a Caddyfile of the user's.
    pub caddy_site: Option<String>,
    /// A backup of the site file is left over (as for the Caddyfile).
    pub caddy_site_install_interrupted: bool,
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
    /// The `io` job Nomad runs, when it is not pdsup's: adopted, never re-submitted.
    pub io_adopted: Option<AdoptedJob>,
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

/// An `io` job of the user's, as far as pdsup needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptedJob {
    /// It mounts the client's host volume `io`, where the ingress file goes.
    pub mounts_io_volume: bool,
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
/// no pin recorded for it, unless Docker already said it has no digest, and
/// only for pdsup's own io job.
fn needs_pin(facts: &Facts, settings: &Settings) -> bool {
    let pinned = settings.io.image.contains('@')
        || facts
            .io_image_pin
            .as_ref()
            .is_some_and(|pin| pin.image == settings.io.image);
    // A job of the user's runs the image the user chose: pdsup pins only its own.
    facts.io_adopted.is_none() && !pinned && facts.io_image_digest != Some(ImageDigest::Unavailable)
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

/// The commands of the facts [`gather`] reads.
pub fn probes(settings: &Settings) -> Vec<Cmd> {
    match settings.proxy {
        Proxy::Caddy => vec![
            facts::dpkg_status(&["caddy"]).cmd,
            host_facts::unit_active("caddy").cmd,
            host_facts::exists(&config_file::backup_path(CADDYFILE_PATH)).cmd,
            host_facts::file_text(CADDYFILE_PATH).cmd,
            package_default(CADDYFILE_PATH).cmd,
            host_facts::file_text(CADDY_SITE_PATH).cmd,
            host_facts::exists(&config_file::backup_path(CADDY_SITE_PATH)).cmd,
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
            facts.caddyfile_is_package_default = ctx.read(&package_default(CADDYFILE_PATH)).await?;
            facts.caddy_site = ctx
                .read_checked(&host_facts::file_text(CADDY_SITE_PATH))
                .await?;
            facts.caddy_site_install_interrupted = ctx
                .read(&host_facts::exists(&config_file::backup_path(
                    CADDY_SITE_PATH,
                )))
                .await?;
            facts.acme_root = ctx
                .read_checked(&host_facts::file_text(CADDY_ACME_ROOT))
                .await?;
        }
        Proxy::Io => {
            facts.io_ingress = ctx
                .read_checked(&host_facts::file_text(&io_ingress_path(settings)))
                .await?;
            facts.io_image_pin = ctx.record.io_image_pin.clone();
            let job = io_job(&io_image(settings, facts.io_image_pin.as_ref()));
            facts.io_adopted = adopted_io_job(ctx, &job).await?;
            if facts.io_adopted.is_some() {
                facts.io_healthy = job_healthy(ctx, &job.id).await;
                return Ok(facts);
            }
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

/// Whether `path` is a conffile of the caddy package with the contents the
/// package shipped (`dpkg-query`'s md5 of it, against `md5sum` of the file).
fn package_default(path: &'static str) -> host_facts::Fact<bool> {
    host_facts::Fact::new(
        Script::of(
            "dpkg-query -W -f='${Conffiles}\\n' caddy 2>/dev/null; md5sum {} 2>/dev/null; true",
            &[path],
        ),
        |out| parse_package_default(&out.stdout_str(), CADDYFILE_PATH),
    )
}

/// Reads [`package_default`]'s output: conffile lines (` PATH MD5 [obsolete]`)
/// then `md5sum`'s (`MD5  PATH`).
fn parse_package_default(out: &str, path: &str) -> bool {
    let mut shipped = None;
    let mut now = None;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [p, md5] | [p, md5, _] if *p == path && line.starts_with(' ') => shipped = Some(*md5),
            [md5, p] if *p == path => now = Some(*md5),
            _ => {}
        }
    }
    matches!((shipped, now), (Some(a), Some(b)) if a.len() == 32 && a == b)
}

/// The `io` job Nomad runs, unless there is none or it is pdsup's: marked, or
/// (from a pdsup before the mark) the job pdsup submits but for the mark.
/// Without Nomad (a dry run before it is installed) there is no job to adopt.
async fn adopted_io_job(ctx: &mut Ctx<'_>, pdsups: &Job) -> Result<Option<AdoptedJob>> {
    let Ok(nomad) = ctx.nomad().await else {
        return Ok(None);
    };
    let spec = match nomad.job(&pdsups.id).await {
        Ok(Some(spec)) => spec,
        Ok(None) => return Ok(None),
        Err(e) => {
            log::debug!("reading job {}: {e:#}", pdsups.id);
            return Ok(None);
        }
    };
    if job::is_pdsups(&spec) {
        return Ok(None);
    }
    let mut unmarked = pdsups.clone();
    unmarked.meta.clear();
    if job_unchanged(ctx, &unmarked).await {
        return Ok(None);
    }
    Ok(Some(AdoptedJob {
        mounts_io_volume: job::mounts_host_volume(&spec, "io"),
    }))
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

/// What the proxy needs apt to install (in the packages step's transaction):
/// the distribution's Caddy for `--proxy caddy`, unless dpkg has it.
pub fn packages(settings: &Settings, dpkg: &super::packages::DpkgFacts) -> &'static [&'static str] {
    match settings.proxy {
        Proxy::Caddy if !dpkg.installed("caddy") => &["caddy"],
        _ => &[],
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

/// Caddy, from the distribution. Who the Caddyfile belongs to decides the rest:
/// none there, or pdsup's (its header line): pdsup writes it whole, global
/// options included. The user's (no header): it is adopted, see
/// [`plan_caddy_adopted`].
fn plan_caddy(plan: &mut StepPlan, facts: &Facts, settings: &Settings) -> Result<()> {
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
    if adopt::owner(facts.caddyfile.as_deref()) == adopt::Owner::User
        && !facts.caddyfile_is_package_default
    {
        plan_caddy_adopted(plan, facts, settings, reload);
        return Ok(());
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
        restart_caddy(plan);
    }
    Ok(())
}

/// The line pdsup adds to a Caddyfile of the user's.
fn caddy_import_line() -> String {
    format!("import {CADDY_SITE_PATH}")
}

/// The endpoint Caddy asks before an on-demand certificate: the PDS says
/// whether the name is its hostname or one of its handles.
fn tls_check_url() -> String {
    format!("http://127.0.0.1:{PDS_PORT}/tls-check")
}

/// pdsup's site file, imported by the user's Caddyfile.
///
/// Caddy's global options live only in the Caddyfile's global options block,
/// which must be the file's first block, and there is at most one. pdsup's
/// site therefore sets what it can per site, in its `tls` block (the ACME
/// email, `ca` and `ca_root`: per-site forms of the global `email`, `acme_ca`
/// and `acme_ca_root`), so that the user's other sites keep their own ACME
/// settings. Only on-demand TLS's `ask` exists solely as a global option
/// (`on_demand_tls`); `with_global` puts it in a global options block at the
/// top of this file, for a Caddyfile without one of its own that imports this
/// file on its first line (Caddy expands `import` before it parses blocks, so
/// the imported block is the Caddyfile's first). A Caddyfile with a global
/// block of its own must carry the `on_demand_tls` itself.
pub fn caddy_site(settings: &Settings, with_global: bool) -> String {
    let global = if with_global {
        format!(
            "{{\n\ton_demand_tls {{\n\t\task {}\n\t}}\n}}\n\n",
            tls_check_url()
        )
    } else {
        String::new()
    };
    let mut acme = String::new();
    if let Some(ca) = &settings.acme.ca {
        acme.push_str(&format!("\t\tca {ca}\n"));
    }
    if settings.acme.ca_root.is_some() {
        acme.push_str(&format!("\t\tca_root {CADDY_ACME_ROOT}\n"));
    }
    assets::render(
        assets::CADDY_SITE,
        &[
            ("hostname", settings.hostname.as_str()),
            ("path", CADDY_SITE_PATH),
            ("global", &global),
            ("email", settings.email.as_str()),
            ("acme", &acme),
            ("pds_port", &PDS_PORT.to_string()),
        ],
    )
}

/// A Caddyfile of the user's (no pdsup header) is adopted: pdsup's site goes
/// to its own file, and the Caddyfile gets one line, `import <that file>`,
/// every other byte kept. The line goes first when the Caddyfile has no global
/// options block (the site file then brings one with the on-demand `ask`), and
/// is appended when it has one that sets `on_demand_tls`; a global block
/// without `on_demand_tls` is the user's to complete (a blocker says what to
/// add), as pdsup does not edit inside the user's blocks.
///
/// Both files go in through the guarded install (`caddy validate`, the old
/// file kept and put back if Caddy does not start on the new one): the
/// Caddyfile with its candidate; the site file, once imported, with a copy of
/// the Caddyfile that imports the candidate instead. Before it is imported the
/// site file is written as it is (Caddy does not read it yet).
fn plan_caddy_adopted(plan: &mut StepPlan, facts: &Facts, settings: &Settings, reload: bool) {
    let user = facts.caddyfile.as_deref().unwrap_or_default();
    let line = caddy_import_line();
    let at_top = match adopt::global_options(user, &tls_check_url()) {
        adopt::GlobalOptions::Absent => true,
        adopt::GlobalOptions::Present {
            on_demand_tls: true,
            asks,
        } => {
            if !asks {
                plan.notes.push(format!(
                    "the global options of your {CADDYFILE_PATH} set on_demand_tls with an ask of your own: it decides \
                     whether Caddy gets certificates for {h} and the handles under it, so it must approve them \
                     (or ask {}, the PDS's check)",
                    tls_check_url(),
                    h = settings.hostname
                ));
            }
            false
        }
        adopt::GlobalOptions::Present {
            on_demand_tls: false,
            ..
        } => {
            plan.blockers.push(format!(
                "{CADDYFILE_PATH} is yours (it has no pdsup header) and begins with a global options block. pdsup \
                 adds only the line `{line}` to it, but its site needs on-demand TLS to ask the PDS before Caddy \
                 gets a certificate for a handle, and Caddy reads that only from the global options block. Add \
                 inside that block:\n\ton_demand_tls {{\n\t\task {}\n\t}}\nthen run pdsup again",
                tls_check_url()
            ));
            return;
        }
    };
    plan.notes.push(format!(
        "adopted your {CADDYFILE_PATH} (not pdsup's): pdsup's site is {CADDY_SITE_PATH}, and your Caddyfile gets only \
         the line `{line}`"
    ));
    let site = caddy_site(settings, at_top);
    let imported = adopt::has_line(user, &line);
    let site_differs =
        facts.caddy_site.as_deref() != Some(site.as_str()) || facts.caddy_site_install_interrupted;
    if imported && site_differs {
        let install = config_file::Install {
            unit: "caddy".into(),
            file: Some(config_file::NewFile {
                path: CADDY_SITE_PATH.into(),
                contents: site.clone(),
                mode: FileMode::root(0o644),
                validate: Some(caddy_validate_site_candidate(&line)),
            }),
        };
        let detail = format!(
            "{}\n{}",
            crate::plan::diff(facts.caddy_site.as_deref().unwrap_or(""), &site),
            install.describe()
        );
        plan.change(
            format!(
                "write {CADDY_SITE_PATH} for {h} and *.{h}, check it with `caddy validate`, (re)start Caddy",
                h = settings.hostname
            ),
            Action::InstallConfig(install),
        )
        .detail(detail);
        return;
    }
    if site_differs {
        plan.change(
            format!(
                "write {CADDY_SITE_PATH} for {h} and *.{h} (Caddy reads it once your Caddyfile imports it)",
                h = settings.hostname
            ),
            Action::Write {
                path: CADDY_SITE_PATH.into(),
                contents: Contents::Text(site.clone()),
                mode: FileMode::root(0o644),
            },
        )
        .detail(crate::plan::diff(
            facts.caddy_site.as_deref().unwrap_or(""),
            &site,
        ));
    }
    if !imported || facts.caddyfile_install_interrupted {
        let wanted = adopt::with_import(user, &line, at_top);
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
            crate::plan::diff(user, &wanted),
            install.describe()
        );
        plan.change(
            format!(
                "add `{line}` to your {CADDYFILE_PATH} (nothing else in it changes), check it with `caddy validate`, \
                 (re)start Caddy"
            ),
            Action::InstallConfig(install),
        )
        .detail(detail);
    } else if reload || !facts.caddy_active {
        restart_caddy(plan);
    }
}

/// (Re)starts Caddy on the files as they are (a site file changed, or Caddy is down).
fn restart_caddy(plan: &mut StepPlan) {
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

/// `caddy validate` of the user's Caddyfile as it would be with the candidate
/// site file: a copy beside it, its import `line` pointing at the candidate.
fn caddy_validate_site_candidate(line: &str) -> Script {
    let candidate_line = format!("import {}", config_file::candidate_path(CADDY_SITE_PATH));
    Script::of(
        "c={}; trap 'rm -f \"$c\"' EXIT; awk -v l={} -v r={} {} {} > \"$c\" && ",
        &[
            CADDY_CHECK_PATH,
            line,
            &candidate_line,
            "{ if ($0 == l) print r; else print }",
            CADDYFILE_PATH,
        ],
    )
    .push(
        "d=$(mktemp -d) && trap 'rm -rf \"$d\" \"$c\"' EXIT && HOME=\"$d\" XDG_DATA_HOME=\"$d\" XDG_CONFIG_HOME=\"$d\" caddy validate --config \"$c\" --adapter caddyfile",
        &[],
    )
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
    if let Some(adopted) = &facts.io_adopted {
        if !adopted.mounts_io_volume {
            plan.blockers.push(format!(
                "Nomad runs an io job that is not pdsup's (no meta managed-by = \"pdsup\"), and it does not \
                 mount the host volume \"io\", where pdsup puts the ingress file for {} ({}). pdsup leaves \
                 your job as it is: add to its group `volume \"io\" {{ type = \"host\" source = \"io\" }}` and \
                 to its IO task `volume_mount {{ volume = \"io\" destination = \"/io\" }}` (where IO reads its \
                 config), run it, then run pdsup again",
                settings.hostname,
                io_ingress_path(settings)
            ));
            return;
        }
    }
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
    if facts.io_adopted.is_some() {
        plan.notes.push(format!(
            "adopted the io job you run (not pdsup's): pdsup adds only the ingress file {path} and never \
             submits, changes or restarts that job"
        ));
        if !facts.io_healthy {
            plan.notes.push(
                "Nomad does not report your io job running and healthy: the PDS is not reachable through IO until it is (`nomad job status io`)".into(),
            );
        }
    } else if !facts.io_job_unchanged {
        let job = io_job(&image);
        let hcl = job.to_hcl(false);
        plan.change(
            format!("submit the IO job ({image})"),
            Action::SubmitJob(Box::new(job)),
        )
        .detail(hcl);
    }
    if facts.io_adopted.is_none() && (!facts.io_job_unchanged || !facts.io_healthy) {
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

    fn probes(&self, settings: &Settings) -> Vec<Cmd> {
        probes(settings)
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
        // Caddy itself comes in the packages step's transaction.
        let none = crate::steps::packages::DpkgFacts::default();
        assert_eq!(packages(&settings, &none), ["caddy"]);
        let installed =
            crate::steps::packages::DpkgFacts::parse("status caddy install ok installed\n");
        assert!(packages(&settings, &installed).is_empty());
        let fresh = plan(&Facts::fresh(), &settings).unwrap();
        assert_eq!(fresh.changes.len(), 1);
        match &fresh.changes[0].action {
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
        let detail = fresh.changes[0].detail.as_deref().unwrap();
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

    fn caddy_settings() -> Settings {
        let mut settings = Settings::example();
        settings.proxy = Proxy::Caddy;
        settings
    }

    const USERS_CADDYFILE: &str = "# my sites\n:8081 {\n\trespond \"the other site\"\n}\n";

    #[test]
    fn pdsups_caddyfile_carries_the_mark_and_is_rewritten_whole() {
        let settings = caddy_settings();
        assert!(adopt::written_by_pdsup(&caddyfile(&settings)));
        // A Caddyfile pdsup wrote earlier, hand-edited since: still pdsup's.
        let edited = format!("{}# hand edit\n", caddyfile(&settings));
        let facts = Facts {
            caddy_installed: true,
            caddy_active: true,
            caddyfile: Some(edited),
            ..Facts::default()
        };
        let p = plan(&facts, &settings).unwrap();
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        match &p.changes[0].action {
            Action::InstallConfig(config_file::Install { file: Some(f), .. }) => {
                assert_eq!(f.path, CADDYFILE_PATH);
                assert_eq!(f.contents, caddyfile(&settings));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            p.notes.iter().all(|n| !n.contains("adopted")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn a_users_caddyfile_gets_the_site_file_and_one_import_line_at_the_top() {
        let mut settings = caddy_settings();
        settings.acme.ca = Some("https://10.213.0.1:14000/dir".into());
        let facts = Facts {
            caddy_installed: true,
            caddy_active: true,
            caddyfile: Some(USERS_CADDYFILE.into()),
            ..Facts::default()
        };
        let p = plan(&facts, &settings).unwrap();
        assert!(p.blockers.is_empty(), "{:?}", p.blockers);
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("adopted your /etc/caddy/Caddyfile (not pdsup's)")),
            "{:?}",
            p.notes
        );
        assert_eq!(p.changes.len(), 2, "{:?}", p.changes);
        let site = caddy_site(&settings, true);
        match &p.changes[0].action {
            Action::Write { path, contents, .. } => {
                assert_eq!(path, CADDY_SITE_PATH);
                assert_eq!(contents.bytes(), site.as_bytes());
            }
            other => panic!("unexpected {other:?}"),
        }
        match &p.changes[1].action {
            Action::InstallConfig(config_file::Install {
                file: Some(f),
                unit,
            }) => {
                assert_eq!(unit, "caddy");
                assert_eq!(f.path, CADDYFILE_PATH);
                assert_eq!(
                    f.contents,
                    format!("import /etc/caddy/pdsup.caddy\n{USERS_CADDYFILE}")
                );
                assert!(f
                    .validate
                    .as_deref()
                    .unwrap()
                    .contains("caddy validate --config /etc/caddy/Caddyfile.pdsup-new"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // The site file: marked, the on-demand ask in its own global block
        // (first, as the import is the Caddyfile's first line), ACME per site.
        assert!(adopt::written_by_pdsup(&site), "{site}");
        assert!(
            site.contains(
                "{\n\ton_demand_tls {\n\t\task http://127.0.0.1:3000/tls-check\n\t}\n}\n"
            ),
            "{site}"
        );
        assert!(site.contains("pds.example.com, *.pds.example.com {\n\ttls me@example.com {\n\t\ton_demand\n\t\tca https://10.213.0.1:14000/dir\n\t}\n"), "{site}");
        assert!(!site.contains("acme_ca"), "{site}");

        // Converged: the import line in, the site file as wanted.
        let done = Facts {
            caddyfile: Some(format!("import /etc/caddy/pdsup.caddy\n{USERS_CADDYFILE}")),
            caddy_site: Some(site.clone()),
            ..facts.clone()
        };
        assert!(plan(&done, &settings).unwrap().changes.is_empty());

        // The site changes later (another ACME CA): the site file goes through
        // the guarded install, checked through a copy of the user's Caddyfile.
        settings.acme.ca = None;
        let p = plan(&done, &settings).unwrap();
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        match &p.changes[0].action {
            Action::InstallConfig(config_file::Install { file: Some(f), .. }) => {
                assert_eq!(f.path, CADDY_SITE_PATH);
                assert_eq!(f.contents, caddy_site(&settings, true));
                let check = f.validate.as_deref().unwrap();
                assert!(check.contains("awk -v l='import /etc/caddy/pdsup.caddy' -v r='import /etc/caddy/pdsup.caddy.pdsup-new'"), "{check}");
                assert!(check.contains("caddy validate --config \"$c\""), "{check}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The site file's check, run for real with a stand-in `caddy` that prints
    /// the config it is given: the user's Caddyfile, importing the candidate.
    #[test]
    fn the_site_files_check_reads_the_users_caddyfile_importing_the_candidate() {
        let script = caddy_validate_site_candidate(&caddy_import_line()).to_string();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/caddy")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(
            root.join("etc/caddy/Caddyfile"),
            format!("import /etc/caddy/pdsup.caddy\n{USERS_CADDYFILE}"),
        )
        .unwrap();
        let fake = root.join("bin/caddy");
        std::fs::write(&fake, "#!/bin/sh\ncat \"$3\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let prefix = root.display().to_string();
        let script = script.replace(
            "/etc/caddy/Caddyfile",
            &format!("{prefix}/etc/caddy/Caddyfile"),
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", format!("{prefix}/bin:/usr/bin:/bin"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("import /etc/caddy/pdsup.caddy.pdsup-new\n{USERS_CADDYFILE}")
        );
        assert!(
            !root.join("etc/caddy/Caddyfile.pdsup-check").exists(),
            "the copy was left behind"
        );
    }

    #[test]
    fn the_packages_own_caddyfile_is_nobodys() {
        let out = " /etc/caddy/Caddyfile 0f0e3bd3a8e2f2e5b9c6b1c8a3d4e5f6\n\
                   0f0e3bd3a8e2f2e5b9c6b1c8a3d4e5f6  /etc/caddy/Caddyfile\n";
        assert!(parse_package_default(out, CADDYFILE_PATH));
        let obsolete = out.replacen("e5f6\n", "e5f6 obsolete\n", 1);
        assert!(parse_package_default(&obsolete, CADDYFILE_PATH));
        for out in [
            // Edited since it was installed.
            " /etc/caddy/Caddyfile 0f0e3bd3a8e2f2e5b9c6b1c8a3d4e5f6\n\
             11111111111111111111111111111111  /etc/caddy/Caddyfile\n",
            // Caddy not installed (no conffiles), or no Caddyfile.
            "0f0e3bd3a8e2f2e5b9c6b1c8a3d4e5f6  /etc/caddy/Caddyfile\n",
            " /etc/caddy/Caddyfile 0f0e3bd3a8e2f2e5b9c6b1c8a3d4e5f6\n",
            "",
            "garbled\n",
        ] {
            assert!(!parse_package_default(out, CADDYFILE_PATH), "{out:?}");
        }
        // A default Caddyfile is replaced by pdsup's whole file, not adopted.
        let settings = caddy_settings();
        let facts = Facts {
            caddy_installed: true,
            caddy_active: true,
            caddyfile: Some(":80 {\n\troot * /usr/share/caddy\n\tfile_server\n}\n".into()),
            caddyfile_is_package_default: true,
            ..Facts::default()
        };
        let p = plan(&facts, &settings).unwrap();
        match &p.changes[..] {
            [c] => match &c.action {
                Action::InstallConfig(config_file::Install { file: Some(f), .. }) => {
                    assert_eq!(f.contents, caddyfile(&settings))
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_users_global_block_decides_where_the_ask_lives() {
        let settings = caddy_settings();
        let with_ask = "{\n\temail me@example.com\n\ton_demand_tls {\n\t\task http://127.0.0.1:3000/tls-check\n\t}\n}\n:8081 {\n\trespond hi\n}\n";
        let facts = Facts {
            caddy_installed: true,
            caddy_active: true,
            caddyfile: Some(with_ask.into()),
            ..Facts::default()
        };
        let p = plan(&facts, &settings).unwrap();
        assert!(p.blockers.is_empty(), "{:?}", p.blockers);
        match &p.changes[1].action {
            Action::InstallConfig(config_file::Install { file: Some(f), .. }) => {
                assert_eq!(
                    f.contents,
                    format!("{with_ask}import /etc/caddy/pdsup.caddy\n")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        match &p.changes[0].action {
            Action::Write { contents, .. } => {
                assert_eq!(contents.bytes(), caddy_site(&settings, false).as_bytes());
                assert!(!caddy_site(&settings, false).contains("on_demand_tls"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // An ask of the user's: kept, with a note that it must approve the PDS's names.
        let theirs = with_ask.replace("127.0.0.1:3000/tls-check", "127.0.0.1:9000/ok");
        let p = plan(
            &Facts {
                caddyfile: Some(theirs),
                ..facts.clone()
            },
            &settings,
        )
        .unwrap();
        assert!(p.blockers.is_empty());
        assert!(
            p.notes.iter().any(|n| n.contains("must approve them")),
            "{:?}",
            p.notes
        );
        // A global block without on_demand_tls: the user adds it; nothing changes.
        let p = plan(
            &Facts {
                caddyfile: Some("{\n\temail me@example.com\n}\n:8081 {\n}\n".into()),
                ..facts
            },
            &settings,
        )
        .unwrap();
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        assert_eq!(p.blockers.len(), 1);
        assert!(
            p.blockers[0].contains("on_demand_tls {\n\t\task http://127.0.0.1:3000/tls-check\n\t}"),
            "{}",
            p.blockers[0]
        );
    }

    #[test]
    fn an_io_job_of_the_users_is_adopted_and_never_submitted() {
        let settings = Settings::example();
        let facts = Facts {
            io_adopted: Some(AdoptedJob {
                mounts_io_volume: true,
            }),
            io_healthy: true,
            ..Facts::default()
        };
        let p = plan(&facts, &settings).unwrap();
        let summaries: Vec<&str> = p.changes.iter().map(|c| c.summary.as_str()).collect();
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert!(
            summaries[0].starts_with("write the IO ingress"),
            "{summaries:?}"
        );
        assert!(p.changes.iter().all(|c| !matches!(
            c.action,
            Action::SubmitJob(_) | Action::WaitJobHealthy { .. }
        )));
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("adopted the io job you run (not pdsup's)")),
            "{:?}",
            p.notes
        );
        let landed = Facts {
            io_ingress: Some(io_ingress(&settings)),
            ..facts.clone()
        };
        assert!(plan(&landed, &settings).unwrap().is_unchanged());
        let stopped = Facts {
            io_healthy: false,
            ..landed
        };
        let p = plan(&stopped, &settings).unwrap();
        assert!(p.changes.is_empty());
        assert!(
            p.notes.iter().any(|n| n.contains("nomad job status io")),
            "{:?}",
            p.notes
        );

        // A job that does not mount the io volume: a blocker saying what to add.
        let unmounted = Facts {
            io_adopted: Some(AdoptedJob {
                mounts_io_volume: false,
            }),
            ..facts
        };
        let p = plan(&unmounted, &settings).unwrap();
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        assert_eq!(p.blockers.len(), 1);
        for needle in [
            "not pdsup's",
            "volume \"io\"",
            "volume_mount",
            "/srv/nomad/io/pds.hcl",
        ] {
            assert!(
                p.blockers[0].contains(needle),
                "{needle}: {}",
                p.blockers[0]
            );
        }
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
