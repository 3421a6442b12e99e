//! Flags shared by `up` and `plan`, and their resolution into `Settings`:
//! flags win, then the site's saved `site.toml`, then defaults. Every value is
//! validated here, before any connection is made.

use std::path::{Path, PathBuf};

use crate::error::{bail, err, Context, ErrorKind, Result};
use clap::Args;

use crate::inputs::{Handle, Hostname, HttpUrl, ImageRef, Timezone};
use crate::settings::{self, Acme, DockerApt, DockerSource, Io, NomadSource, Proxy, Settings};
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

    /// Base URL of Docker's apt repository or a mirror laid out like it; pdsup appends /debian or /ubuntu [default: https://download.docker.com/linux; remembered]
    #[arg(long, value_name = "URL")]
    pub docker_apt_url: Option<String>,

    /// Trust this armored OpenPGP key for that repository instead of Docker's [remembered with the URL]
    #[arg(long, value_name = "FILE")]
    pub docker_apt_key: Option<PathBuf>,

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
        .with_context(|| format!("{flag} {}: cannot read it", path.display()))
        .kind(ErrorKind::BadInput)?;
    Ok(())
}

/// Parses a value with its type's parser; the error names where it came from
/// (the flag, or the site.toml field it was remembered in).
fn parse_as<T>(value: &str, origin: &str) -> Result<T>
where
    T: std::str::FromStr<Err = crate::inputs::InputError>,
{
    value.parse().map_err(|e| err!(BadInput, "{origin}: {e}"))
}

/// Docker's apt repository and the key to trust for it. The key is remembered
/// with the URL it was given for: a new `--docker-apt-url` alone means Docker's key.
fn docker_apt(args: &SiteArgs, record: Option<&SiteRecord>) -> Result<DockerApt> {
    let saved_url = record.and_then(|r| r.docker_apt_url.clone());
    let saved_key = record.and_then(|r| r.docker_apt_key.as_ref().map(PathBuf::from));
    let (raw_url, key_path, remembered_key) = match (&args.docker_apt_url, &args.docker_apt_key) {
        (Some(url), key) => (url.clone(), key.clone(), false),
        (None, Some(key)) => (saved_url.unwrap_or_default(), Some(key.clone()), false),
        (None, None) => (saved_url.unwrap_or_default(), saved_key, true),
    };
    let raw_url = if raw_url.is_empty() {
        settings::DOCKER_APT_URL.to_string()
    } else {
        raw_url
    };
    let url = parse_as::<HttpUrl>(&raw_url, "--docker-apt-url")?.to_string();
    // The URL goes into apt's sources line and a shell command on the droplet.
    if let Some(c) = url
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~:/%@+=,".contains(*c)))
    {
        bail!(
            BadInput,
            "--docker-apt-url {url:?}: the character {c:?} has no place in an apt repository URL"
        );
    }
    if let Some(os) = ["/debian", "/ubuntu"]
        .into_iter()
        .find(|os| url.ends_with(os))
    {
        bail!(
            BadInput,
            "--docker-apt-url {url:?} ends with {os}: give the base without the OS, like {}; pdsup appends /debian or /ubuntu for the droplet's OS",
            settings::DOCKER_APT_URL
        );
    }
    let key = match key_path {
        None => None,
        Some(path) => Some(
            crate::steps::docker::read_apt_key(&path).map_err(|e| {
                if remembered_key {
                    crate::err!(
                        BadInput,
                        "{e:#} (remembered with --docker-apt-url {url}): give --docker-apt-key FILE again, or --docker-apt-url {} for Docker's own repository and key",
                        settings::DOCKER_APT_URL
                    )
                } else {
                    e
                }
            })?,
        ),
    };
    Ok(DockerApt { url, key })
}

/// Validates flags and merges them with the site's saved record.
pub fn settings(args: &SiteArgs, record: Option<&SiteRecord>) -> Result<Settings> {
    let hostname = hostname(args)?;
    let email_raw = args
        .email
        .clone()
        .or_else(|| record.and_then(|r| r.email.clone()))
        .context("--email is required on the first run (the first account's address)")
        .kind(ErrorKind::BadInput)?;
    let handle_raw = args
        .handle
        .clone()
        .or_else(|| record.and_then(|r| r.handle.clone()))
        .context("--handle is required on the first run (e.g. --handle alice)")
        .kind(ErrorKind::BadInput)?;
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
    if let Some(root) = &args.acme_ca_root {
        crate::steps::proxy::check_pem_roots(root)?;
    }
    if args.nomad_version.is_empty()
        || !args
            .nomad_version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
    {
        bail!(
            BadInput,
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
    // Each comes back with where it came from, for the error if it is invalid.
    let remembered = |flag: &Option<String>,
                      flag_name: &str,
                      saved: Option<&String>,
                      field: &str,
                      default: &str| {
        match (flag, saved) {
            (Some(v), _) => (v.clone(), flag_name.to_string()),
            (None, Some(v)) => (v.clone(), format!("{field} in site.toml")),
            (None, None) => (default.to_string(), flag_name.to_string()),
        }
    };
    let (pds_image, origin) = remembered(
        &args.pds_image,
        "--pds-image",
        record.and_then(|r| r.pds_image.as_ref()),
        "pds_image",
        settings::PDS_IMAGE,
    );
    let pds_image = parse_as::<ImageRef>(&pds_image, &origin)?.to_string();
    let (plc_url, origin) = remembered(
        &args.plc_url,
        "--plc-url",
        record.and_then(|r| r.plc_url.as_ref()),
        "plc_url",
        settings::PLC_URL,
    );
    let plc_url = parse_as::<HttpUrl>(&plc_url, &origin)?.to_string();
    let (timezone, origin) = remembered(
        &args.timezone,
        "--timezone",
        record.and_then(|r| r.timezone.as_ref()),
        "timezone",
        "UTC",
    );
    let timezone = parse_as::<Timezone>(&timezone, &origin)?.to_string();
    let io_image = parse_as::<ImageRef>(&args.io_image, "--io-image")?.to_string();
    // It lands in shell commands and the IO job: a plain absolute path only.
    let dir = &args.io_config_dir;
    if !dir.starts_with('/')
        || dir.split('/').any(|part| part == "..")
        || !dir
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c))
    {
        bail!(
            BadInput,
            "--io-config-dir {dir:?}: expected an absolute path on the droplet of letters, \
             digits, '/', '_', '.' and '-', without '..', e.g. {}",
            settings::IO_VOLUME_PATH
        );
    }
    let docker_apt = docker_apt(args, record)?;
    let (pds_env_raw, origin) = match (&args.pds_env, record) {
        (given, _) if !given.is_empty() => (given.clone(), "--pds-env"),
        (_, Some(r)) => (r.pds_env.clone(), "site.toml pds_env"),
        _ => (Vec::new(), "--pds-env"),
    };
    let pds_env = pds_env_raw
        .iter()
        .map(|raw| crate::pds::env::parse_extra_from(raw, origin))
        .collect::<Result<Vec<_>>>()?;
    let mut keys: Vec<&str> = pds_env.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            BadInput,
            "{origin} sets {} twice; give each name once",
            pair[0]
        );
    }
    Ok(Settings {
        handle: Handle::parse(&handle_raw, &hostname)?,
        email: email_raw.parse()?,
        hostname,
        proxy,
        docker_source: args.docker_source,
        docker_apt,
        nomad: NomadSource {
            version: args.nomad_version.clone(),
            release_url: parse_as::<HttpUrl>(&args.nomad_release_url, "--nomad-release-url")?
                .to_string(),
            zip: nomad_zip,
            release_key: args.nomad_release_key.clone(),
        },
        pds_image,
        pds_image_archive: args.pds_image_archive.clone(),
        plc_url,
        acme: Acme {
            ca: args
                .acme_ca
                .as_deref()
                .map(|u| parse_as::<HttpUrl>(u, "--acme-ca").map(|u| u.to_string()))
                .transpose()?,
            ca_root: args.acme_ca_root.clone(),
        },
        io: Io {
            image: io_image,
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
    record.docker_apt_url = Some(settings.docker_apt.url.clone());
    record.docker_apt_key = settings
        .docker_apt
        .key
        .as_ref()
        .map(|k| k.path.display().to_string());
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

    #[test]
    fn docker_apt_mirror_and_its_key_are_remembered_together() {
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/docker-apt/mirror-key.asc"
        );
        let site = ["--hostname", "pds.example.com"];
        let first = parse(
            &[
                &site[..],
                &[
                    "--email",
                    "me@example.com",
                    "--handle",
                    "alice",
                    "--docker-apt-url",
                    "http://10.0.0.1:8080/docker/linux/",
                    "--docker-apt-key",
                    key,
                ],
            ]
            .concat(),
        );
        let s = settings(&first, None).unwrap();
        assert_eq!(s.docker_apt.url, "http://10.0.0.1:8080/docker/linux");
        let fpr = "5968A284C69DB5AABD29FA9DD0488F1CD634191D";
        assert_eq!(s.docker_apt.key.as_ref().unwrap().fingerprint, fpr);
        let saved = record(&s, None, None);
        assert_eq!(saved.docker_apt_key.as_deref(), Some(key));

        // A later run without the flags: the same mirror, the same key.
        let later = settings(&parse(&site), Some(&saved)).unwrap();
        assert_eq!(later.docker_apt, s.docker_apt);
        // A new URL alone means Docker's key, not the mirror's.
        let back = settings(
            &parse(&[&site[..], &["--docker-apt-url", settings::DOCKER_APT_URL]].concat()),
            Some(&saved),
        )
        .unwrap();
        assert_eq!(back.docker_apt.url, settings::DOCKER_APT_URL);
        assert_eq!(back.docker_apt.key, None);
        // A remembered key that is gone says so, and how to go on.
        let mut moved = saved.clone();
        moved.docker_apt_key = Some("/nonexistent/mirror-key.asc".into());
        let err = format!("{:#}", settings(&parse(&site), Some(&moved)).unwrap_err());
        assert!(
            err.contains("/nonexistent/mirror-key.asc: cannot read it"),
            "{err}"
        );
        assert!(
            err.contains("remembered with --docker-apt-url http://10.0.0.1:8080/docker/linux"),
            "{err}"
        );
        // Nothing given, nothing saved: Docker's repository and key.
        let defaults = settings(
            &parse(&[&site[..], &["--email", "a@b.co", "--handle", "bob"]].concat()),
            None,
        )
        .unwrap();
        assert_eq!(defaults.docker_apt.url, settings::DOCKER_APT_URL);
        assert_eq!(defaults.docker_apt.key, None);
    }

    #[test]
    fn invalid_values_name_their_flag_or_saved_field() {
        let site = [
            "--hostname",
            "pds.example.com",
            "--email",
            "a@b.co",
            "--handle",
            "bob",
        ];
        let err = |extra: &[&str], record: Option<&SiteRecord>| {
            let args: Vec<&str> = site.iter().chain(extra).copied().collect();
            settings(&parse(&args), record).unwrap_err().to_string()
        };
        let saved = SiteRecord {
            timezone: Some("Europe/Berlin\nPDS_X=1".into()),
            pds_env: vec!["PDS_FOO=a\nPDS_JWT_SECRET=evil".into()],
            ..Default::default()
        };
        assert!(err(&[], Some(&saved)).starts_with("timezone in site.toml:"));
        let fixed_tz = SiteRecord {
            timezone: None,
            ..saved.clone()
        };
        let e = err(&[], Some(&fixed_tz));
        assert!(e.contains("site.toml pds_env PDS_FOO"), "{e}");
        // A flag replaces the saved set.
        assert!(err(&["--pds-env", "PDS_FOO=a\tb"], Some(&fixed_tz)).contains("--pds-env PDS_FOO"));
        assert!(err(&["--nomad-version", ""], None).contains("--nomad-version"));
        for dir in ["/srv/../etc", "srv/io", "/srv/io dir", "/srv/io\n"] {
            assert!(err(&["--io-config-dir", dir], None).contains("--io-config-dir"));
        }
        assert!(err(&["--nomad-release-url", "file:///x"], None).contains("--nomad-release-url"));
    }
}
