//! A Nomad release install as data: where the release comes from, how it is
//! checked on this machine, and every command that then runs on the droplet.
//! `steps::nomad_install` builds it (and shows it in the plan) and carries it out.

use std::path::PathBuf;

use super::release;
use crate::host::{Cmd, FileMode};

/// The release, how it is checked here, and what then runs on the droplet.
///
/// The checks on this machine come first (SHA256SUMS fetched or read beside
/// `--nomad-zip`, its signature verified, the zip's SHA-256 taken from it, a
/// local zip hashed); then `commands` run in order, with `steps::nomad_install::sum_placeholder`
/// in them replaced by that SHA-256. The plan shows `commands` as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    pub version: String,
    pub arch: release::Arch,
    pub source: Source,
    pub key: Option<PathBuf>,
    pub commands: Vec<Remote>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Download { base_url: String },
    LocalZip(PathBuf),
}

/// One thing done on the droplet, with the progress line shown before it and
/// the hint added when it fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub progress: Option<String>,
    pub action: RemoteAction,
    pub on_failure: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteAction {
    /// Run a command; a non-zero exit fails the install.
    Run(Cmd),
    /// Stream a local file to the droplet.
    Upload {
        local: PathBuf,
        path: String,
        mode: FileMode,
    },
    /// Run a command and compare the Nomad version in its first line.
    ExpectVersion { cmd: Cmd, version: String },
}
