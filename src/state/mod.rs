//! Local state, one directory per site (the PDS hostname):
//!
//! ```text
//! <state dir>/sites/<hostname>/
//!   pds.env       the PDS environment with its secrets (0600, pdsadmin-compatible)
//!   site.toml     the droplet address and choices of the last run
//!   known_hosts   the droplet's pinned SSH host key
//! ```
//!
//! The state dir defaults to `$XDG_DATA_HOME/pdsup` (`~/.local/share/pdsup`).
//! Losing `pds.env` loses the PDS's identity keys: it is written atomically, never
//! overwritten with new secrets, and only ever readable by its owner.

pub mod secrets;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::inputs::Hostname;

pub use secrets::PdsSecrets;

#[derive(Clone, Debug)]
pub struct SiteDir {
    root: PathBuf,
}

/// What `site.toml` remembers between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SiteRecord {
    pub hostname: String,
    /// The last droplet address pdsup reached (`user@host:port` or alias).
    pub destination: Option<String>,
    pub email: Option<String>,
    pub handle: Option<String>,
    pub proxy: Option<String>,
    pub nomad_version: Option<String>,
    pub pds_image: Option<String>,
    pub plc_url: Option<String>,
    pub timezone: Option<String>,
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
}

/// The account a run was about to create.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountIntent {
    pub handle: String,
    pub email: String,
}

impl SiteDir {
    pub fn default_state_dir() -> Result<PathBuf> {
        dirs::data_dir()
            .map(|d| d.join("pdsup"))
            .ok_or_else(|| anyhow!("no home directory to keep state in; pass --state-dir DIR"))
    }

    /// The site's directory under `state_dir`; not created until something is saved.
    pub fn new(state_dir: &Path, hostname: &Hostname) -> Self {
        SiteDir {
            root: state_dir.join("sites").join(hostname.as_str()),
        }
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

    pub fn load_record(&self) -> Result<Option<SiteRecord>> {
        let path = self.site_file();
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .with_context(|| format!("reading {}: fix or remove the file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save_record(&self, record: &SiteRecord) -> Result<()> {
        let text = toml::to_string_pretty(record)?;
        self.write_private(&self.site_file(), text.as_bytes())
    }

    /// Reads the secrets from `pds.env`; `None` when the site has none yet.
    pub fn load_secrets(&self) -> Result<Option<PdsSecrets>> {
        let path = self.env_file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let env = crate::pds::env::parse_env_file(&text);
        PdsSecrets::from_env(&env)
            .map(Some)
            .with_context(|| format!("{} is incomplete", path.display()))
    }

    /// Writes `pds.env` (0600). The caller has made sure its secrets are the
    /// site's existing ones or new ones for a site that had none.
    pub fn save_env_file(&self, contents: &str) -> Result<()> {
        self.write_private(&self.env_file(), contents.as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
