//! `pdsup fleet up|plan|status|down|backup FILE`: every site of a fleet file at
//! once, `--parallel N` at a time, one SSH connection per site.
//!
//! A site runs exactly what `pdsup up` runs on it (the steps of
//! [`steps::UP`] with its own state directory), then its participants'
//! accounts. A failing site never stops the others; the closing table gives
//! each site's result. The handouts (a page per participant, one CSV) are
//! written from what the sites' state directories hold, so a re-run that
//! converges one failed site gives complete handouts again.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backup;
use super::site::{Session, Site};
use super::Output;
use crate::error::{err, Context, Result};
use crate::host::dest::Destination;
use crate::host::ssh::{SshHost, SshOptions};
use crate::host::{Cmd, Host};
use crate::pds::xrpc::XrpcError;
use crate::plan::Progress;
use crate::secret::Secret;
use crate::settings::fleet::Participant;
use crate::settings::Settings;
use crate::state::{SiteDir, SiteRecord};
use crate::steps::{self, Ctx};
use crate::ui::fleet::{self as fleet_ui, BackupCell, FleetUi, Handout, SiteProgress, SiteRow};

/// The PDS's own limit on account creation: 100 per 5 minutes from one IP.
/// pdsup stays a little under it.
const CREATE_LIMIT: usize = 90;
const CREATE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// One site of the fleet, resolved and checked (nothing contacted yet).
pub struct FleetSite {
    pub dir: SiteDir,
    pub settings: Settings,
    /// What `site.toml` will hold once connected.
    pub record: SiteRecord,
    pub destination: Destination,
    pub options: SshOptions,
    pub participants: Vec<Participant>,
    /// Whether pdsup ever reached the droplet (its `site.toml` exists).
    pub reached: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetOp {
    Up,
    Plan,
    Status,
    Down,
    Backup,
}

impl FleetOp {
    fn name(self) -> &'static str {
        match self {
            FleetOp::Up => "up",
            FleetOp::Plan => "plan",
            FleetOp::Status => "status",
            FleetOp::Down => "down",
            FleetOp::Backup => "backup",
        }
    }
}

pub struct FleetRun {
    pub sites: Vec<FleetSite>,
    pub parallel: usize,
    /// Logs, handouts and the CSV go here.
    pub out_dir: PathBuf,
    pub warnings: Vec<String>,
    pub output: Output,
    /// `fleet backup`'s passphrase (one for every site's archive).
    pub passphrase: Option<Secret>,
}

/// What a site's run gave, besides its line in the table.
#[derive(Default)]
struct SiteDone {
    result: String,
    created: usize,
    existing: usize,
    dns_records: Vec<String>,
    backup: Option<BackupCell>,
}

pub async fn run(fleet: FleetRun, op: FleetOp) -> Result<()> {
    // The steps' futures are not `Send`: the sites run concurrently on this
    // thread (their work is waiting on SSH and HTTP), not on worker threads.
    tokio::task::LocalSet::new()
        .run_until(run_local(fleet, op))
        .await
}

async fn run_local(fleet: FleetRun, op: FleetOp) -> Result<()> {
    let ui = Arc::new(FleetUi::new(fleet.output.json, fleet.output.quiet));
    for warning in &fleet.warnings {
        ui.line(&format!("warning: {warning}"));
    }
    let logs = fleet.out_dir.join("logs");
    private_dir(&logs)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(fleet.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut hostnames = Vec::new();
    let mut site_dirs = Vec::new();
    let total = fleet.sites.len();
    for (index, site) in fleet.sites.into_iter().enumerate() {
        let hostname = site.dir.hostname().to_string();
        let log_path = logs.join(format!("{hostname}.log"));
        let log = private_file(&log_path, false)?;
        let progress = ui.site(&hostname, log);
        progress.log(&format!("pdsup fleet {} ({hostname})", op.name()));
        hostnames.push((hostname.clone(), log_path.display().to_string()));
        site_dirs.push(site.dir.clone());
        let slots = slots.clone();
        let out_dir = fleet.out_dir.clone();
        let passphrase = fleet.passphrase.clone();
        tasks.spawn_local(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let started = Instant::now();
            let result = match op {
                FleetOp::Status | FleetOp::Down | FleetOp::Backup if !site.reached => {
                    never_reached(&site, op)
                }
                FleetOp::Up => converge(&site, &progress, false, &out_dir).await,
                FleetOp::Plan => converge(&site, &progress, true, &out_dir).await,
                FleetOp::Status => status(&site, &progress).await,
                FleetOp::Down => down(&site, &progress).await,
                FleetOp::Backup => match &passphrase {
                    Some(passphrase) => back_up(&site, &progress, passphrase).await,
                    None => Err(err!(Internal, "fleet backup without a passphrase")),
                },
            };
            let seconds = started.elapsed().as_secs();
            match &result {
                Ok(done) => progress.finish(true, &done.result),
                Err(e) => {
                    progress.log(&format!("error: {e:#}"));
                    progress.finish(false, &format!("failed: {}", one_line(e)));
                }
            }
            (index, result.map_err(|e| one_line(&e)), seconds)
        });
    }
    let mut results: Vec<Option<(std::result::Result<SiteDone, String>, u64)>> =
        (0..total).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result, seconds)) => results[index] = Some((result, seconds)),
            Err(e) => log::error!("a site's task ended abnormally: {e}"),
        }
    }
    let rows: Vec<SiteRow> = hostnames
        .into_iter()
        .zip(results)
        .map(|((hostname, log), result)| {
            let (result, seconds) =
                result.unwrap_or_else(|| (Err("pdsup's task for it ended abnormally".into()), 0));
            let (created, existing, dns, backup) = match &result {
                Ok(d) => (
                    d.created,
                    d.existing,
                    d.dns_records.clone(),
                    d.backup.clone(),
                ),
                Err(_) => (0, 0, Vec::new(), None),
            };
            SiteRow {
                hostname,
                result: result.map(|d| d.result),
                accounts_created: created,
                accounts_existing: existing,
                dns_records: dns,
                seconds,
                log,
                backup,
            }
        })
        .collect();
    let handouts = if op == FleetOp::Up {
        Some(write_handouts(&fleet.out_dir, &site_dirs)?)
    } else {
        None
    };
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.hostname.as_str())
        .collect();
    let document = serde_json::json!({
        "ok": failed.is_empty(),
        "op": op.name(),
        "sites": rows.iter().map(SiteRow::json).collect::<Vec<_>>(),
        "handouts": handouts.as_ref().map(|h| h.display().to_string()),
    });
    if fleet.output.json && failed.is_empty() {
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else if !fleet.output.json {
        let table = match op {
            FleetOp::Backup => fleet_ui::render_backup_table(&rows),
            _ => fleet_ui::render_table(&rows, op == FleetOp::Up),
        };
        print!("\n{table}");
        if let Some(dir) = &handouts {
            println!(
                "\nHandouts (they hold passwords: print them, then keep or delete them): {}",
                dir.display()
            );
        }
    }
    if !failed.is_empty() {
        let message = format!(
            "{} of {} sites failed: {} (the table says why; each site's log is in {})",
            failed.len(),
            rows.len(),
            failed.join(", "),
            logs.display()
        );
        return Err(crate::error::Error::from_source(
            crate::error::ErrorKind::Other,
            SitesFailed { message, document },
        ));
    }
    Ok(())
}

/// Some sites failed. With `--json`, the error is the fleet's document
/// (every site's row, `ok: false`), so stdout still holds one JSON document.
#[derive(Debug)]
pub struct SitesFailed {
    pub message: String,
    pub document: serde_json::Value,
}

impl std::fmt::Display for SitesFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SitesFailed {}

/// An error as one line for the table: its message and causes.
fn one_line(e: &crate::error::Error) -> String {
    e.chain().collect::<Vec<_>>().join(": ")
}

/// `up` on one site (or, with `dry_run`, `plan`), then its participants' accounts.
async fn converge(
    site: &FleetSite,
    progress: &SiteProgress,
    dry_run: bool,
    out_dir: &Path,
) -> Result<SiteDone> {
    let host = connect(site, progress).await?;
    if !dry_run {
        site.dir.save_record(&site.record)?;
    }
    let mut ctx = Ctx::new(
        &host,
        &site.settings,
        &site.dir,
        site.record.clone(),
        progress,
    );
    ctx.destination_host = Some(site.destination.host.clone());
    let report = steps::runner::run(&mut ctx, steps::UP, dry_run).await?;
    let planned: usize = report.steps.iter().map(|s| s.changes.len()).sum();
    let mut done = SiteDone {
        dns_records: ctx
            .outcome
            .dns_records
            .iter()
            .map(|r| r.to_string())
            .collect(),
        ..Default::default()
    };
    if let Some(account) = &ctx.outcome.account {
        if let Some(password) = &account.password {
            // The first account's password is shown once by `up`; a fleet
            // has no terminal to show it on, so it goes to a 0600 file once.
            let dir = out_dir.join("handouts").join(site.dir.hostname().as_str());
            private_dir(&dir)?;
            let mut file = private_file(&dir.join("first-account.txt"), true)?;
            writeln!(
                file,
                "The site's first account (the organiser's)\nhandle:   {}\ndid:      {}\npassword: {}\nserver:   https://{}",
                account.handle,
                account.did,
                password.expose(),
                site.dir.hostname()
            )?;
            progress.log(&format!(
                "the first account {} was created; its password is in {}",
                account.handle,
                dir.join("first-account.txt").display()
            ));
        }
    }
    if dry_run {
        // A PDS that does not run yet has none of them.
        let missing = async {
            let pds = ctx.pds().await?;
            let mut n = 0;
            for p in &site.participants {
                if pds.resolve_handle(&p.handle).await?.is_none() {
                    n += 1;
                }
            }
            Ok::<_, crate::error::Error>(n)
        };
        let to_create = missing.await.unwrap_or(site.participants.len());
        done.result = format!(
            "{planned} change(s) planned, {to_create} account(s) to create (details in the log)"
        );
        return Ok(done);
    }
    let (created, existing) = accounts(&mut ctx, site, progress).await?;
    done.created = created;
    done.existing = existing;
    done.result = if report.changed() || created > 0 {
        "converged".into()
    } else {
        "unchanged: everything was already in place".into()
    };
    Ok(done)
}

/// The participants' accounts: made once (an existing handle is reported,
/// not made again), paced under the PDS's limit. Each password is saved in
/// the site's `participants.toml` (0600) before the request that uses it,
/// so a run cut off in between hands out the right one next time.
async fn accounts(
    ctx: &mut Ctx<'_>,
    site: &FleetSite,
    progress: &SiteProgress,
) -> Result<(usize, usize)> {
    if site.participants.is_empty() {
        return Ok((0, 0));
    }
    let store_path = participants_file(&site.dir);
    let mut store = Store::load(&store_path)?;
    let admin = ctx.secrets()?.admin_password.clone();
    let pds = ctx.pds().await?;
    let mut pacer = Pacer::new(CREATE_LIMIT, CREATE_WINDOW);
    let (mut created, mut existing) = (0, 0);
    for p in &site.participants {
        let entry = store
            .accounts
            .entry(p.handle.clone())
            .or_insert_with(|| StoredAccount {
                email: p.email.as_str().to_string(),
                display_name: p.display_name.clone(),
                password: None,
                did: None,
            });
        entry.display_name = p.display_name.clone();
        if let Some(did) = pds.resolve_handle(&p.handle).await? {
            progress.log(&format!("{}: exists already ({did})", p.handle));
            entry.did = Some(did);
            existing += 1;
            continue;
        }
        let password = match &entry.password {
            Some(pw) => Secret::new(pw.clone()),
            None => {
                let pw = crate::state::secrets::account_password();
                entry.password = Some(pw.expose().to_string());
                pw
            }
        };
        store.save(&store_path)?;
        let wait = pacer.delay(Instant::now());
        if !wait.is_zero() {
            progress.status(&format!(
                "pausing {}s: the PDS takes at most 100 new accounts in 5 minutes",
                wait.as_secs()
            ));
            tokio::time::sleep(wait).await;
        }
        pacer.record(Instant::now());
        progress.status(&format!("creating the account {}", p.handle));
        let invite = pds.create_invite_code(&admin).await?;
        let did = match pds
            .create_account(p.email.as_str(), &p.handle, &password, &invite)
            .await
        {
            Ok(made) => {
                created += 1;
                made.did
            }
            Err(e) if handle_taken(&e) => match pds.resolve_handle(&p.handle).await? {
                Some(did) => {
                    existing += 1;
                    did
                }
                None => return Err(e.context(format!("creating the account {}", p.handle))),
            },
            Err(e) => return Err(e.context(format!("creating the account {}", p.handle))),
        };
        progress.log(&format!("{}: created ({did})", p.handle));
        let entry = store.accounts.get_mut(&p.handle).expect("inserted above");
        entry.did = Some(did);
        store.save(&store_path)?;
        if let Some(name) = &p.display_name {
            let named = async {
                let session = pds.create_session(&p.handle, &password).await?;
                pds.put_display_name(&session, name).await
            };
            if let Err(e) = named.await {
                progress.note(&format!(
                    "{}: the display name was not set ({e}); the participant can set it in the app",
                    p.handle
                ));
            }
        }
    }
    store.save(&store_path)?;
    if ctx.settings.confirm_email {
        // The PDS sends no mail here: what `--confirm-email` does for the
        // first account, for every participant (those confirmed stay as they are).
        let dids: Vec<&str> = site
            .participants
            .iter()
            .filter_map(|p| store.accounts.get(&p.handle)?.did.as_deref())
            .collect();
        progress.status("marking the participants' email addresses confirmed");
        steps::account::confirm_emails(ctx.host, &dids)
            .await
            .context("marking the participants' email addresses confirmed")?;
    }
    Ok((created, existing))
}

fn handle_taken(e: &crate::error::Error) -> bool {
    e.downcast_ref::<XrpcError>().is_some_and(|x| {
        x.error == "HandleNotAvailable"
            || x.message
                .as_deref()
                .is_some_and(|m| m.contains("already taken") || m.contains("not available"))
    })
}

/// One SSH connection to a site's droplet, its progress line saying so.
async fn connect(site: &FleetSite, progress: &SiteProgress) -> Result<SshHost> {
    progress.status(&format!("connecting to {}", site.destination.host));
    SshHost::connect(&site.destination, &site.options)
        .await
        .with_context(|| format!("connecting to {}", site.destination.host))
}

/// A site pdsup never reached (no `site.toml`): nothing of pdsup's is on
/// it, so `down` has nothing to remove; `status` and `backup` fail, saying
/// what to run. The droplet is not contacted.
fn never_reached(site: &FleetSite, op: FleetOp) -> Result<SiteDone> {
    let why = format!(
        "pdsup never reached it (no {})",
        site.dir.site_file().display()
    );
    match op {
        FleetOp::Down => Ok(SiteDone {
            result: format!("nothing deployed: {why}"),
            ..Default::default()
        }),
        _ => Err(err!(
            BadInput,
            "not set up: {why}; run `pdsup fleet up FILE --only {}`",
            site.dir.hostname()
        )),
    }
}

/// Whether Nomad runs on a droplet: asked before its API, so a site whose
/// `fleet up` stopped before Nomad gets a plain answer, not a refused tunnel.
#[derive(Debug, PartialEq, Eq)]
enum NomadState {
    NotInstalled,
    /// Installed, its service not active: systemd's word for it.
    NotRunning(String),
    Running,
}

const NOMAD_STATE_SCRIPT: &str = "if [ -x /usr/local/bin/nomad ]; then \
     systemctl is-active nomad 2>/dev/null || true; else echo not-installed; fi";

fn nomad_state(answer: &str) -> NomadState {
    match answer.trim() {
        "not-installed" => NomadState::NotInstalled,
        "active" => NomadState::Running,
        "" => NomadState::NotRunning("unknown".into()),
        other => NomadState::NotRunning(other.to_string()),
    }
}

async fn nomad_on(host: &SshHost, progress: &SiteProgress) -> Result<NomadState> {
    progress.status("asking systemd whether Nomad runs");
    let answer = host
        .run(&Cmd::sh(NOMAD_STATE_SCRIPT))
        .await
        .context("asking the droplet whether Nomad runs")?;
    let state = nomad_state(&answer.stdout_str());
    progress.log(&format!("nomad: {state:?}"));
    Ok(state)
}

/// What to run when a site's Nomad is not there to ask.
fn rerun_up(site: &FleetSite) -> String {
    format!(
        "run `pdsup fleet up FILE --only {}` to finish it (its log says where the last run stopped)",
        site.dir.hostname()
    )
}

/// `fleet status`: the droplet answers SSH, Nomad runs, and the PDS answers its health check.
async fn status(site: &FleetSite, progress: &SiteProgress) -> Result<SiteDone> {
    let host = connect(site, progress).await?;
    match nomad_on(&host, progress).await? {
        NomadState::Running => {}
        NomadState::NotInstalled => {
            return Err(err!(
            RemoteCommand,
            "nothing deployed: Nomad is not installed (the last `fleet up` stopped before it); {}",
            rerun_up(site)
        ))
        }
        NomadState::NotRunning(state) => {
            return Err(err!(
                RemoteCommand,
                "Nomad is installed but not running (systemd: {state}); {}",
                rerun_up(site)
            ))
        }
    }
    let mut ctx = Ctx::new(
        &host,
        &site.settings,
        &site.dir,
        site.record.clone(),
        progress,
    );
    progress.status("asking the PDS for its health");
    let version = ctx.pds().await?.health().await?;
    let accounts = Store::load(&participants_file(&site.dir))?.accounts.len();
    Ok(SiteDone {
        result: format!("reachable; the PDS is healthy (version {version})"),
        existing: accounts,
        ..Default::default()
    })
}

/// The Nomad jobs a fleet's `down` stops: pdsup's own only (meta managed-by = pdsup).
const JOBS: &[&str] = &["pds", "io"];

/// `fleet down`: stops pdsup's jobs on the site; the data (host volumes,
/// the PDS's accounts and blobs) and the site's state stay.
async fn down(site: &FleetSite, progress: &SiteProgress) -> Result<SiteDone> {
    let host = connect(site, progress).await?;
    match nomad_on(&host, progress).await? {
        NomadState::Running => {}
        // Nothing of pdsup's runs without Nomad: nothing to remove is success.
        NomadState::NotInstalled => {
            return Ok(SiteDone {
                result: "nothing deployed: Nomad is not installed".into(),
                ..Default::default()
            })
        }
        // Its jobs' containers may outlive a stopped agent: not a success.
        NomadState::NotRunning(state) => {
            return Err(err!(
                RemoteCommand,
                "Nomad is installed but not running (systemd: {state}), so its jobs cannot be \
                 stopped: start it (`systemctl start nomad` on the droplet, or `pdsup fleet up \
                 FILE --only {}`), then run `fleet down` again",
                site.dir.hostname()
            ))
        }
    }
    let mut ctx = Ctx::new(
        &host,
        &site.settings,
        &site.dir,
        site.record.clone(),
        progress,
    );
    let nomad = ctx.nomad().await?;
    let mut stopped = Vec::new();
    for id in JOBS {
        let Some(job) = nomad.job(id).await? else {
            continue;
        };
        let ours = job["Meta"][crate::nomad::job::MANAGED_BY_KEY].as_str()
            == Some(crate::nomad::job::MANAGED_BY);
        let running = job["Stop"].as_bool() != Some(true);
        if !ours {
            progress.log(&format!(
                "{id}: not pdsup's job (no meta managed-by = pdsup); left running"
            ));
        } else if running {
            progress.status(&format!("stopping the {id} job"));
            nomad.deregister(id, false).await?;
            stopped.push(*id);
        }
    }
    let result = if stopped.is_empty() {
        "nothing to stop".to_string()
    } else {
        format!("stopped {}; the data is kept", stopped.join(", "))
    };
    Ok(SiteDone {
        result,
        ..Default::default()
    })
}

/// `fleet backup`: the site's `pdsup backup`, its archive in the site's own
/// state directory as the single-site command puts it.
async fn back_up(
    site: &FleetSite,
    progress: &SiteProgress,
    passphrase: &Secret,
) -> Result<SiteDone> {
    let this = Site {
        dir: site.dir.clone(),
        record: site.record.clone(),
        settings: site.settings.clone(),
    };
    let sealed = backup::sealed_site_state(&this, passphrase)?;
    let host = connect(site, progress).await?;
    let session = Session {
        site: this,
        host: Box::new(host),
        destination: site.destination.clone(),
    };
    let done = backup::backup_session(&session, &sealed, progress).await?;
    progress.log(&format!(
        "archive {} ({} bytes, {} account(s), {} files, taken {})",
        done.archive.display(),
        done.bytes,
        done.accounts.len(),
        done.files,
        done.taken_at
    ));
    Ok(SiteDone {
        result: format!("backed up: {}", done.archive.display()),
        backup: Some(BackupCell {
            archive: done.archive.display().to_string(),
            bytes: done.bytes,
            accounts: done.accounts.len(),
        }),
        ..Default::default()
    })
}

/// The participants' accounts of a site, as the fleet made them.
fn participants_file(dir: &SiteDir) -> PathBuf {
    dir.path().join("participants.toml")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Store {
    #[serde(default)]
    accounts: BTreeMap<String, StoredAccount>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredAccount {
    email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    /// The one-time password pdsup chose; it is in the handouts as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    did: Option<String>,
}

impl Store {
    fn load(path: &Path) -> Result<Store> {
        match fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| err!(BadInput, "{} is not readable: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| err!(Internal, "writing {}: {e}", path.display()))?;
        let tmp = path.with_extension("tmp");
        {
            let mut file = private_file(&tmp, true)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Keeps account creation under a limit of `limit` in `window`.
struct Pacer {
    limit: usize,
    window: Duration,
    recent: std::collections::VecDeque<Instant>,
}

impl Pacer {
    fn new(limit: usize, window: Duration) -> Self {
        Pacer {
            limit,
            window,
            recent: Default::default(),
        }
    }

    /// How long to wait at `now` before the next creation.
    fn delay(&self, now: Instant) -> Duration {
        if self.recent.len() < self.limit {
            return Duration::ZERO;
        }
        let oldest = self.recent[self.recent.len() - self.limit];
        (oldest + self.window).saturating_duration_since(now)
    }

    fn record(&mut self, at: Instant) {
        self.recent.push_back(at);
        while self.recent.len() > self.limit {
            self.recent.pop_front();
        }
    }
}

/// Writes the handouts from every site's `participants.toml`: a page per
/// participant with a password, and one CSV. Files 0600, directories 0700.
fn write_handouts(out_dir: &Path, sites: &[SiteDir]) -> Result<PathBuf> {
    let dir = out_dir.join("handouts");
    private_dir(&dir)?;
    let mut all = Vec::new();
    for site in sites {
        let hostname = site.hostname().to_string();
        let store = Store::load(&participants_file(site))?;
        let site_handouts = dir.join(&hostname);
        for (handle, account) in &store.accounts {
            let handout = Handout {
                site: hostname.clone(),
                handle: handle.clone(),
                email: account.email.clone(),
                display_name: account.display_name.clone(),
                did: account.did.clone(),
                password: account.password.clone(),
            };
            if account.did.is_some() {
                private_dir(&site_handouts)?;
                let label = handle.split('.').next().unwrap_or(handle);
                let mut page = private_file(&site_handouts.join(format!("{label}.html")), true)?;
                page.write_all(fleet_ui::render_handout_html(&handout).as_bytes())?;
                all.push(handout);
            }
        }
    }
    let mut csv = private_file(&dir.join("accounts.csv"), true)?;
    csv.write_all(fleet_ui::render_csv(&all).as_bytes())?;
    Ok(dir)
}

/// A directory only the user can read.
fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    Ok(())
}

/// A file only the user can read: truncated (`truncate`) or appended to.
fn private_file(path: &Path, truncate: bool) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(truncate)
        .append(!truncate)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_droplets_answer_says_whether_nomad_runs() {
        assert_eq!(nomad_state("not-installed\n"), NomadState::NotInstalled);
        assert_eq!(nomad_state("active\n"), NomadState::Running);
        assert_eq!(
            nomad_state("inactive\n"),
            NomadState::NotRunning("inactive".into())
        );
        assert_eq!(
            nomad_state("failed\n"),
            NomadState::NotRunning("failed".into())
        );
        assert_eq!(nomad_state(""), NomadState::NotRunning("unknown".into()));
    }

    #[test]
    fn the_pacer_waits_only_once_the_window_is_full() {
        let start = Instant::now();
        let mut pacer = Pacer::new(3, Duration::from_secs(300));
        for i in 0..3 {
            assert_eq!(pacer.delay(start + Duration::from_secs(i)), Duration::ZERO);
            pacer.record(start + Duration::from_secs(i));
        }
        // The fourth waits until the first is out of the window.
        assert_eq!(
            pacer.delay(start + Duration::from_secs(10)),
            Duration::from_secs(290)
        );
        assert_eq!(
            pacer.delay(start + Duration::from_secs(301)),
            Duration::ZERO
        );
        pacer.record(start + Duration::from_secs(301));
        pacer.record(start + Duration::from_secs(301));
        // In the window now: 2, 301, 301; the one at 2 leaves it at 302.
        assert_eq!(
            pacer.delay(start + Duration::from_secs(301)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_store_keeps_passwords_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("participants.toml");
        let mut store = Store::load(&path).unwrap();
        assert!(store.accounts.is_empty());
        store.accounts.insert(
            "alice.t1.example".into(),
            StoredAccount {
                email: "a@example.com".into(),
                display_name: None,
                password: Some("pw".into()),
                did: Some("did:plc:x".into()),
            },
        );
        store.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Store::load(&path).unwrap();
        assert_eq!(
            again.accounts["alice.t1.example"].password.as_deref(),
            Some("pw")
        );
    }
}
