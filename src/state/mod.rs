//! Local state, one directory per site (the PDS hostname):
//!
//! ```text
//! <state dir>/sites/<hostname>/
//!   pds.env       the PDS environment with its secrets (0600, pdsadmin-compatible)
//!   site.toml     the remembered settings of the last run, and the account
//!   known_hosts   the droplet's pinned SSH host key
//! ```
//!
//! The state dir defaults to `$XDG_DATA_HOME/pdsup` (`~/.local/share/pdsup`).
//! Losing `pds.env` loses the PDS's identity keys: it is written atomically, never
//! overwritten with new secrets, and only ever readable by its owner.

pub mod env_file;
pub mod secrets;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{bail, err, Context, Result};
use serde::{Deserialize, Serialize};

use crate::inputs::Hostname;

pub use secrets::PdsSecrets;

#[derive(Clone, Debug)]
pub struct SiteDir {
    root: PathBuf,
    hostname: Hostname,
}

/// What `site.toml` remembers between runs: the remembered settings of
/// `settings::table` (under the same keys), and what the steps record.
/// Unknown keys are ignored, so a file written by a newer pdsup still loads.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SiteRecord {
    pub hostname: String,
    /// The DEST of the last `up` that connected: where the day-2 commands
    /// (`status`, `account`, `logs`, ...) go when no `--dest` is given.
    pub destination: Option<String>,
    pub email: Option<String>,
    pub handle: Option<String>,
    pub proxy: Option<String>,
    pub nomad_version: Option<String>,
    pub pds_image: Option<String>,
    pub plc_url: Option<String>,
    /// `--docker-apt-url`, and the `--docker-apt-key` that goes with it (absolute path).
    pub docker_apt_url: Option<String>,
    pub docker_apt_key: Option<String>,
    pub timezone: Option<String>,
    /// `--io-ingress-syntax`: `ingress` or `host`.
    pub io_ingress_syntax: Option<String>,
    /// The IO image the site runs, by digest, recorded once IO first runs so
    /// that later runs and rebuilds get the same IO (steps/proxy.rs). Deleting
    /// it takes the newest IO on the next run.
    pub io_image_pin: Option<IoImagePin>,
    /// The exact PDS version `/xrpc/_health` reported after the last `pdsup
    /// upgrade` (or `rollback`) of `pds_image`, and that image's registry
    /// digest when Docker has one (an image loaded from an archive has none).
    pub pds_version: Option<String>,
    pub pds_image_digest: Option<String>,
    /// The release the last upgrade replaced: what `pdsup rollback` returns to.
    pub pds_previous: Option<PdsRelease>,
    /// The Nomad version the last `pdsup upgrade --nomad` replaced: what
    /// `pdsup rollback --nomad` returns to.
    pub nomad_previous: Option<String>,
    /// `--pds-env` values, `KEY=VALUE`.
    pub pds_env: Vec<String>,
    /// Set once the first account exists, so re-runs never create it again.
    pub account_did: Option<String>,
    /// Written just before `createAccount` is sent and cleared once the DID is
    /// recorded: a run cut off in between leaves this trace (steps/account.rs).
    pub account_intent: Option<AccountIntent>,
    /// A random id, also in the PDS data dir: tells this site's PDS data from
    /// any other (steps/account.rs).
    pub site_id: Option<String>,
    /// The scheduled off-droplet backup `pdsup backup --schedule` installed
    /// (no secret: those are in the state dir's `restic/`).
    pub backup_schedule: Option<BackupSchedule>,
}

/// What `pdsup backup --schedule` set up on the droplet.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupSchedule {
    /// The restic repository: `sftp:user@host:/path` or `s3:https://host/bucket`.
    pub repository: String,
    /// The timer's systemd calendar expression (`daily`, `*-*-* 03:30`).
    pub at: String,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    /// The newest snapshots kept whatever their day (0: none beyond the others).
    #[serde(default)]
    pub keep_last: u32,
}

/// An IO image reference (`agentio/io:latest`) and the digest it stood for
/// when the site first ran it (`agentio/io@sha256:…`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IoImagePin {
    pub image: String,
    pub by_digest: String,
}

/// A PDS image and what is known of it: the version `_health` reported while
/// it ran, and its registry digest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PdsRelease {
    pub image: String,
    pub version: Option<String>,
    pub digest: Option<String>,
}

/// The account a run was about to create.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountIntent {
    pub handle: String,
    pub email: String,
}

impl SiteDir {
    pub fn default_state_dir() -> Result<PathBuf> {
        dirs::data_dir().map(|d| d.join("pdsup")).ok_or_else(|| {
            err!(
                Local,
                "no home directory to keep state in; pass --state-dir DIR"
            )
        })
    }

    /// The site's directory under `state_dir`; not created until something is saved.
    pub fn new(state_dir: &Path, hostname: &Hostname) -> Self {
        SiteDir {
            root: state_dir.join("sites").join(hostname.as_str()),
            hostname: hostname.clone(),
        }
    }

    /// The hostnames of the sites kept under `state_dir`, sorted.
    pub fn list(state_dir: &Path) -> Result<Vec<String>> {
        let sites = state_dir.join("sites");
        let entries = match fs::read_dir(&sites) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", sites.display())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", sites.display()))?;
            if entry.path().join("site.toml").is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    pub fn hostname(&self) -> &Hostname {
        &self.hostname
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn env_file(&self) -> PathBuf {
        self.root.join("pds.env")
    }

    pub fn site_file(&self) -> PathBuf {
        self.root.join("site.toml")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("known_hosts")
    }

    /// Reads `site.toml`. Every saved value is checked here, before any
    /// connection: a hand-edited or damaged file is input too.
    pub fn load_record(&self) -> Result<Option<SiteRecord>> {
        let path = self.site_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read {}; check its permissions, or restore it from your backup",
                        path.display()
                    )
                })
            }
        };
        let record: SiteRecord = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| format!(" line {}", line_of_offset(&text, span.start)))
                .unwrap_or_default();
            err!(
                BadInput,
                "{}{line} cannot be read: {}. This is the site's saved state: restore it from your \
                 backup, or correct that line by hand",
                path.display(),
                e.message()
            )
        })?;
        if let Err(bad) = record.check(&self.hostname) {
            bail!(
                BadInput,
                "{}{}: {} = {}. Correct that line by hand or restore the file from your backup \
                 (a flag does not override a broken saved value)",
                path.display(),
                line_of_field(&text, bad.field)
                    .map(|n| format!(" line {n}"))
                    .unwrap_or_default(),
                bad.field,
                bad.why
            );
        }
        Ok(Some(record))
    }

    pub fn save_record(&self, record: &SiteRecord) -> Result<()> {
        let text = toml::to_string_pretty(record)
            .map_err(|e| crate::error::Error::from_source(crate::error::ErrorKind::Internal, e))?;
        self.write_private(&self.site_file(), text.as_bytes())
    }

    /// Reads the secrets from `pds.env`; `None` when the site has none yet.
    ///
    /// A file that cannot be read exactly (a line bash would read differently, a
    /// key defined twice, a missing secret) is broken state: the error names the
    /// file and the line, and no secret value.
    pub fn load_secrets(&self) -> Result<Option<PdsSecrets>> {
        let path = self.env_file();
        let restore = "This file holds the site's secrets and PLC rotation key: restore it from \
                       your backup (pdsup never regenerates or rewrites an existing site's secrets)";
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}. {restore}", path.display()))
            }
        };
        let env = env_file::parse_env_file(&text)
            .map_err(|e| err!(BadInput, "{} {e}. {restore}", path.display()))?;
        PdsSecrets::from_env(&env)
            .map(Some)
            .map_err(|e| err!(BadInput, "{} is incomplete: {e}", path.display()))
    }

    /// Writes `pds.env` (0600). The caller has made sure its secrets are the
    /// site's existing ones or new ones for a site that had none.
    pub fn save_env_file(&self, contents: &str) -> Result<()> {
        self.write_private(&self.env_file(), contents.as_bytes())
    }

    /// Writes `name` (a path relative to the site's directory) atomically,
    /// readable by the owner only, its directories 0700: for files that hold
    /// secrets besides `pds.env` (the restic repository's password and keys).
    pub fn save_private_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(name);
        if let Some(dir) = path.parent().filter(|d| *d != self.root) {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        self.write_private(&path, bytes)
    }

    /// Atomic write, readable by the owner only, directory 0700.
    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))?;
        let tmp = path.with_extension("tmp");
        {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// A saved value that does not pass the check its flag gets.
#[derive(Debug, PartialEq, Eq)]
pub struct BadField {
    pub field: &'static str,
    pub why: String,
}

impl SiteRecord {
    /// Checks every saved value with the parser of its flag.
    pub fn check(&self, hostname: &Hostname) -> Result<(), BadField> {
        use crate::inputs::{Email, Handle, HttpUrl, ImageRef, Timezone};
        let bad = |field: &'static str, value: &str, why: String| BadField {
            field,
            why: format!("{value:?}: {why}"),
        };
        if !self.hostname.is_empty() && self.hostname != hostname.as_str() {
            return Err(bad(
                "hostname",
                &self.hostname,
                format!("the file sits in the directory of the site {hostname}"),
            ));
        }
        if let Some(v) = &self.email {
            v.parse::<Email>()
                .map_err(|e| bad("email", v, e.to_string()))?;
        }
        if let Some(v) = &self.handle {
            Handle::parse(v, hostname).map_err(|e| bad("handle", v, e.to_string()))?;
        }
        if let Some(v) = &self.proxy {
            if !matches!(v.as_str(), "io" | "caddy") {
                return Err(bad("proxy", v, "expected \"io\" or \"caddy\"".into()));
            }
        }
        if let Some(v) = &self.nomad_version {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
            {
                return Err(bad(
                    "nomad_version",
                    v,
                    "expected a version like 1.10.5".into(),
                ));
            }
        }
        if let Some(v) = &self.pds_image {
            v.parse::<ImageRef>()
                .map_err(|e| bad("pds_image", v, e.to_string()))?;
        }
        if let Some(previous) = &self.pds_previous {
            previous
                .image
                .parse::<ImageRef>()
                .map_err(|e| bad("pds_previous", &previous.image, e.to_string()))?;
        }
        if let Some(v) = &self.plc_url {
            v.parse::<HttpUrl>()
                .map_err(|e| bad("plc_url", v, e.to_string()))?;
        }
        if let Some(v) = &self.timezone {
            v.parse::<Timezone>()
                .map_err(|e| bad("timezone", v, e.to_string()))?;
        }
        for v in &self.pds_env {
            env_file::parse_extra_from(v, "site.toml pds_env")
                .map_err(|e| bad("pds_env", v, e.to_string()))?;
        }
        if let Some(v) = &self.account_did {
            let valid = v.starts_with("did:")
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":._-%".contains(c));
            if !valid {
                return Err(bad(
                    "account_did",
                    v,
                    "expected a DID like did:plc:…".into(),
                ));
            }
        }
        Ok(())
    }
}

/// 1-based line of a byte offset.
fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// 1-based line where `field = …` is set at the top level.
fn line_of_field(text: &str, field: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_are_listed_by_their_site_toml() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SiteDir::list(dir.path()).unwrap(), Vec::<String>::new());
        for name in ["b.example.com", "a.example.com"] {
            let site = SiteDir::new(dir.path(), &name.parse().unwrap());
            site.save_record(&SiteRecord {
                hostname: name.into(),
                ..Default::default()
            })
            .unwrap();
        }
        // A directory without site.toml (a half-made site) is not a site.
        fs::create_dir_all(dir.path().join("sites/c.example.com")).unwrap();
        assert_eq!(
            SiteDir::list(dir.path()).unwrap(),
            vec!["a.example.com", "b.example.com"]
        );
    }

    #[test]
    fn record_round_trips_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let site = SiteDir::new(dir.path(), &"pds.example.com".parse().unwrap());
        assert_eq!(site.load_record().unwrap(), None);
        let record = SiteRecord {
            hostname: "pds.example.com".into(),
            account_did: Some("did:plc:abc".into()),
            ..Default::default()
        };
        site.save_record(&record).unwrap();
        assert_eq!(site.load_record().unwrap(), Some(record));
        let mode = fs::metadata(site.site_file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(site.path()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
    #[test]
    fn a_site_file_with_unknown_keys_still_loads_and_keeps_its_destination() {
        // A newer pdsup may save keys this one does not know; `destination`
        // (saved by every version that connected) is the day-2 default DEST.
        let dir = tempfile::tempdir().unwrap();
        let site = SiteDir::new(dir.path(), &"pds.example.com".parse().unwrap());
        fs::create_dir_all(site.path()).unwrap();
        fs::write(
            site.site_file(),
            "hostname = \"pds.example.com\"\ndestination = \"root@203.0.113.7\"\nnomad_version = \"1.9.7\"\nfrom_the_future = 3\n",
        )
        .unwrap();
        let record = site.load_record().unwrap().unwrap();
        assert_eq!(record.nomad_version.as_deref(), Some("1.9.7"));
        assert_eq!(record.destination.as_deref(), Some("root@203.0.113.7"));
        site.save_record(&record).unwrap();
        let text = fs::read_to_string(site.site_file()).unwrap();
        assert!(
            text.contains("destination = \"root@203.0.113.7\""),
            "{text}"
        );
    }
}
