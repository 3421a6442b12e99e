//! `pdsup upgrade` and `pdsup rollback`: a new PDS image through the same two
//! steps `up` runs (pds image, pds job), as a Nomad deployment gated on the
//! PDS's health check with `auto_revert` (nomad::job's update stanza): a new
//! image that never becomes healthy is replaced by Nomad with the last stable
//! version of the job, and the upgrade says so.
//!
//! The site pins what it runs in `site.toml`: `pds_image` (the exact image),
//! `pds_version` (what `/xrpc/_health` reported) and `pds_image_digest`; the
//! release it replaced is kept as `pds_previous`, which `rollback` returns to.

use std::cmp::Ordering;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::site::{Session, Site};
use super::Output;
use crate::error::{bail, Result};
use crate::host::dest::Destination;
use crate::host::facts::Fact;
use crate::host::ssh::SshOptions;
use crate::host::{Cmd, Script};
use crate::inputs::ImageRef;
use crate::plan::Progress;
use crate::secret::Secret;
use crate::state::{PdsRelease, SiteRecord};
use crate::steps::pds_image::image_digest;
use crate::steps::{self, Ctx};
use crate::ui::Ui;

/// The steps of an upgrade: the image on the droplet, then the job that runs it.
pub const UPGRADE: &[&dyn steps::AnyStep] =
    &[&steps::pds_image::PdsImageStep, &steps::pds_job::PdsJobStep];

/// How long Nomad gets to put the previous version back after a failed deployment.
const REVERT_TIMEOUT: Duration = Duration::from_secs(300);

/// What to upgrade to.
#[derive(Clone, Debug)]
pub struct Target {
    /// The image `site.toml` keeps as `pds_image`: what the user chose (a tag
    /// such as `pds:0.4`, an exact version's tag, or a digest).
    pub image: String,
    /// That image by its registry digest, when known before the run (a
    /// rollback to a pinned release, a refreshed tag): what the job runs.
    pub pinned: Option<String>,
    /// Load the image from this `docker save` tarball instead of pulling it.
    pub archive: Option<PathBuf>,
    /// Pull `image` (a floating tag such as `pds:0.4`) again and run what it
    /// now stands for, by digest: Nomad never pulls a tag Docker already has.
    pub refresh: bool,
}

impl Target {
    /// The image reference the job runs.
    pub fn run_image(&self) -> &str {
        self.pinned.as_deref().unwrap_or(&self.image)
    }
}

/// The image a run deploys for the site's image `requested`: the digest
/// `site.toml` pinned it to, when it pinned this very image; else `requested`
/// itself (and the pds job step pins it to what Docker pulled).
pub fn image_to_run(requested: &str, record: &SiteRecord) -> String {
    match (&record.pds_image, &record.pds_image_digest) {
        (Some(image), Some(digest))
            if image == requested && repository_of(digest) == repository_of(requested) =>
        {
            digest.clone()
        }
        _ => requested.to_string(),
    }
}

/// A pin belongs to the image it was taken for: when `up --pds-image` names
/// another image, the recorded version and digest are the old image's.
pub fn forget_stale_pin(record: &mut SiteRecord, previous_image: Option<&str>) {
    if previous_image.is_some() && record.pds_image.as_deref() != previous_image {
        record.pds_version = None;
        record.pds_image_digest = None;
    }
}

/// After a run that left the PDS answering: records in `site.toml` the
/// version it reported and the registry digest of `run_image` (what the job
/// runs), so that later runs deploy exactly that image.
pub async fn record_pin(ctx: &mut Ctx<'_>, run_image: &str) -> Result<()> {
    let Some(version) = ctx.outcome.pds_version.clone() else {
        return Ok(());
    };
    let digest = match run_image.contains('@') {
        true => Some(run_image.to_string()),
        // The pds job step asked the same on a converged run: answered from its facts.
        false => ctx.read(&image_digest(run_image)).await?,
    };
    if ctx.record.pds_version.as_ref() == Some(&version) && ctx.record.pds_image_digest == digest {
        return Ok(());
    }
    let mut record = ctx.record.clone();
    record.pds_version = Some(version);
    record.pds_image_digest = digest;
    ctx.site.save_record(&record)?;
    ctx.record = record;
    Ok(())
}

/// The backup `upgrade` takes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupChoice {
    /// A local archive through `ops::backup` (a passphrase was given).
    Archive,
    /// The droplet's scheduled backup, `pdsup-backup.service`, run once now.
    Unit,
    /// None: `--no-backup`, or no backup is configured.
    None,
}

/// Backups are configured when a passphrase is given (`--passphrase-file`,
/// `PDSUP_BACKUP_PASSPHRASE`: a local archive) or the droplet has the
/// scheduled backup's unit; `--no-backup` skips either.
pub fn backup_choice(no_backup: bool, passphrase_given: bool, unit_present: bool) -> BackupChoice {
    match (no_backup, passphrase_given, unit_present) {
        (true, _, _) => BackupChoice::None,
        (false, true, _) => BackupChoice::Archive,
        (false, false, true) => BackupChoice::Unit,
        (false, false, false) => BackupChoice::None,
    }
}

/// The scheduled backup's unit (`pdsup backup --schedule` installs it).
pub const BACKUP_UNIT: &str = "pdsup-backup.service";

fn backup_unit_present() -> Fact<bool> {
    Fact::new(
        Cmd::sh("systemctl cat pdsup-backup.service >/dev/null 2>&1 && echo present || true"),
        |out| out.stdout_str().trim() == "present",
    )
}

/// What `upgrade` may back up with: the site again (a backup opens its own
/// connection) and the passphrase, when one was given.
pub struct BackupFirst {
    pub no_backup: bool,
    pub archive: Option<ArchiveBackup>,
}

pub struct ArchiveBackup {
    pub site: Site,
    pub destination: Destination,
    pub options: SshOptions,
    pub passphrase: Secret,
}

/// Pulls `image` on the droplet again.
fn pull_again(image: &str) -> crate::host::Cmd {
    Script::of("docker pull --quiet {} >/dev/null", &[image]).cmd()
}

/// `--to VERSION`: the site's image repository at that tag
/// (`ghcr.io/bluesky-social/pds:0.4` → `ghcr.io/bluesky-social/pds:0.4.200`).
pub fn image_for_version(current: &str, version: &str) -> Result<String> {
    if !looks_like_version(version) {
        bail!(
            BadInput,
            "--to {version:?}: expected a PDS version like 0.4.204 (or give the image with --image)"
        );
    }
    let repository = repository_of(current);
    let image = format!("{repository}:{version}");
    image.parse::<ImageRef>()?;
    Ok(image)
}

/// An image reference without its tag or digest.
pub fn repository_of(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' is a tag (before it, a registry's port).
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

/// The tag of an image reference, if it has one.
pub fn tag_of(image: &str) -> Option<&str> {
    let repository = repository_of(image);
    let rest = &image.split('@').next().unwrap_or(image)[repository.len()..];
    rest.strip_prefix(':')
}

fn looks_like_version(text: &str) -> bool {
    let text = text.strip_prefix('v').unwrap_or(text);
    !text.is_empty()
        && text
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()))
}

/// Compares dotted versions numerically (`0.4.9` < `0.4.10`); a shorter one
/// that is a prefix of the other (`0.4`, an image tag) is equal to it: it
/// stands for any of its patch versions. `None` when either is not a version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    if !looks_like_version(a) || !looks_like_version(b) {
        return None;
    }
    let parts = |v: &str| -> Vec<u64> {
        v.trim_start_matches('v')
            .split('.')
            .map(|p| p.parse().unwrap_or(u64::MAX))
            .collect()
    };
    let (a, b) = (parts(a), parts(b));
    for (x, y) in a.iter().zip(&b) {
        match x.cmp(y) {
            Ordering::Equal => {}
            other => return Some(other),
        }
    }
    Some(Ordering::Equal)
}

/// Refuses a move to an older version unless forced: the PDS migrates its
/// databases forward, and an older PDS may not read them.
pub fn check_not_downgrade(before: Option<&str>, target_image: &str, force: bool) -> Result<()> {
    let (Some(before), Some(target)) = (before, tag_of(target_image)) else {
        return Ok(());
    };
    if compare_versions(target, before) == Some(Ordering::Less) && !force {
        bail!(
            Blocked,
            "{target_image} is older than the running PDS {before}: the PDS migrates its databases \
             forward and an older version may not read them. Nothing was changed; pass --force to \
             downgrade anyway (take a backup first)"
        );
    }
    Ok(())
}

/// The result, for the text and `--json` outputs.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub dry_run: bool,
    pub before: PdsRelease,
    pub after: PdsRelease,
    /// The backup taken first: the archive's path, or the unit that ran
    /// (with `--dry-run`, the one that would be).
    pub backup: Option<String>,
    pub changes: Vec<String>,
}

/// `pdsup upgrade` (`rollback` is an upgrade to the previous release).
pub async fn upgrade(
    mut session: Session,
    mut target: Target,
    backup_first: BackupFirst,
    force: bool,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let before = current_release(&session, &ui).await;
    check_not_downgrade(before.version.as_deref(), &target.image, force)?;

    let backup = take_backup_first(&session, backup_first, dry_run, output, &ui).await?;
    if target.refresh && !dry_run {
        ui.progress(&format!("pulling {} again", target.image));
        session
            .host
            .run(&pull_again(&target.image))
            .await
            .map_err(|e| {
                e.context(format!("pulling {} on the droplet", target.image))
                    .with_hint(
                        "nothing was upgraded; check the droplet's access to the registry, or give \
                         the image with --image REF --pds-image-archive FILE",
                    )
            })?;
        match image_digest(&target.image)
            .read(session.host.as_ref())
            .await?
        {
            Some(by_digest) => target.pinned = Some(by_digest),
            None => bail!(
                Blocked,
                "{} has no registry digest on the droplet after the pull, so pdsup cannot tell \
                 Nomad to run the newer image; give the version with --to VERSION or the image \
                 with --image REF",
                target.image
            ),
        }
    }
    let mut settings = session.site.settings.clone();
    settings.pds_image = target.run_image().to_string();
    settings.pds_image_archive = target.archive.clone();
    session.site.settings = settings;
    let mut ctx = session.ctx(&ui);
    let job_before = pds_job_now(&mut ctx).await?;

    let run = steps::runner::run(&mut ctx, UPGRADE, dry_run).await;
    let report = match run {
        Ok(report) => report,
        Err(e) => {
            ui.clear();
            return Err(explain_failure(&mut ctx, e, &before, &target, job_before).await);
        }
    };
    let changes: Vec<String> = report
        .steps
        .iter()
        .flat_map(|s| s.changes.iter().cloned())
        .collect();
    let after = if dry_run {
        PdsRelease {
            image: target.image.clone(),
            digest: target.pinned.clone(),
            ..PdsRelease::default()
        }
    } else {
        let run_image = target.run_image().to_string();
        record_pin(&mut ctx, &run_image).await?;
        let after = PdsRelease {
            image: target.image.clone(),
            version: ctx.outcome.pds_version.clone(),
            digest: ctx.record.pds_image_digest.clone(),
        };
        let mut record = ctx.record.clone();
        if (&before.image, &before.digest) != (&after.image, &after.digest) {
            record.pds_previous = Some(before.clone());
        }
        record.pds_image = Some(after.image.clone());
        ctx.site.save_record(&record)?;
        after
    };
    ui.clear();
    let report = Report {
        ok: true,
        dry_run,
        before,
        after,
        backup,
        changes,
    };
    super::print(output, &report, &render(&report))
}

/// Takes the backup the site is configured for, before anything changes; a
/// failed backup stops the upgrade.
async fn take_backup_first(
    session: &Session,
    backup_first: BackupFirst,
    dry_run: bool,
    output: Output,
    ui: &Ui,
) -> Result<Option<String>> {
    let unit_present = match (backup_first.no_backup, &backup_first.archive) {
        (false, None) => backup_unit_present().read(session.host.as_ref()).await?,
        _ => false,
    };
    let choice = backup_choice(
        backup_first.no_backup,
        backup_first.archive.is_some(),
        unit_present,
    );
    let stopped = "the backup before the upgrade failed, so nothing was upgraded";
    let hint = "fix the backup, or pass --no-backup to upgrade without one";
    match (choice, backup_first.archive) {
        (BackupChoice::None, _) => Ok(None),
        (BackupChoice::Archive, _) if dry_run => Ok(Some("a local archive (ops backup)".into())),
        (BackupChoice::Unit, _) if dry_run => Ok(Some(BACKUP_UNIT.into())),
        (BackupChoice::Archive, Some(a)) => {
            let done =
                super::backup::backup(a.site, a.destination, &a.options, &a.passphrase, output)
                    .await
                    .map_err(|e| e.context(stopped).with_hint(hint))?;
            Ok(Some(done.archive.display().to_string()))
        }
        (BackupChoice::Unit, _) => {
            ui.progress(&format!(
                "backing up first: systemctl start --wait {BACKUP_UNIT}"
            ));
            session
                .host
                .run(&Cmd::sh("systemctl start --wait pdsup-backup.service"))
                .await
                .map_err(|e| e.context(stopped).with_hint(hint))?;
            ui.clear();
            Ok(Some(BACKUP_UNIT.into()))
        }
        (BackupChoice::Archive, None) => unreachable!("an archive backup comes with its site"),
    }
}

/// The release the site runs: its image, and the version the PDS reports
/// (`None` when it does not answer).
async fn current_release(session: &Session, ui: &Ui) -> PdsRelease {
    let mut ctx = session.ctx(ui);
    let version = match ctx.pds().await {
        Ok(pds) => pds.health().await.ok(),
        Err(_) => None,
    };
    PdsRelease {
        image: session.site.settings.pds_image.clone(),
        version,
        digest: session.site.record.pds_image_digest.clone(),
    }
}

/// The pds job's version and the image it runs, before the upgrade.
#[derive(Clone, Debug, Default)]
struct JobNow {
    version: Option<u64>,
    image: Option<String>,
}

async fn pds_job_now(ctx: &mut Ctx<'_>) -> Result<JobNow> {
    let job = ctx.nomad().await?.job("pds").await?;
    Ok(match job {
        Some(job) => JobNow {
            version: job["Version"].as_u64(),
            image: job["TaskGroups"][0]["Tasks"][0]["Config"]["image"]
                .as_str()
                .map(str::to_string),
        },
        None => JobNow::default(),
    })
}

/// A failed upgrade: when Nomad reverted the job (auto_revert), waits for the
/// reverted version to be healthy and the PDS to answer again, and says so.
async fn explain_failure(
    ctx: &mut Ctx<'_>,
    failure: crate::error::Error,
    before: &PdsRelease,
    target: &Target,
    job_before: JobNow,
) -> crate::error::Error {
    let job_version_before = job_before.version;
    // What the job ran before (by digest when pinned), else the site's image.
    let image_before = job_before.image.unwrap_or_else(|| before.image.clone());
    let hint =
        "nothing in site.toml changed; see `pdsup logs pds` (or `docker logs` of the pds task) \
                for why the new image did not become healthy";
    let deadline = Instant::now() + REVERT_TIMEOUT;
    // The version the failed deployment submitted: any newer one running the
    // previous image is Nomad's revert.
    let submitted = loop {
        match reverted_version(ctx, job_version_before, &image_before).await {
            Ok(Some(version)) => break Some(version),
            Ok(None) if Instant::now() < deadline && job_version_before.is_some() => {
                ctx.progress.progress(
                    "the upgrade failed: waiting for Nomad to revert to the previous version",
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            _ => break None,
        }
    };
    let Some(reverted) = submitted else {
        return failure
            .context(format!("the upgrade to {} failed", target.image))
            .with_hint(format!(
                "{hint}; Nomad did not revert the pds job: `pdsup rollback` or `pdsup upgrade --image {}` puts the previous image back",
                before.image
            ));
    };
    let progress = ctx.progress;
    let healthy = match ctx.nomad().await {
        Ok(nomad) => nomad
            .wait_job_version_healthy("pds", reverted, REVERT_TIMEOUT, &mut |m| {
                progress.progress(m)
            })
            .await
            .is_ok(),
        Err(_) => false,
    };
    let answers = healthy && steps::pds_job::wait_pds_health(ctx).await.is_ok();
    let now = ctx.outcome.pds_version.clone().unwrap_or_default();
    let state = if answers {
        format!(
            "Nomad reverted the pds job to {} (job version {reverted}) and the PDS answers again (version {now})",
            before.image
        )
    } else {
        format!(
            "Nomad reverted the pds job to {} (job version {reverted}), but the PDS does not answer yet",
            before.image
        )
    };
    failure
        .context(format!(
            "the upgrade to {} did not become healthy: {state}",
            target.image
        ))
        .with_kind(crate::error::ErrorKind::Unhealthy)
        .with_hint(hint)
}

/// A job version newer than those before the upgrade that runs `image`
/// again: Nomad's revert.
async fn reverted_version(
    ctx: &mut Ctx<'_>,
    before: Option<u64>,
    image: &str,
) -> Result<Option<u64>> {
    let Some(before) = before else {
        return Ok(None);
    };
    let Some(job) = ctx.nomad().await?.job("pds").await? else {
        return Ok(None);
    };
    let version = job["Version"].as_u64().unwrap_or(0);
    let runs = job["TaskGroups"][0]["Tasks"][0]["Config"]["image"].as_str() == Some(image);
    // The upgrade submitted before + 1; the revert is a later one.
    Ok((version > before + 1 && runs).then_some(version))
}

fn render(report: &Report) -> String {
    let show = |r: &PdsRelease| match &r.version {
        Some(v) => format!("{} (version {v})", r.image),
        None => r.image.clone(),
    };
    let mut text = String::new();
    if report.dry_run {
        text.push_str(&format!(
            "dry run: would go from {} to {}\n",
            show(&report.before),
            report.after.image
        ));
        if let Some(backup) = &report.backup {
            text.push_str(&format!("  - back up first: {backup}\n"));
        }
        for change in &report.changes {
            text.push_str(&format!("  - {change}\n"));
        }
        return text;
    }
    if let Some(backup) = &report.backup {
        text.push_str(&format!("backup: {backup}\n"));
    }
    if report.changes.is_empty() {
        text.push_str(&format!("already running {}\n", show(&report.after)));
        return text;
    }
    text.push_str(&format!("before: {}\n", show(&report.before)));
    text.push_str(&format!("after:  {}\n", show(&report.after)));
    match &report.after.digest {
        Some(d) => text.push_str(&format!("pinned: {d}\n")),
        None => text.push_str(
            "pinned by tag (the image has no registry digest on the droplet: built or loaded there)\n",
        ),
    }
    text
}

/// The steps of a Nomad upgrade: the release installed (downloaded, its
/// signature and checksum checked, Nomad restarted on it)...
const NOMAD_INSTALL: &[&dyn steps::AnyStep] = &[&steps::nomad_install::NomadInstallStep];
/// ...then the node and the PDS checked as `up` checks them, waiting until
/// the node is ready and the pds job healthy again.
const NOMAD_RECHECK: &[&dyn steps::AnyStep] = &[
    &steps::nomad_config::NomadConfigStep,
    &steps::pds_job::PdsJobStep,
];

/// How long the agent gets to answer with its new version after the restart.
const NOMAD_RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `upgrade --nomad` takes the release from.
#[derive(Clone, Debug)]
pub struct NomadTarget {
    pub version: String,
    /// `--nomad-release-url` (a mirror laid out like releases.hashicorp.com).
    pub release_url: Option<String>,
    /// `--nomad-release-key`: the key that signs that mirror's SHA256SUMS.
    pub release_key: Option<PathBuf>,
}

/// A Nomad version as releases name it (`1.10.5`, `1.11.0-beta.1`).
pub fn check_nomad_version(version: &str) -> Result<()> {
    let plain = version.split(['-', '+']).next().unwrap_or_default();
    if !looks_like_version(plain)
        || plain.starts_with('v')
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
    {
        bail!(
            BadInput,
            "--nomad {version:?}: expected a Nomad version like {}",
            crate::settings::NOMAD_VERSION
        );
    }
    Ok(())
}

/// The result of `upgrade --nomad`, for the text and `--json` outputs.
#[derive(Debug, Serialize)]
pub struct NomadReport {
    pub ok: bool,
    pub dry_run: bool,
    pub before: Option<String>,
    pub after: String,
    /// What the PDS reported once Nomad ran it again.
    pub pds_version: Option<String>,
    pub changes: Vec<String>,
}

/// `pdsup upgrade --nomad VERSION` (and `rollback --nomad`): Nomad's own
/// release, installed the way `up` installs it, then Nomad restarted and the
/// PDS checked until it answers again. The jobs and their data stay: Nomad
/// keeps its state in its data dir, and the PDS's is a host volume.
pub async fn upgrade_nomad(
    mut session: Session,
    target: NomadTarget,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    check_nomad_version(&target.version)?;
    let ui = Ui::new(output.json, output.quiet);
    let before = steps::facts::nomad_version()
        .read(session.host.as_ref())
        .await?;
    let mut settings = session.site.settings.clone();
    settings.nomad.version = target.version.clone();
    settings.nomad.zip = None;
    if let Some(url) = &target.release_url {
        settings.nomad.release_url = url.parse::<crate::inputs::HttpUrl>()?.to_string();
    }
    if let Some(key) = &target.release_key {
        settings.nomad.release_key = Some(key.clone());
    }
    session.site.settings = settings;
    let mut ctx = session.ctx(&ui);
    let installed = match steps::runner::run(&mut ctx, NOMAD_INSTALL, dry_run).await {
        Ok(report) => report,
        Err(e) => {
            ui.clear();
            return Err(e.context(format!(
                "installing Nomad {} failed; the droplet still has Nomad {}",
                target.version,
                before.as_deref().unwrap_or("(none)")
            )));
        }
    };
    let mut changes: Vec<String> = installed
        .steps
        .iter()
        .flat_map(|s| s.changes.iter().cloned())
        .collect();
    if !dry_run {
        wait_nomad_version(&mut ctx, &target.version).await?;
        ctx.forget_facts();
        let rechecked = steps::runner::run(&mut ctx, NOMAD_RECHECK, false)
            .await
            .map_err(|e| {
                e.context(format!(
                    "Nomad {} runs, but the PDS is not back",
                    target.version
                ))
                .with_hint(format!(
                    "`pdsup status` shows what is wrong; `pdsup rollback --nomad` returns to Nomad {}",
                    before.as_deref().unwrap_or("(none)")
                ))
            })?;
        changes.extend(
            rechecked
                .steps
                .iter()
                .flat_map(|s| s.changes.iter().cloned()),
        );
        if before.as_deref() != Some(target.version.as_str()) {
            let mut record = ctx.record.clone();
            record.nomad_previous = before.clone();
            record.nomad_version = Some(target.version.clone());
            ctx.site.save_record(&record)?;
            ctx.record = record;
        }
    }
    ui.clear();
    let report = NomadReport {
        ok: true,
        dry_run,
        before,
        after: target.version.clone(),
        pds_version: ctx.outcome.pds_version.clone(),
        changes,
    };
    super::print(output, &report, &render_nomad(&report))
}

/// Polls the agent until it answers with `version` (it restarts on the new binary).
async fn wait_nomad_version(ctx: &mut Ctx<'_>, version: &str) -> Result<()> {
    let deadline = Instant::now() + NOMAD_RESTART_TIMEOUT;
    loop {
        let answer = match ctx.nomad().await {
            Ok(nomad) => nomad.agent_self().await.map_err(crate::error::Error::from),
            Err(e) => Err(e),
        };
        let last = match answer {
            Ok(agent) if agent.version == version => return Ok(()),
            Ok(agent) => format!("it reports {}", agent.version),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                TimedOut,
                "Nomad did not come back as {version} within {}s after its restart ({last})",
                NOMAD_RESTART_TIMEOUT.as_secs()
            );
        }
        ctx.progress
            .progress(&format!("waiting for Nomad {version} to answer"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn render_nomad(report: &NomadReport) -> String {
    let before = report.before.as_deref().unwrap_or("(none)");
    let mut text = String::new();
    if report.dry_run {
        text.push_str(&format!(
            "dry run: would go from Nomad {before} to {}\n",
            report.after
        ));
        for change in &report.changes {
            text.push_str(&format!("  - {change}\n"));
        }
        return text;
    }
    if report.before.as_deref() == Some(report.after.as_str()) {
        text.push_str(&format!("already running Nomad {}\n", report.after));
        return text;
    }
    text.push_str(&format!("before: Nomad {before}\n"));
    text.push_str(&format!("after:  Nomad {}\n", report.after));
    if let Some(v) = &report.pds_version {
        text.push_str(&format!("the PDS answers again (version {v})\n"));
    }
    text
}

/// `pdsup rollback --nomad`: the version `site.toml` kept as `nomad_previous`.
pub fn nomad_rollback_version(record: &SiteRecord, site_file: &std::path::Path) -> Result<String> {
    match &record.nomad_previous {
        Some(v) => Ok(v.clone()),
        None => bail!(
            BadInput,
            "{} records no previous Nomad version: `rollback --nomad` returns to the version \
             the last `pdsup upgrade --nomad` replaced, and there was none",
            site_file.display()
        ),
    }
}

/// `pdsup rollback`: the release `site.toml` kept as `pds_previous`.
pub fn rollback_target(session: &Session, archive: Option<PathBuf>) -> Result<Target> {
    let Some(previous) = &session.site.record.pds_previous else {
        bail!(
            BadInput,
            "{} records no previous PDS release: rollback returns to the image the last \
             `pdsup upgrade` replaced, and there was none",
            session.site.dir.site_file().display()
        );
    };
    Ok(Target {
        image: previous.image.clone(),
        pinned: previous.digest.clone(),
        archive,
        refresh: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_and_tag_of_image_references() {
        let table = [
            (
                "ghcr.io/bluesky-social/pds:0.4",
                "ghcr.io/bluesky-social/pds",
                Some("0.4"),
            ),
            ("pdsup-test/pds:0.4.204", "pdsup-test/pds", Some("0.4.204")),
            ("localhost:5000/pds", "localhost:5000/pds", None),
            ("localhost:5000/pds:1.2", "localhost:5000/pds", Some("1.2")),
            ("pds@sha256:abc", "pds", None),
            ("pds:0.4@sha256:abc", "pds", Some("0.4")),
        ];
        for (image, repository, tag) in table {
            assert_eq!(repository_of(image), repository, "{image}");
            assert_eq!(tag_of(image), tag, "{image}");
        }
    }

    #[test]
    fn to_version_keeps_the_sites_repository() {
        assert_eq!(
            image_for_version("ghcr.io/bluesky-social/pds:0.4", "0.4.204").unwrap(),
            "ghcr.io/bluesky-social/pds:0.4.204"
        );
        assert_eq!(
            image_for_version("localhost:5000/pds", "0.5.1").unwrap(),
            "localhost:5000/pds:0.5.1"
        );
        for bad in ["latest", "0.4.", "", "0..4", "1.2.3-rc1"] {
            let e = image_for_version("pds:0.4", bad).unwrap_err();
            assert!(e.to_string().contains("--to"), "{bad}: {e}");
        }
    }

    #[test]
    fn versions_compare_numerically_and_a_tag_covers_its_patches() {
        use Ordering::*;
        let table = [
            ("0.4.9", "0.4.10", Some(Less)),
            ("0.5.0", "0.4.204", Some(Greater)),
            ("0.4.204", "0.4.204", Some(Equal)),
            ("0.4", "0.4.204", Some(Equal)),
            ("v0.4.1", "0.4.0", Some(Greater)),
            ("latest", "0.4.1", None),
        ];
        for (a, b, want) in table {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn a_downgrade_is_refused_unless_forced() {
        let e = check_not_downgrade(Some("0.4.204"), "pds:0.4.100", false).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Blocked);
        assert!(e.to_string().contains("--force"), "{e}");
        check_not_downgrade(Some("0.4.204"), "pds:0.4.100", true).unwrap();
        check_not_downgrade(Some("0.4.204"), "pds:0.4.205", false).unwrap();
        check_not_downgrade(Some("0.4.204"), "pds:0.4", false).unwrap();
        // Unknown versions (the PDS does not answer, a tag like `latest`) are not refused.
        check_not_downgrade(None, "pds:0.4.100", false).unwrap();
        check_not_downgrade(Some("0.4.204"), "pds:latest", false).unwrap();
    }

    #[test]
    fn the_report_shows_before_after_and_the_pin() {
        let report = Report {
            ok: true,
            dry_run: false,
            before: PdsRelease {
                image: "pds:0.4.1".into(),
                version: Some("0.4.1".into()),
                digest: None,
            },
            after: PdsRelease {
                image: "pds:0.4.2".into(),
                version: Some("0.4.2".into()),
                digest: Some("pds@sha256:ab".into()),
            },
            backup: Some("/state/backups/a.tar.gz".into()),
            changes: vec!["submit the pds job (pds:0.4.2)".into()],
        };
        assert_eq!(
            render(&report),
            "backup: /state/backups/a.tar.gz\nbefore: pds:0.4.1 (version 0.4.1)\nafter:  pds:0.4.2 (version 0.4.2)\npinned: pds@sha256:ab\n"
        );
    }

    fn record(image: &str, digest: Option<&str>) -> SiteRecord {
        SiteRecord {
            pds_image: Some(image.into()),
            pds_version: Some("0.4.204".into()),
            pds_image_digest: digest.map(str::to_string),
            ..SiteRecord::default()
        }
    }

    #[test]
    fn up_runs_the_pinned_digest_of_the_sites_own_image_only() {
        let tag = "ghcr.io/bluesky-social/pds:0.4";
        let digest = "ghcr.io/bluesky-social/pds@sha256:ab12";
        let pinned = record(tag, Some(digest));
        assert_eq!(image_to_run(tag, &pinned), digest);
        // --pds-image names another image: that one, not the old pin.
        assert_eq!(image_to_run("example/pds:1", &pinned), "example/pds:1");
        // No digest known (an image loaded from an archive): the tag.
        assert_eq!(image_to_run(tag, &record(tag, None)), tag);
        // A digest of another repository is no pin of this image.
        assert_eq!(
            image_to_run(tag, &record(tag, Some("other/pds@sha256:ab12"))),
            tag
        );
        assert_eq!(image_to_run(tag, &SiteRecord::default()), tag);
    }

    #[test]
    fn a_pin_is_forgotten_when_the_sites_image_changes() {
        let digest = Some("ghcr.io/bluesky-social/pds@sha256:ab12");
        let mut same = record("ghcr.io/bluesky-social/pds:0.4", digest);
        forget_stale_pin(&mut same, Some("ghcr.io/bluesky-social/pds:0.4"));
        assert_eq!(same.pds_image_digest.as_deref(), digest);
        assert_eq!(same.pds_version.as_deref(), Some("0.4.204"));
        let mut moved = record("example/pds:1", digest);
        forget_stale_pin(&mut moved, Some("ghcr.io/bluesky-social/pds:0.4"));
        assert_eq!(moved.pds_image_digest, None);
        assert_eq!(moved.pds_version, None);
        // The first up: nothing recorded before, nothing to forget.
        let mut first = record("example/pds:1", digest);
        forget_stale_pin(&mut first, None);
        assert_eq!(first.pds_image_digest.as_deref(), digest);
    }

    #[test]
    fn the_backup_first_is_the_configured_one_unless_skipped() {
        use BackupChoice::*;
        let table = [
            // no_backup, passphrase given, unit present
            ((false, false, false), None),
            ((false, false, true), Unit),
            ((false, true, false), Archive),
            ((false, true, true), Archive),
            ((true, true, true), None),
            ((true, false, true), None),
        ];
        for ((skip, pass, unit), want) in table {
            assert_eq!(
                backup_choice(skip, pass, unit),
                want,
                "{skip} {pass} {unit}"
            );
        }
    }

    #[test]
    fn a_rollback_runs_the_previous_digest_when_it_had_one() {
        let target = Target {
            image: "pds:0.4".into(),
            pinned: Some("pds@sha256:ab".into()),
            archive: None,
            refresh: false,
        };
        assert_eq!(target.run_image(), "pds@sha256:ab");
        let by_tag = Target {
            pinned: None,
            ..target
        };
        assert_eq!(by_tag.run_image(), "pds:0.4");
    }

    #[test]
    fn nomad_versions_are_checked_before_anything() {
        for good in ["1.10.5", "1.11.0-beta.1", "1.9.7+ent"] {
            check_nomad_version(good).unwrap();
        }
        for bad in ["", "v1.10.5", "latest", "1.10.", "1.10.5; rm -rf /", "1..2"] {
            let e = check_nomad_version(bad).unwrap_err();
            assert!(e.to_string().contains("--nomad"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_nomad_report_shows_before_and_after() {
        let report = NomadReport {
            ok: true,
            dry_run: false,
            before: Some("1.10.5".into()),
            after: "1.10.6".into(),
            pds_version: Some("0.4.217".into()),
            changes: vec!["upgrade Nomad 1.10.5 → 1.10.6".into()],
        };
        assert_eq!(
            render_nomad(&report),
            "before: Nomad 1.10.5\nafter:  Nomad 1.10.6\nthe PDS answers again (version 0.4.217)\n"
        );
    }

    #[test]
    fn a_nomad_rollback_needs_a_previous_version() {
        let file = std::path::Path::new("/state/site.toml");
        let e = nomad_rollback_version(&SiteRecord::default(), file).unwrap_err();
        assert!(e.to_string().contains("no previous Nomad version"), "{e}");
        let record = SiteRecord {
            nomad_previous: Some("1.10.5".into()),
            ..SiteRecord::default()
        };
        assert_eq!(nomad_rollback_version(&record, file).unwrap(), "1.10.5");
    }
}
