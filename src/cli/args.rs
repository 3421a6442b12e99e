//! Flags shared by `up` and `plan`, and their resolution into `Settings`:
//! flags win, then the site's saved `site.toml`, then defaults. Every value is
//! validated here, before any connection is made.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::inputs::{Handle, Hostname};
use crate::settings::{self, Acme, DockerSource, Io, NomadSource, Proxy, Settings};
use crate::state::SiteRecord;

#[derive(Debug, Clone, Args)]
pub struct SiteArgs {
    /// The PDS's public DNS name (e.g. pds.example.com); names the site's local state
    #[arg(long, env = "PDSUP_HOSTNAME")]
    pub hostname: String,

    /// Email address of the first account [remembered from the last run]
    #[arg(long)]
    pub email: Option<String>,

    /// The first account's handle: a name under the hostname (alice → alice.<hostname>) or a domain you own [remembered]
    #[arg(long)]
    pub handle: Option<String>,

    /// The proxy in front of the PDS
    #[arg(long, value_enum)]
    pub proxy: Option<Proxy>,

    /// Where Docker comes from when it is not installed yet
    #[arg(long, value_enum, default_value = "docker")]
    pub docker_source: DockerSource,

    /// Nomad release to install
    #[arg(long, default_value = settings::NOMAD_VERSION, value_name = "VERSION")]
    pub nomad_version: String,

    /// Base URL of the Nomad releases (a mirror laid out like releases.hashicorp.com)
    #[arg(long, default_value = settings::NOMAD_RELEASES, value_name = "URL")]
    pub nomad_release_url: String,

    /// Install from this local release zip (its SHA256SUMS and .sig must sit beside it)
    #[arg(long, value_name = "FILE")]
    pub nomad_zip: Option<PathBuf>,

    /// Trust this armored OpenPGP key for the release signature instead of HashiCorp's
    #[arg(long, value_name = "FILE")]
    pub nomad_release_key: Option<PathBuf>,

    /// The PDS image the job runs [default: ghcr.io/bluesky-social/pds:0.4; remembered]
    #[arg(long, value_name = "IMAGE")]
    pub pds_image: Option<String>,

    /// Load the PDS image from this `docker save` tarball instead of pulling it
    #[arg(long, value_name = "FILE")]
    pub pds_image_archive: Option<PathBuf>,

    /// PLC directory the PDS registers DIDs with [default: https://plc.directory; remembered]
    #[arg(long, value_name = "URL")]
    pub plc_url: Option<String>,

    /// ACME directory for Caddy (e.g. Let's Encrypt staging or a private CA)
    #[arg(long, value_name = "URL")]
    pub acme_ca: Option<String>,

    /// PEM root certificate of that ACME CA
    #[arg(long, value_name = "FILE")]
    pub acme_ca_root: Option<PathBuf>,

    /// The IO image
    #[arg(long, default_value = settings::IO_IMAGE, value_name = "IMAGE")]
    pub io_image: String,

    /// Directory on the droplet where IO reads its config (inside the io volume)
    #[arg(long, default_value = settings::IO_VOLUME_PATH, value_name = "DIR")]
    pub io_config_dir: String,

    /// Mark the first account's email as confirmed (for PDSes that send no mail)
    #[arg(long)]
    pub confirm_email: bool,

    /// Extra PDS environment, repeatable (e.g. PDS_EMAIL_SMTP_URL=smtps://...) [remembered: giving any replaces the saved set]
    #[arg(long = "pds-env", value_name = "KEY=VALUE")]
    pub pds_env: Vec<String>,

    /// The PDS's time zone (TZ) [default: UTC; remembered]
    #[arg(long)]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SshArgs {
    /// Private key to log in with (otherwise ssh-agent, ~/.ssh/config, ~/.ssh/id_*)
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,

    /// Accept and pin a changed host key (after you rebuilt the droplet yourself)
    #[arg(long)]
    pub accept_new_host_key: bool,

    /// OpenSSH client config to read [default: ~/.ssh/config]
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
}

pub fn hostname(args: &SiteArgs) -> Result<Hostname> {
    Ok(args.hostname.parse()?)
}

fn readable(path: &Path, flag: &str) -> Result<()> {
    std::fs::File::open(path)
        .with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    Ok(())
}

fn url(value: &str, flag: &str) -> Result<String> {
    if !(value.starts_with("https://") || value.starts_with("http://"))
        || value.contains(char::is_whitespace)
    {
        bail!("{flag} {value:?}: expected an http(s):// URL");
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// Validates flags and merges them with the site's saved record.
pub fn settings(args: &SiteArgs, record: Option<&SiteRecord>) -> Result<Settings> {
    let hostname = hostname(args)?;
    let email_raw = args
        .email
        .clone()
        .or_else(|| record.and_then(|r| r.email.clone()))
        .context("--email is required on the first run (the first account's address)")?;
    let handle_raw = args
        .handle
        .clone()
        .or_else(|| record.and_then(|r| r.handle.clone()))
        .context("--handle is required on the first run (e.g. --handle alice)")?;
    let proxy = args
        .proxy
        .or_else(|| {
            record
                .and_then(|r| r.proxy.as_deref())
                .and_then(|p| <Proxy as clap::ValueEnum>::from_str(p, true).ok())
        })
        .unwrap_or(Proxy::Io);
    for (path, flag) in [
        (&args.nomad_zip, "--nomad-zip"),
        (&args.nomad_release_key, "--nomad-release-key"),
        (&args.pds_image_archive, "--pds-image-archive"),
        (&args.acme_ca_root, "--acme-ca-root"),
    ] {
        if let Some(p) = path {
            readable(p, flag)?;
        }
    }
    if !args
        .nomad_version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
    {
        bail!(
            "--nomad-version {:?}: expected a version like {}",
            args.nomad_version,
            settings::NOMAD_VERSION
        );
    }
    // A local Nomad zip is checked here, before any connection: a file that is
    // no release must not get as far as creating the nomad user.
    let nomad_zip = match &args.nomad_zip {
        Some(path) => {
            let key = crate::nomad::release::TrustedKey::load(args.nomad_release_key.as_deref())?;
            Some(crate::nomad::release::check_local_zip(
                path,
                &args.nomad_version,
                &key,
            )?)
        }
        None => None,
    };
    // Values that shape what is deployed are remembered, so a later run (or a
    // rebuild) without the flag deploys the same thing rather than the default.
    let remembered = |flag: &Option<String>, saved: Option<&String>, default: &str| {
        flag.clone()
            .or_else(|| saved.cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let pds_image = remembered(
        &args.pds_image,
        record.and_then(|r| r.pds_image.as_ref()),
        settings::PDS_IMAGE,
    );
    let plc_url = remembered(
        &args.plc_url,
        record.and_then(|r| r.plc_url.as_ref()),
        settings::PLC_URL,
    );
    let timezone = remembered(
        &args.timezone,
        record.and_then(|r| r.timezone.as_ref()),
        "UTC",
    );
    if pds_image.trim().is_empty() || pds_image.contains(char::is_whitespace) {
        bail!(
            "--pds-image {pds_image:?}: expected an image reference like {}",
            settings::PDS_IMAGE
        );
    }
    if !args.io_config_dir.starts_with('/') {
        bail!("--io-config-dir must be an absolute path on the droplet");
    }
    let pds_env_raw = match (&args.pds_env, record) {
        (given, _) if !given.is_empty() => given.clone(),
        (_, Some(r)) => r.pds_env.clone(),
        _ => Vec::new(),
    };
    let pds_env = pds_env_raw
        .iter()
        .map(|raw| crate::pds::env::parse_extra(raw))
        .collect::<Result<Vec<_>>>()?;
    Ok(Settings {
        handle: Handle::parse(&handle_raw, &hostname)?,
        email: email_raw.parse()?,
        hostname,
        proxy,
        docker_source: args.docker_source,
        nomad: NomadSource {
            version: args.nomad_version.clone(),
            release_url: url(&args.nomad_release_url, "--nomad-release-url")?,
            zip: nomad_zip,
            release_key: args.nomad_release_key.clone(),
        },
        pds_image,
        pds_image_archive: args.pds_image_archive.clone(),
        plc_url: url(&plc_url, "--plc-url")?,
        acme: Acme {
            ca: args
                .acme_ca
                .as_deref()
                .map(|u| url(u, "--acme-ca"))
                .transpose()?,
            ca_root: args.acme_ca_root.clone(),
        },
        io: Io {
            image: args.io_image.clone(),
            config_dir: args.io_config_dir.clone(),
        },
        confirm_email: args.confirm_email,
        pds_env,
        timezone,
    })
}

/// The record saved for the next run.
pub fn record(
    settings: &Settings,
    previous: Option<SiteRecord>,
    destination: Option<String>,
) -> SiteRecord {
    let mut record = previous.unwrap_or_default();
    record.hostname = settings.hostname.to_string();
    if destination.is_some() {
        record.destination = destination;
    }
    record.email = Some(settings.email.as_str().to_string());
    record.handle = Some(settings.handle.initial().to_string());
    if let crate::inputs::Handle::Custom { domain, .. } = &settings.handle {
        record.handle = Some(domain.clone());
    }
    record.proxy = Some(format!("{:?}", settings.proxy).to_lowercase());
    record.nomad_version = Some(settings.nomad.version.clone());
    record.pds_image = Some(settings.pds_image.clone());
    record.plc_url = Some(settings.plc_url.clone());
    record.timezone = Some(settings.timezone.clone());
    record.pds_env = settings
        .pds_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        site: SiteArgs,
    }

    fn parse(args: &[&str]) -> SiteArgs {
        Flags::parse_from(std::iter::once("pdsup").chain(args.iter().copied())).site
    }

    #[test]
    fn deployed_values_are_remembered_and_flags_win() {
        let first = parse(&[
            "--hostname",
            "pds.example.com",
            "--email",
            "me@example.com",
            "--handle",
            "alice",
            "--plc-url",
            "http://10.0.0.1:2582",
            "--pds-env",
            "PDS_CRAWLERS=",
            "--timezone",
            "Europe/Berlin",
            "--pds-image",
            "example/pds:1",
        ]);
        let saved = record(&settings(&first, None).unwrap(), None, None);
        let later = settings(&parse(&["--hostname", "pds.example.com"]), Some(&saved)).unwrap();
        assert_eq!(later.plc_url, "http://10.0.0.1:2582");
        assert_eq!(
            later.pds_env,
            vec![("PDS_CRAWLERS".to_string(), String::new())]
        );
        assert_eq!(later.timezone, "Europe/Berlin");
        assert_eq!(later.pds_image, "example/pds:1");
        assert_eq!(later.email.as_str(), "me@example.com");
        assert_eq!(later.handle.initial(), "alice.pds.example.com");
        let flag = parse(&[
            "--hostname",
            "pds.example.com",
            "--plc-url",
            "https://plc.directory",
        ]);
        assert_eq!(
            settings(&flag, Some(&saved)).unwrap().plc_url,
            "https://plc.directory"
        );
        let defaults = settings(
            &parse(&[
                "--hostname",
                "pds.example.com",
                "--email",
                "a@b.co",
                "--handle",
                "bob",
            ]),
            None,
        )
        .unwrap();
        assert_eq!(defaults.plc_url, settings::PLC_URL);
        assert_eq!(defaults.pds_image, settings::PDS_IMAGE);
    }
}
