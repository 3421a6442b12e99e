//! `Settings`: everything a run needs to know about the site, resolved once from
//! flags, the environment and the site's saved state, validated, and then read-only.
//! Which setting comes from where is the table in [`table`].

pub mod fleet;
pub mod table;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::inputs::{Email, Handle, Hostname};

/// The pinned Nomad release pdsup installs.
pub const NOMAD_VERSION: &str = "1.10.5";
pub const NOMAD_RELEASES: &str = "https://releases.hashicorp.com";
pub const PDS_IMAGE: &str = "ghcr.io/bluesky-social/pds:0.4";
pub const IO_IMAGE: &str = "agentio/io:latest";
pub const PLC_URL: &str = "https://plc.directory";
/// Docker's apt repositories; the droplet's OS id is appended (`/debian`, `/ubuntu`).
pub const DOCKER_APT_URL: &str = "https://download.docker.com/linux";
/// Where the PDS listens on the droplet's loopback (the proxy and pdsup reach it there).
pub const PDS_PORT: u16 = 3000;
pub const NOMAD_HTTP_PORT: u16 = 4646;
pub const PDS_VOLUME_PATH: &str = "/srv/nomad/pds";
pub const IO_VOLUME_PATH: &str = "/srv/nomad/io";
pub const NOMAD_CONFIG_PATH: &str = "/etc/nomad.d/nomad.hcl";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proxy {
    /// Agent IO's proxy as a Nomad job (the seed's setup)
    Io,
    /// Caddy from the distribution, with on-demand TLS for the hostname and its handles
    Caddy,
}

/// The block IO's config takes for a site: IO renamed `host` to `ingress`
/// in July 2026 (with `call` → `calling`); images before that read `host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoIngressSyntax {
    /// `ingress "HOSTNAME" { name = … backend = "nomad:pds" }`: IO since July 2026
    Ingress,
    /// `host "HOSTNAME" { … }`: the seed article's form, for IO images before July 2026
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DockerSource {
    /// Docker Engine (docker-ce) from Docker's apt repository
    Docker,
    /// The distribution's docker.io package
    Distro,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NomadSource {
    pub version: String,
    /// Base URL laid out like releases.hashicorp.com (`<url>/nomad/<v>/<file>`).
    pub release_url: String,
    /// A local release zip to upload instead of downloading, already checked
    /// against the signed SHA256SUMS beside it.
    pub zip: Option<LocalZip>,
    /// An armored OpenPGP key to trust instead of HashiCorp's (for a private mirror).
    pub release_key: Option<PathBuf>,
}

/// The CPU architectures pdsup installs Nomad for. (Reading one from `uname -m`
/// is Nomad's business: `Arch::from_uname` lives in `nomad::release`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The name HashiCorp uses in release file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--nomad-zip` checked on this machine (`nomad::release::check_local_zip`):
/// a zip holding `nomad`, whose SHA-256 the signed SHA256SUMS beside it lists
/// for these architectures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalZip {
    pub path: PathBuf,
    pub sha256: String,
    pub arches: Vec<Arch>,
}

impl LocalZip {
    /// `the linux_amd64 release`, for messages.
    pub fn describe_arches(&self) -> String {
        let names: Vec<String> = self.arches.iter().map(|a| format!("linux_{a}")).collect();
        format!("the {} release", names.join(" and "))
    }
}

/// Where `--docker-source docker` installs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerApt {
    /// Base URL laid out like https://download.docker.com/linux:
    /// `<url>/<os id>/dists/<codename>/stable`.
    pub url: String,
    /// A key to trust instead of Docker's (for a private mirror signed by its owner).
    pub key: Option<AptKey>,
}

/// An armored OpenPGP public key read and checked on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptKey {
    pub path: PathBuf,
    pub armored: String,
    /// The primary key's fingerprint, 40 upper-case hex digits.
    pub fingerprint: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Acme {
    /// ACME directory URL for Caddy (default: Caddy's own, Let's Encrypt and ZeroSSL).
    pub ca: Option<String>,
    /// PEM file with the root of a private or test ACME CA.
    pub ca_root: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Io {
    pub image: String,
    /// Host directory (inside the IO volume, mounted at /io in the IO task) for ingress files.
    pub config_dir: String,
    pub ingress_syntax: IoIngressSyntax,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub hostname: Hostname,
    pub handle: Handle,
    pub email: Email,
    pub proxy: Proxy,
    pub docker_source: DockerSource,
    pub docker_apt: DockerApt,
    pub nomad: NomadSource,
    pub pds_image: String,
    pub pds_image_archive: Option<PathBuf>,
    pub plc_url: String,
    pub acme: Acme,
    pub io: Io,
    pub confirm_email: bool,
    /// Go on when Nomad's API or the PDS port answers on the public address.
    pub allow_exposed_api: bool,
    /// Extra PDS environment (`--pds-env KEY=VALUE`), after pdsup's own values.
    pub pds_env: Vec<(String, String)>,
    pub timezone: String,
}

impl Settings {
    /// Settings for examples and tests: a plausible site with every default.
    pub fn example() -> Self {
        let hostname: Hostname = "pds.example.com".parse().expect("valid");
        Settings {
            handle: Handle::parse("alice", &hostname).expect("valid"),
            hostname,
            email: "me@example.com".parse().expect("valid"),
            proxy: Proxy::Io,
            docker_source: DockerSource::Docker,
            docker_apt: DockerApt {
                url: DOCKER_APT_URL.into(),
                key: None,
            },
            nomad: NomadSource {
                version: NOMAD_VERSION.into(),
                release_url: NOMAD_RELEASES.into(),
                zip: None,
                release_key: None,
            },
            pds_image: PDS_IMAGE.into(),
            pds_image_archive: None,
            plc_url: PLC_URL.into(),
            acme: Acme::default(),
            io: Io {
                image: IO_IMAGE.into(),
                config_dir: IO_VOLUME_PATH.into(),
                ingress_syntax: IoIngressSyntax::Ingress,
            },
            confirm_email: false,
            allow_exposed_api: false,
            pds_env: Vec::new(),
            timezone: "UTC".into(),
        }
    }
}
