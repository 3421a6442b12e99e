//! `pdsup backup --schedule`'s step: restic from the distribution, its
//! repository's settings and credentials in root-only files, the snapshot
//! script of `pdsup backup`, and a systemd timer that runs it and sends the
//! snapshot to the repository (`pdsup-backup.service` / `pdsup-backup.timer`).
//!
//! The same step without the timer prepares a fresh droplet for `pdsup
//! restore --snapshot` (restic and the credentials, to read the repository).
//!
//! Secrets (the restic password, S3 keys, the SFTP key) never travel in the
//! plan: the droplet's copies are compared by their SHA-256 and written at
//! apply time ([`Action::WriteSecretFile`]).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::docker::apt_get;
use super::{Action, Ctx, PlanInput, Step, StepId, StepPlan};
use crate::assets;
use crate::error::Result;
use crate::host::facts::{file_text, Fact};
use crate::host::{quote, Cmd, FileMode, Output, Script};
use crate::pds::data;
use crate::plan::diff;
use crate::secret::Secret;
use crate::settings::PDS_VOLUME_PATH;

pub const ID: StepId = StepId::new("backup_schedule", "scheduled backup");

pub const SERVICE_NAME: &str = "pdsup-backup.service";
pub const TIMER_NAME: &str = "pdsup-backup.timer";
pub const CONFIG: &str = "/etc/pdsup-backup/config";
pub const PASSWORD: &str = "/etc/pdsup-backup/password";
pub const S3_ENV: &str = "/etc/pdsup-backup/s3.env";
pub const SFTP_KEY: &str = "/etc/pdsup-backup/id_ed25519";
pub const KNOWN_HOSTS: &str = "/etc/pdsup-backup/known_hosts";
/// restic with the site's repository and credentials (`pdsup-restic snapshots`).
pub const WRAPPER: &str = "/usr/local/sbin/pdsup-restic";
pub const BACKUP_SCRIPT: &str = "/usr/local/lib/pdsup-backup/backup.sh";
pub const STAGE_SCRIPT: &str = "/usr/local/lib/pdsup-backup/stage.sh";
/// Where the snapshot is staged: always the same path, so that restic finds
/// its parent snapshot and reads only what changed.
pub const STAGE: &str = "/var/lib/pdsup-backup/stage";
pub const SERVICE_FILE: &str = "/etc/systemd/system/pdsup-backup.service";
pub const TIMER_FILE: &str = "/etc/systemd/system/pdsup-backup.timer";

pub const DEFAULT_AT: &str = "daily";
pub const DEFAULT_KEEP_DAILY: u32 = 7;
pub const DEFAULT_KEEP_WEEKLY: u32 = 4;

/// A restic repository pdsup knows how to reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repository {
    /// `sftp:[user@]host:/path`, reached with a key of its own.
    Sftp {
        user: Option<String>,
        host: String,
        path: String,
    },
    /// `s3:https://host/bucket[/prefix]` (DigitalOcean Spaces, any S3 API).
    S3 { url: String },
}

impl Repository {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_graphic() && !"'\"\\`$;&|<>(){}*?[]!#~".contains(c))
        };
        if let Some(rest) = text.strip_prefix("sftp:") {
            let bad = || {
                format!(
                    "{text:?} is not an SFTP repository pdsup reaches: write it as \
                     sftp:user@host:/path (no port: the server listens on 22)"
                )
            };
            if rest.starts_with("//") {
                return Err(bad());
            }
            let (login, path) = rest.split_once(':').ok_or_else(bad)?;
            let (user, host) = match login.split_once('@') {
                Some((user, host)) => (Some(user.to_string()), host.to_string()),
                None => (None, login.to_string()),
            };
            let name_ok = |s: &str| {
                !s.is_empty()
                    && !s.starts_with('-')
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
            };
            if !name_ok(&host) || !user.as_deref().is_none_or(name_ok) || !plain(path) {
                return Err(bad());
            }
            return Ok(Repository::Sftp {
                user,
                host,
                path: path.to_string(),
            });
        }
        if let Some(url) = text.strip_prefix("s3:") {
            let bucket = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .and_then(|rest| rest.split_once('/'))
                .map(|(host, bucket)| !host.is_empty() && !bucket.trim_matches('/').is_empty());
            if bucket != Some(true) || !plain(url) {
                return Err(format!(
                    "{text:?} is not an S3 repository: write it as s3:https://HOST/BUCKET \
                     (for DigitalOcean Spaces, s3:https://REGION.digitaloceanspaces.com/BUCKET)"
                ));
            }
            return Ok(Repository::S3 {
                url: url.to_string(),
            });
        }
        Err(format!(
            "{text:?} is not a repository pdsup knows: use sftp:user@host:/path or s3:https://HOST/BUCKET"
        ))
    }

    /// The repository as restic names it.
    pub fn restic_url(&self) -> String {
        match self {
            Repository::Sftp { user, host, path } => match user {
                Some(user) => format!("sftp:{user}@{host}:{path}"),
                None => format!("sftp:{host}:{path}"),
            },
            Repository::S3 { url } => format!("s3:{url}"),
        }
    }

    /// How restic reaches an SFTP server: pdsup's own key and known_hosts
    /// (the server's key is taken on first contact, then held to).
    fn sftp_command(&self) -> Option<String> {
        match self {
            Repository::Sftp { user, host, .. } => Some(format!(
                "ssh -i {SFTP_KEY} -o IdentitiesOnly=yes -o BatchMode=yes \
                 -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={KNOWN_HOSTS} \
                 -o ServerAliveInterval=60 {}{host} -s sftp",
                user.as_deref().map(|u| format!("{u}@")).unwrap_or_default()
            )),
            Repository::S3 { .. } => None,
        }
    }
}

/// The credentials, from the site's state directory.
#[derive(Clone, Debug)]
pub struct ResticSecrets {
    pub password: Secret,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, for an S3 repository.
    pub s3: Option<(Secret, Secret)>,
    /// The OpenSSH private key, for an SFTP repository.
    pub sftp_key: Option<Secret>,
}

/// What to set up.
#[derive(Clone, Debug)]
pub struct ResticStep {
    pub hostname: String,
    pub repository: Repository,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_last: u32,
    /// The timer's calendar; `None`: restic and the credentials only (a restore).
    pub at: Option<String>,
    pub secrets: ResticSecrets,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub restic: bool,
    pub sqlite3: bool,
    /// The text of each file pdsup renders, by path (`None`: missing).
    pub files: BTreeMap<String, Option<String>>,
    /// The SHA-256 of each secret file there is, by path.
    pub secret_sums: BTreeMap<String, String>,
    pub timer_enabled: bool,
    pub timer_active: bool,
    /// `systemd-analyze calendar`'s complaint about the `--at` value.
    pub calendar_error: Option<String>,
}

impl ResticStep {
    /// The files pdsup renders (no secret in any), by path, with their modes.
    pub fn files(&self) -> Vec<(&'static str, String, u32)> {
        let mut files = vec![
            (CONFIG, self.config_text(), 0o600),
            (WRAPPER, assets::PDSUP_RESTIC.to_string(), 0o700),
        ];
        if let Some(at) = &self.at {
            let stage = format!(
                "#!/bin/sh\n# Written by `pdsup backup --schedule`: the snapshot `pdsup backup` takes, staged in {STAGE}.\n{}\n",
                data::stage_script(PDS_VOLUME_PATH, STAGE).as_str()
            );
            files.extend([
                (BACKUP_SCRIPT, assets::PDSUP_BACKUP_SH.to_string(), 0o700),
                (STAGE_SCRIPT, stage, 0o700),
                (
                    SERVICE_FILE,
                    assets::PDSUP_BACKUP_SERVICE.to_string(),
                    0o644,
                ),
                (
                    TIMER_FILE,
                    assets::render(assets::PDSUP_BACKUP_TIMER, &[("on_calendar", at)]),
                    0o644,
                ),
            ]);
        }
        files
    }

    fn config_text(&self) -> String {
        let mut text = String::from(
            "# Written by `pdsup backup --schedule`: where the scheduled backup goes (no secret here).\n",
        );
        let mut set = |key: &str, value: &str| {
            text.push_str(&format!("{key}={}\n", quote(value)));
        };
        set("PDSUP_HOSTNAME", &self.hostname);
        set("PDSUP_REPOSITORY", &self.repository.restic_url());
        set("PDSUP_KEEP_DAILY", &self.keep_daily.to_string());
        set("PDSUP_KEEP_WEEKLY", &self.keep_weekly.to_string());
        set("PDSUP_KEEP_LAST", &self.keep_last.to_string());
        if let Some(command) = self.repository.sftp_command() {
            set("PDSUP_SFTP_COMMAND", &command);
        }
        text
    }

    /// The secret files, by path, with their text.
    fn secret_files(&self) -> Vec<(&'static str, Secret)> {
        let s = &self.secrets;
        let mut files = vec![(PASSWORD, Secret::new(format!("{}\n", s.password.expose())))];
        if let (Repository::S3 { .. }, Some((id, key))) = (&self.repository, &s.s3) {
            files.push((
                S3_ENV,
                Secret::new(format!(
                    "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
                    quote(id.expose()),
                    quote(key.expose())
                )),
            ));
        }
        if let (Repository::Sftp { .. }, Some(key)) = (&self.repository, &s.sftp_key) {
            files.push((SFTP_KEY, key.clone()));
        }
        files
    }

    fn secret_paths(&self) -> Vec<&'static str> {
        self.secret_files().into_iter().map(|(p, _)| p).collect()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn tools_fact() -> Fact<(bool, bool)> {
    Fact::new(
        Cmd::sh(
            "command -v restic >/dev/null && echo restic; command -v sqlite3 >/dev/null && echo sqlite3; true",
        ),
        |out: &Output| {
            let text = out.stdout_str();
            (
                text.lines().any(|l| l == "restic"),
                text.lines().any(|l| l == "sqlite3"),
            )
        },
    )
}

fn sums_fact(paths: &[&str]) -> Fact<BTreeMap<String, String>> {
    Fact::new(
        Script::of("for f in", &[])
            .words(paths)
            .push(r#"; do [ -f "$f" ] && sha256sum "$f"; done; true"#, &[])
            .cmd(),
        |out: &Output| parse_sums(&out.stdout_str()),
    )
}

/// `sha256sum` lines, `HASH  PATH`, by path.
pub fn parse_sums(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(hash, path)| (path.to_string(), hash.to_string()))
        .collect()
}

fn timer_fact() -> Fact<(bool, bool)> {
    Fact::new(
        Cmd::sh(
            "systemctl is-enabled --quiet pdsup-backup.timer 2>/dev/null && echo enabled; \
             systemctl is-active --quiet pdsup-backup.timer && echo active; true",
        ),
        |out: &Output| {
            let text = out.stdout_str();
            (
                text.lines().any(|l| l == "enabled"),
                text.lines().any(|l| l == "active"),
            )
        },
    )
}

fn calendar_fact(at: &str) -> Fact<Option<String>> {
    Fact::new(
        Script::of("systemd-analyze calendar {} >/dev/null", &[at]).cmd(),
        |out: &Output| (!out.success()).then(|| out.stderr_tail().trim().to_string()),
    )
}

pub fn plan(step: &ResticStep, facts: &Facts) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    if let (Some(at), Some(why)) = (&step.at, &facts.calendar_error) {
        plan.blockers.push(format!(
            "--at {at:?} is not a systemd calendar expression ({why}): use daily, weekly, \
             or a time such as '*-*-* 03:30'"
        ));
        return plan;
    }
    if !facts.restic || !facts.sqlite3 {
        plan.change(
            "install restic and sqlite3 (Debian's packages)",
            Action::Apt(Cmd::sh(concat!(
                apt_get!(),
                " update && ",
                apt_get!(),
                " install restic sqlite3"
            ))),
        );
    }
    let mut units_changed = false;
    for (path, text, mode) in step.files() {
        let current = facts.files.get(path).cloned().flatten();
        if current.as_deref() == Some(text.as_str()) {
            continue;
        }
        units_changed |= path == SERVICE_FILE || path == TIMER_FILE;
        let verb = if current.is_some() { "update" } else { "write" };
        let before = current.unwrap_or_default();
        let detail = diff(&before, &text);
        plan.change(
            format!("{verb} {path}"),
            Action::Write {
                path: path.to_string(),
                contents: super::Contents::Text(text),
                mode: FileMode::root(mode),
            },
        )
        .detail(detail);
    }
    for (path, secret) in step.secret_files() {
        let want = sha256_hex(secret.expose().as_bytes());
        if facts.secret_sums.get(path) == Some(&want) {
            continue;
        }
        let what = match path {
            PASSWORD => "the restic repository's password",
            S3_ENV => "the S3 access key",
            _ => "the SFTP key",
        };
        plan.change(
            format!("write {path} (root, 0600: {what}, from the site's state directory)"),
            Action::WriteSecretFile {
                path: path.to_string(),
                mode: FileMode::root(0o600),
            },
        );
    }
    if step.at.is_some() && (units_changed || !facts.timer_enabled || !facts.timer_active) {
        plan.change(
            format!("enable and (re)start {TIMER_NAME}"),
            Action::Run(Cmd::sh(
                "systemctl daemon-reload && systemctl enable pdsup-backup.timer && systemctl restart pdsup-backup.timer",
            )),
        );
    }
    plan
}

#[async_trait::async_trait(?Send)]
impl Step for ResticStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts {
            restic: false,
            sqlite3: false,
            files: BTreeMap::new(),
            secret_sums: BTreeMap::new(),
            timer_enabled: false,
            timer_active: false,
            calendar_error: None,
        }
    }

    fn probes(&self, _settings: &crate::settings::Settings) -> Vec<Cmd> {
        let mut cmds: Vec<Cmd> = self
            .files()
            .iter()
            .map(|(p, _, _)| file_text(p).cmd)
            .collect();
        cmds.extend([
            sums_fact(&self.secret_paths()).cmd,
            tools_fact().cmd,
            timer_fact().cmd,
        ]);
        if let Some(at) = &self.at {
            cmds.push(calendar_fact(at).cmd);
        }
        cmds
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        let (restic, sqlite3) = ctx.read(&tools_fact()).await?;
        let mut files = BTreeMap::new();
        for (path, _, _) in self.files() {
            files.insert(path.to_string(), ctx.read_checked(&file_text(path)).await?);
        }
        let secret_sums = ctx.read(&sums_fact(&self.secret_paths())).await?;
        let (timer_enabled, timer_active) = ctx.read(&timer_fact()).await?;
        let calendar_error = match &self.at {
            Some(at) => ctx.read(&calendar_fact(at)).await?,
            None => None,
        };
        Ok(Facts {
            restic,
            sqlite3,
            files,
            secret_sums,
            timer_enabled,
            timer_active,
            calendar_error,
        })
    }

    fn plan(&self, facts: &Facts, _input: &PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(self, facts))
    }

    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()> {
        match action {
            Action::WriteSecretFile { path, mode } => {
                let (_, secret) = self
                    .secret_files()
                    .into_iter()
                    .find(|(p, _)| p == path)
                    .ok_or_else(|| crate::err!(Internal, "bug: no secret for {path}"))?;
                ctx.host
                    .write_file(path, secret.expose().as_bytes(), mode)
                    .await
                    .map(|_| ())
            }
            other => ctx.apply(other).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(repo: &str, at: Option<&str>) -> ResticStep {
        ResticStep {
            hostname: "pds.example.com".into(),
            repository: Repository::parse(repo).unwrap(),
            keep_daily: 7,
            keep_weekly: 4,
            keep_last: 0,
            at: at.map(str::to_string),
            secrets: ResticSecrets {
                password: Secret::new("hunter2-restic"),
                s3: Some((Secret::new("AKID"), Secret::new("s3-secret-key"))),
                sftp_key: Some(Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----\n")),
            },
        }
    }

    fn converged(step: &ResticStep) -> Facts {
        Facts {
            restic: true,
            sqlite3: true,
            files: step
                .files()
                .into_iter()
                .map(|(p, t, _)| (p.to_string(), Some(t)))
                .collect(),
            secret_sums: step
                .secret_files()
                .into_iter()
                .map(|(p, s)| (p.to_string(), sha256_hex(s.expose().as_bytes())))
                .collect(),
            timer_enabled: true,
            timer_active: true,
            calendar_error: None,
        }
    }

    fn summaries(plan: &StepPlan) -> Vec<String> {
        plan.changes.iter().map(|c| c.summary.clone()).collect()
    }

    #[test]
    fn repositories_parse_and_bad_ones_say_how_to_write_them() {
        assert_eq!(
            Repository::parse("sftp:backup@10.0.0.5:/srv/restic/pds").unwrap(),
            Repository::Sftp {
                user: Some("backup".into()),
                host: "10.0.0.5".into(),
                path: "/srv/restic/pds".into()
            }
        );
        let s3 = Repository::parse("s3:https://fra1.digitaloceanspaces.com/my-bucket/pds").unwrap();
        assert_eq!(
            s3.restic_url(),
            "s3:https://fra1.digitaloceanspaces.com/my-bucket/pds"
        );
        for bad in [
            "",
            "/srv/restic",
            "sftp:host",
            "sftp://user@host:2222//srv",
            "sftp:user@-oProxyCommand=x:/p",
            "sftp:user@host:/p;rm -rf /",
            "s3:https://host",
            "s3:ftp://host/bucket",
            "rest:https://host/",
        ] {
            let err = Repository::parse(bad).unwrap_err();
            assert!(err.contains("sftp:") || err.contains("s3:"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_fresh_droplet_gets_restic_files_secrets_and_the_timer() {
        let s = step("sftp:backup@10.0.0.5:/srv/restic", Some("daily"));
        let p = plan(&s, &ResticStep::fresh(&s));
        assert!(p.blockers.is_empty());
        assert_eq!(
            summaries(&p),
            [
                "install restic and sqlite3 (Debian's packages)",
                "write /etc/pdsup-backup/config",
                "write /usr/local/sbin/pdsup-restic",
                "write /usr/local/lib/pdsup-backup/backup.sh",
                "write /usr/local/lib/pdsup-backup/stage.sh",
                "write /etc/systemd/system/pdsup-backup.service",
                "write /etc/systemd/system/pdsup-backup.timer",
                "write /etc/pdsup-backup/password (root, 0600: the restic repository's password, from the site's state directory)",
                "write /etc/pdsup-backup/id_ed25519 (root, 0600: the SFTP key, from the site's state directory)",
                "enable and (re)start pdsup-backup.timer",
            ]
        );
        // No secret anywhere in the plan (summaries, details, file texts).
        let shown = format!("{p:?}");
        for secret in ["hunter2-restic", "OPENSSH PRIVATE", "s3-secret-key"] {
            assert!(!shown.contains(secret), "{secret} in the plan");
        }
        let config = &s.files()[0].1;
        assert!(
            config.lines().any(|l| l.starts_with("PDSUP_REPOSITORY=")
                && l.contains("sftp:backup@10.0.0.5:/srv/restic")),
            "{config}"
        );
        assert!(
            config.contains("StrictHostKeyChecking=accept-new"),
            "{config}"
        );
        let timer = &s.files()[5].1;
        assert!(timer.contains("OnCalendar=daily\n"), "{timer}");
        // The stage script is `pdsup backup`'s snapshot, into the fixed stage.
        let stage = &s.files()[3].1;
        assert!(stage.contains(".backup"), "{stage}");
        assert!(stage.contains("/var/lib/pdsup-backup/stage"), "{stage}");
    }

    #[test]
    fn a_converged_droplet_needs_nothing_and_a_change_is_applied_alone() {
        let s = step("sftp:backup@10.0.0.5:/srv/restic", Some("daily"));
        let facts = converged(&s);
        assert!(plan(&s, &facts).is_unchanged());

        let mut other_time = s.clone();
        other_time.at = Some("*-*-* 03:30".into());
        assert_eq!(
            summaries(&plan(&other_time, &facts)),
            [
                "update /etc/systemd/system/pdsup-backup.timer",
                "enable and (re)start pdsup-backup.timer"
            ]
        );
        let mut new_password = s.clone();
        new_password.secrets.password = Secret::new("another");
        assert_eq!(plan(&new_password, &facts).changes.len(), 1);
        let mut stopped = facts.clone();
        stopped.timer_active = false;
        assert_eq!(
            summaries(&plan(&s, &stopped)),
            ["enable and (re)start pdsup-backup.timer"]
        );
    }

    #[test]
    fn s3_gets_its_keys_and_a_restore_no_timer() {
        let s = step("s3:https://fra1.digitaloceanspaces.com/b", None);
        let p = plan(&s, &ResticStep::fresh(&s));
        let all = summaries(&p).join("\n");
        assert!(all.contains("/etc/pdsup-backup/s3.env"), "{all}");
        assert!(!all.contains("id_ed25519"), "{all}");
        assert!(!all.contains("timer") && !all.contains("stage.sh"), "{all}");
        let env = &s.secret_files()[1].1;
        assert_eq!(
            env.expose(),
            "AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_ACCESS_KEY=s3-secret-key\n"
        );
    }

    #[test]
    fn a_bad_calendar_blocks_before_any_change() {
        let s = step("sftp:h:/p", Some("every full moon"));
        let mut facts = ResticStep::fresh(&s);
        facts.calendar_error = Some("Failed to parse calendar specification".into());
        let p = plan(&s, &facts);
        assert!(p.changes.is_empty());
        assert!(p.blockers[0].contains("--at"), "{:?}", p.blockers);
    }

    #[test]
    fn sums_parse_by_path() {
        let sums = parse_sums(&format!("{}  /etc/pdsup-backup/password\n", "a".repeat(64)));
        assert_eq!(sums["/etc/pdsup-backup/password"], "a".repeat(64));
    }
}
