//! Flags shared by `up` and `plan`, and their resolution into `Settings`
//! through the table of site settings (`settings::table`): flag, then its
//! environment variable, then the site's saved `site.toml` (for remembered
//! settings), then the default. Every value is validated here, with where it
//! came from, before any connection is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{bail, err, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};

use crate::inputs::{Email, Handle, Hostname, HttpUrl, ImageRef, Timezone};
use crate::settings::table::{self, Given, Layers, Resolved, Setting};
use crate::settings::{
    self, Acme, DockerApt, DockerSource, Io, IoIngressSyntax, NomadSource, Proxy, Settings,
};
use crate::state::SiteRecord;

/// The site flags, as the user sees them. Their values are read raw, with
/// their source, by [`SiteArgs`]; each field's id, flag, environment variable
/// and default are the ones in `settings::table` (a test holds them equal).
#[allow(dead_code)] // the fields declare the flags; nothing reads them
#[derive(Debug, Clone, Args)]
struct SiteFlags {
    /// The PDS's public DNS name (e.g. pds.example.com); names the site's local state
    #[arg(long, env = "PDSUP_HOSTNAME")]
    hostname: String,

    /// Email address of the first account [remembered from the last run]
    #[arg(long, env = "PDSUP_EMAIL")]
    email: Option<String>,

    /// The first account's handle: a name under the hostname (alice → alice.<hostname>) or a domain you own [remembered]
    #[arg(long, env = "PDSUP_HANDLE")]
    handle: Option<String>,

    /// The proxy in front of the PDS [default: io; remembered]
    #[arg(long, value_enum, env = "PDSUP_PROXY")]
    proxy: Option<Proxy>,

    /// Where Docker comes from when it is not installed yet
    #[arg(
        long,
        value_enum,
        default_value = "docker",
        env = "PDSUP_DOCKER_SOURCE"
    )]
    docker_source: DockerSource,

    /// Base URL of Docker's apt repository or a mirror laid out like it; pdsup appends /debian or /ubuntu [default: https://download.docker.com/linux; remembered]
    #[arg(long, value_name = "URL", env = "PDSUP_DOCKER_APT_URL")]
    docker_apt_url: Option<String>,

    /// Trust this armored OpenPGP key for that repository instead of Docker's [remembered with the URL]
    #[arg(long, value_name = "FILE", env = "PDSUP_DOCKER_APT_KEY")]
    docker_apt_key: Option<PathBuf>,

    /// Nomad release to install [remembered]
    #[arg(long, default_value = settings::NOMAD_VERSION, value_name = "VERSION", env = "PDSUP_NOMAD_VERSION")]
    nomad_version: String,

    /// Base URL of the Nomad releases (a mirror laid out like releases.hashicorp.com)
    #[arg(long, default_value = settings::NOMAD_RELEASES, value_name = "URL", env = "PDSUP_NOMAD_RELEASE_URL")]
    nomad_release_url: String,

    /// Install from this local release zip (its SHA256SUMS and .sig must sit beside it)
    #[arg(long, value_name = "FILE", env = "PDSUP_NOMAD_ZIP")]
    nomad_zip: Option<PathBuf>,

    /// Trust this armored OpenPGP key for the release signature instead of HashiCorp's
    #[arg(long, value_name = "FILE", env = "PDSUP_NOMAD_RELEASE_KEY")]
    nomad_release_key: Option<PathBuf>,

    /// The PDS image the job runs [default: ghcr.io/bluesky-social/pds:0.4; remembered]
    #[arg(long, value_name = "IMAGE", env = "PDSUP_PDS_IMAGE")]
    pds_image: Option<String>,

    /// Load the PDS image from this `docker save` tarball instead of pulling it
    #[arg(long, value_name = "FILE", env = "PDSUP_PDS_IMAGE_ARCHIVE")]
    pds_image_archive: Option<PathBuf>,

    /// PLC directory the PDS registers DIDs with [default: https://plc.directory; remembered]
    #[arg(long, value_name = "URL", env = "PDSUP_PLC_URL")]
    plc_url: Option<String>,

    /// ACME directory for Caddy (e.g. Let's Encrypt staging or a private CA)
    #[arg(long, value_name = "URL", env = "PDSUP_ACME_CA")]
    acme_ca: Option<String>,

    /// PEM root certificate of that ACME CA
    #[arg(long, value_name = "FILE", env = "PDSUP_ACME_CA_ROOT")]
    acme_ca_root: Option<PathBuf>,

    /// The IO image
    #[arg(long, default_value = settings::IO_IMAGE, value_name = "IMAGE", env = "PDSUP_IO_IMAGE")]
    io_image: String,

    /// Directory on the droplet where IO reads its config (inside the io volume)
    #[arg(long, default_value = settings::IO_VOLUME_PATH, value_name = "DIR", env = "PDSUP_IO_CONFIG_DIR")]
    io_config_dir: String,

    /// The block IO's config takes: `ingress` (IO since July 2026) or the seed's `host` (older IO images) [default: ingress; remembered]
    #[arg(long, value_enum, env = "PDSUP_IO_INGRESS_SYNTAX")]
    io_ingress_syntax: Option<IoIngressSyntax>,

    /// Mark the first account's email as confirmed (for PDSes that send no mail)
    #[arg(long, env = "PDSUP_CONFIRM_EMAIL")]
    confirm_email: bool,

    /// Go on when Nomad's HTTP API (4646) or the PDS port (3000) answers on the droplet's public address
    #[arg(long, env = "PDSUP_ALLOW_EXPOSED_API")]
    allow_exposed_api: bool,

    /// Extra PDS environment, repeatable (e.g. PDS_EMAIL_SMTP_URL=smtps://...) [remembered: giving any replaces the saved set]
    #[arg(long = "pds-env", value_name = "KEY=VALUE")]
    pds_env: Vec<String>,

    /// The PDS's time zone (TZ) [default: UTC; remembered]
    #[arg(long, env = "PDSUP_TIMEZONE")]
    timezone: Option<String>,
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

/// The site flags as given to this run: each one's raw values and whether they
/// came from the flag or its environment variable (clap's defaults are left
/// out: the table's apply, after `site.toml`).
#[derive(Debug, Clone, Default)]
pub struct SiteArgs {
    given: BTreeMap<&'static str, (Given, Vec<String>)>,
}

impl Args for SiteArgs {
    fn group_id() -> Option<clap::Id> {
        SiteFlags::group_id()
    }
    fn augment_args(cmd: clap::Command) -> clap::Command {
        SiteFlags::augment_args(cmd)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        SiteFlags::augment_args_for_update(cmd)
    }
}

impl FromArgMatches for SiteArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = BTreeMap::new();
        for setting in table::ALL {
            let from = match matches.value_source(setting.id) {
                Some(ValueSource::CommandLine) => Given::Flag,
                Some(ValueSource::EnvVariable) => Given::Env,
                _ => continue,
            };
            let raw = matches
                .try_get_raw(setting.id)
                .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
            let values = raw
                .into_iter()
                .flatten()
                .map(|v| {
                    v.to_str().map(str::to_string).ok_or_else(|| {
                        clap::Error::raw(
                            clap::error::ErrorKind::InvalidUtf8,
                            format!("{}: the value is not valid UTF-8\n", setting.flag),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            given.insert(setting.id, (from, values));
        }
        Ok(SiteArgs { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl SiteArgs {
    /// No flags but the site's hostname: the settings are then what the
    /// site's `site.toml` remembers, and the defaults.
    pub fn for_hostname(hostname: &Hostname) -> Self {
        let mut given = BTreeMap::new();
        given.insert(
            table::HOSTNAME.id,
            (Given::Flag, vec![hostname.as_str().to_string()]),
        );
        SiteArgs { given }
    }

    /// The layers of this run, over the site's record (if it has one) read
    /// from `site_file`.
    fn layers(&self, record: Option<&SiteRecord>, site_file: Option<&Path>) -> Layers {
        Layers {
            given: self.given.clone(),
            site: record
                .map(|r| toml::Table::try_from(r).expect("a SiteRecord is a TOML table"))
                .unwrap_or_default(),
            site_file: site_file
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "site.toml".into()),
        }
    }
}

pub fn hostname(args: &SiteArgs) -> Result<Hostname> {
    let given = args
        .layers(None, None)
        .given(&table::HOSTNAME)
        .context("--hostname is required (the PDS's DNS name)")?;
    Ok(given.one().parse()?)
}

/// Parses a value with its parser; the error names where the value came from.
fn parse_as<T, E>(value: &Resolved, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<T>
where
    E: std::fmt::Display,
{
    parse(value.one()).map_err(|e| err!("{}: {e}", value.origin))
}

/// A local file given for this run: it must be readable now.
fn readable_file(layers: &Layers, setting: &'static Setting) -> Result<Option<PathBuf>> {
    let Some(value) = layers.resolve(setting) else {
        return Ok(None);
    };
    let path = PathBuf::from(value.one());
    std::fs::File::open(&path)
        .with_context(|| format!("{} {}: cannot read it", value.origin, path.display()))?;
    Ok(Some(path))
}

/// Docker's apt repository and the key to trust for it. The key is remembered
/// with the URL it was given for: a new `--docker-apt-url` alone means Docker's key.
fn docker_apt(layers: &Layers) -> Result<DockerApt> {
    let raw_url = layers
        .resolve(&table::DOCKER_APT_URL)
        .expect("the table has a default");
    let key = if raw_url.origin.is_given() {
        layers.given(&table::DOCKER_APT_KEY)
    } else {
        layers.resolve(&table::DOCKER_APT_KEY)
    };
    let origin = &raw_url.origin;
    let url = parse_as(&raw_url, str::parse::<HttpUrl>)?.to_string();
    // The URL goes into apt's sources line and a shell command on the droplet.
    if let Some(c) = url
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~:/%@+=,".contains(*c)))
    {
        bail!("{origin} {url:?}: the character {c:?} has no place in an apt repository URL");
    }
    if let Some(os) = ["/debian", "/ubuntu"]
        .into_iter()
        .find(|os| url.ends_with(os))
    {
        bail!(
            "{origin} {url:?} ends with {os}: give the base without the OS, like {}; pdsup appends /debian or /ubuntu for the droplet's OS",
            settings::DOCKER_APT_URL
        );
    }
    let key = match key {
        None => None,
        Some(key) => Some(
            crate::steps::docker::read_apt_key(Path::new(key.one())).map_err(|e| {
                if key.origin.is_given() {
                    e
                } else {
                    err!(
                        "{e:#} ({}, remembered with --docker-apt-url {url}): give --docker-apt-key FILE again, or --docker-apt-url {} for Docker's own repository and key",
                        key.origin,
                        settings::DOCKER_APT_URL
                    )
                }
            })?,
        ),
    };
    Ok(DockerApt { url, key })
}

/// The value of a `ValueEnum` setting (`--proxy`, `--docker-source`).
fn choice<T: clap::ValueEnum>(layers: &Layers, setting: &'static Setting) -> Result<T> {
    let value = layers.resolve(setting).expect("the table has a default");
    parse_as(&value, |v| {
        T::from_str(v, true).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
                .collect();
            format!("{v:?}: expected one of {}", names.join(", "))
        })
    })
}

/// Validates this run's flags and merges them with the site's saved record.
pub fn settings(args: &SiteArgs, record: Option<&SiteRecord>) -> Result<Settings> {
    settings_at(args, record, None)
}

/// As [`settings`], with errors about a remembered value naming `site_file`,
/// the file `record` was read from.
pub fn settings_at(
    args: &SiteArgs,
    record: Option<&SiteRecord>,
    site_file: Option<&Path>,
) -> Result<Settings> {
    let layers = args.layers(record, site_file);
    let value = |setting: &'static Setting| layers.resolve(setting).expect("a default");
    let hostname = hostname(args)?;
    let email = layers
        .resolve(&table::EMAIL)
        .context("--email is required on the first run (the first account's address)")?;
    let handle = layers
        .resolve(&table::HANDLE)
        .context("--handle is required on the first run (e.g. --handle alice)")?;
    let nomad_zip = readable_file(&layers, &table::NOMAD_ZIP)?;
    let nomad_release_key = readable_file(&layers, &table::NOMAD_RELEASE_KEY)?;
    let pds_image_archive = readable_file(&layers, &table::PDS_IMAGE_ARCHIVE)?;
    let acme_ca_root = readable_file(&layers, &table::ACME_CA_ROOT)?;
    if let Some(root) = &acme_ca_root {
        crate::steps::proxy::check_pem_roots(root)?;
    }
    let nomad_version = value(&table::NOMAD_VERSION);
    let version = nomad_version.one();
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
    {
        bail!(
            "{} {version:?}: expected a version like {}",
            nomad_version.origin,
            settings::NOMAD_VERSION
        );
    }
    // A local Nomad zip is checked here, before any connection: a file that is
    // no release must not get as far as creating the nomad user.
    let nomad_zip = match nomad_zip {
        Some(path) => {
            let key = crate::nomad::release::TrustedKey::load(nomad_release_key.as_deref())?;
            Some(crate::nomad::release::check_local_zip(
                &path, version, &key,
            )?)
        }
        None => None,
    };
    let pds_image = parse_as(&value(&table::PDS_IMAGE), str::parse::<ImageRef>)?.to_string();
    let plc_url = parse_as(&value(&table::PLC_URL), str::parse::<HttpUrl>)?.to_string();
    let timezone = parse_as(&value(&table::TIMEZONE), str::parse::<Timezone>)?.to_string();
    let io_image = parse_as(&value(&table::IO_IMAGE), str::parse::<ImageRef>)?.to_string();
    // It lands in shell commands and the IO job: a plain absolute path only.
    let io_config_dir = value(&table::IO_CONFIG_DIR);
    let dir = io_config_dir.one();
    if !dir.starts_with('/')
        || dir.split('/').any(|part| part == "..")
        || !dir
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c))
    {
        bail!(
            "{} {dir:?}: expected an absolute path on the droplet of letters, \
             digits, '/', '_', '.' and '-', without '..', e.g. {}",
            io_config_dir.origin,
            settings::IO_VOLUME_PATH
        );
    }
    let docker_apt = docker_apt(&layers)?;
    let (pds_env, pds_env_origin) = match layers.resolve(&table::PDS_ENV) {
        Some(Resolved { values, origin }) => (values, origin.of_entries()),
        None => (Vec::new(), table::PDS_ENV.flag.to_string()),
    };
    let pds_env = pds_env
        .iter()
        .map(|raw| crate::pds::env::parse_extra_from(raw, &pds_env_origin))
        .collect::<Result<Vec<_>>>()?;
    let mut keys: Vec<&str> = pds_env.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "{pds_env_origin} sets {} twice; give each name once",
            pair[0]
        );
    }
    // clap takes "true" or "false", from the flag or its variable.
    let confirm_email = value(&table::CONFIRM_EMAIL).one() == "true";
    let allow_exposed_api = value(&table::ALLOW_EXPOSED_API).one() == "true";
    let acme_ca = match layers.resolve(&table::ACME_CA) {
        Some(ca) => Some(parse_as(&ca, str::parse::<HttpUrl>)?.to_string()),
        None => None,
    };
    Ok(Settings {
        handle: parse_as(&handle, |h| Handle::parse(h, &hostname))?,
        email: parse_as(&email, str::parse::<Email>)?,
        hostname,
        proxy: choice(&layers, &table::PROXY)?,
        docker_source: choice(&layers, &table::DOCKER_SOURCE)?,
        docker_apt,
        nomad: NomadSource {
            version: version.to_string(),
            release_url: parse_as(&value(&table::NOMAD_RELEASE_URL), str::parse::<HttpUrl>)?
                .to_string(),
            zip: nomad_zip,
            release_key: nomad_release_key,
        },
        pds_image,
        pds_image_archive,
        plc_url,
        acme: Acme {
            ca: acme_ca,
            ca_root: acme_ca_root,
        },
        io: Io {
            image: io_image,
            config_dir: dir.to_string(),
            ingress_syntax: choice(&layers, &table::IO_INGRESS_SYNTAX)?,
        },
        confirm_email,
        allow_exposed_api,
        pds_env,
        timezone,
    })
}

/// The record saved for the next run: `previous` with every remembered
/// setting (the table's) set to this run's value.
pub fn record(settings: &Settings, previous: Option<SiteRecord>) -> SiteRecord {
    let mut site =
        toml::Table::try_from(previous.unwrap_or_default()).expect("a SiteRecord is a TOML table");
    site.insert(
        table::HOSTNAME.id.into(),
        settings.hostname.to_string().into(),
    );
    for setting in table::remembered() {
        match remembered_value(settings, setting) {
            Some(value) => site.insert(setting.id.into(), value),
            None => site.remove(setting.id),
        };
    }
    site.try_into()
        .expect("every remembered setting is a SiteRecord field of its type")
}

/// What `site.toml` keeps of a remembered setting, in the form its parser reads back.
fn remembered_value(settings: &Settings, setting: &'static Setting) -> Option<toml::Value> {
    let text = |s: &str| Some(toml::Value::String(s.to_string()));
    match setting.id {
        "email" => text(settings.email.as_str()),
        "handle" => match &settings.handle {
            // A domain of the user's own is saved as given; a name under the
            // hostname as the full handle (which parses back to itself).
            Handle::Custom { domain, .. } => text(domain),
            handle => text(handle.initial()),
        },
        "proxy" => text(&format!("{:?}", settings.proxy).to_lowercase()),
        "docker_apt_url" => text(&settings.docker_apt.url),
        "docker_apt_key" => settings
            .docker_apt
            .key
            .as_ref()
            .and_then(|k| text(&k.path.display().to_string())),
        "nomad_version" => text(&settings.nomad.version),
        "pds_image" => text(&settings.pds_image),
        "plc_url" => text(&settings.plc_url),
        "timezone" => text(&settings.timezone),
        "io_ingress_syntax" => text(&format!("{:?}", settings.io.ingress_syntax).to_lowercase()),
        "pds_env" => Some(toml::Value::Array(
            settings
                .pds_env
                .iter()
                .map(|(k, v)| format!("{k}={v}").into())
                .collect(),
        )),
        other => unreachable!("the remembered setting {other} has no saved form in record()"),
    }
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
        let saved = record(&settings(&first, None).unwrap(), None);
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
        let saved = record(&s, None);
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
    #[test]
    fn the_table_and_the_flags_agree() {
        let cmd = <Flags as clap::CommandFactory>::command();
        let mut flags: Vec<&str> = cmd
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| *id != "help")
            .collect();
        flags.sort_unstable();
        let mut ids: Vec<&str> = table::ALL.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        assert_eq!(
            flags, ids,
            "every site flag is in the table, and only those"
        );
        for setting in table::ALL {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == setting.id)
                .unwrap();
            assert_eq!(
                arg.get_long().map(|l| format!("--{l}")).as_deref(),
                Some(setting.flag)
            );
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                setting.env,
                "{}",
                setting.id
            );
            // A default clap shows in --help is the table's.
            if let [default] = arg.get_default_values() {
                assert_eq!(default.to_str(), setting.default, "{}", setting.id);
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert_eq!(
                help.contains("[remembered") || help.contains("; remembered"),
                setting.remembered,
                "{}'s help says whether it is remembered: {help}",
                setting.id
            );
        }
    }

    #[test]
    fn the_nomad_version_is_remembered() {
        let first = parse(&[
            "--hostname",
            "pds.example.com",
            "--email",
            "me@example.com",
            "--handle",
            "alice",
            "--nomad-version",
            "1.9.7",
        ]);
        let saved = record(&settings(&first, None).unwrap(), None);
        assert_eq!(saved.nomad_version.as_deref(), Some("1.9.7"));
        let later = settings(&parse(&["--hostname", "pds.example.com"]), Some(&saved)).unwrap();
        assert_eq!(later.nomad.version, "1.9.7");
        let flag = parse(&["--hostname", "pds.example.com", "--nomad-version", "1.10.5"]);
        assert_eq!(
            settings(&flag, Some(&saved)).unwrap().nomad.version,
            "1.10.5"
        );
    }

    /// Site args as clap would hand them over, each value from the flag or its variable.
    fn given(values: &[(&'static str, Given, &str)]) -> SiteArgs {
        let mut args = SiteArgs::default();
        for (id, from, value) in [
            ("hostname", Given::Flag, "pds.example.com"),
            ("email", Given::Flag, "a@b.co"),
            ("handle", Given::Flag, "bob"),
        ]
        .iter()
        .chain(values)
        {
            args.given.insert(id, (*from, vec![value.to_string()]));
        }
        args
    }

    #[test]
    fn an_error_says_where_the_value_came_from() {
        let site_file = Path::new("/state/sites/pds.example.com/site.toml");
        let bad_plc = SiteRecord {
            plc_url: Some("ftp://plc.example".into()),
            ..Default::default()
        };
        let bad_version = SiteRecord {
            nomad_version: Some("1.10 .5".into()),
            ..Default::default()
        };
        let bad_env = SiteRecord {
            pds_env: vec!["PDS_FOO=a\rb".into()],
            ..Default::default()
        };
        let flag = Given::Flag;
        let env = Given::Env;
        let cases: Vec<(SiteArgs, Option<&SiteRecord>, &str)> = vec![
            (given(&[("plc_url", flag, "ftp://x")]), None, "--plc-url: "),
            (
                given(&[("plc_url", env, "ftp://x")]),
                Some(&bad_plc),
                "PDSUP_PLC_URL: ",
            ),
            (
                given(&[]),
                Some(&bad_plc),
                "plc_url in /state/sites/pds.example.com/site.toml: ",
            ),
            (
                given(&[("nomad_version", env, "")]),
                None,
                "PDSUP_NOMAD_VERSION \"\": expected a version",
            ),
            (
                given(&[]),
                Some(&bad_version),
                "nomad_version in /state/sites/pds.example.com/site.toml \"1.10 .5\"",
            ),
            (
                given(&[("email", env, "me@")]),
                None,
                "PDSUP_EMAIL: invalid email",
            ),
            (
                given(&[("proxy", env, "nginx")]),
                None,
                "PDSUP_PROXY: \"nginx\": expected one of io, caddy",
            ),
            (
                given(&[]),
                Some(&bad_env),
                "invalid value for /state/sites/pds.example.com/site.toml pds_env PDS_FOO:",
            ),
            (
                given(&[("io_config_dir", env, "srv")]),
                None,
                "PDSUP_IO_CONFIG_DIR \"srv\": expected an absolute path",
            ),
            (
                given(&[("nomad_zip", env, "/nonexistent.zip")]),
                None,
                "PDSUP_NOMAD_ZIP /nonexistent.zip: cannot read it",
            ),
            (
                given(&[("docker_apt_url", env, "https://m.example/debian")]),
                None,
                "PDSUP_DOCKER_APT_URL \"https://m.example/debian\" ends with /debian",
            ),
        ];
        for (args, record, want) in cases {
            let err = format!(
                "{:#}",
                settings_at(&args, record, Some(site_file)).unwrap_err()
            );
            assert!(
                err.starts_with(want),
                "expected {want:?} at the start of {err:?}"
            );
        }
        // The default is named too, when it is what an error is about.
        let layers = given(&[]).layers(None, None);
        let image = layers.resolve(&table::PDS_IMAGE).unwrap();
        let err = parse_as(&image, |_| Err::<(), _>("refused")).unwrap_err();
        assert_eq!(err.to_string(), "default: refused");
    }

    #[test]
    fn a_flag_beats_the_site_file_and_the_environment_is_a_flag() {
        let saved = SiteRecord {
            timezone: Some("Europe/Berlin".into()),
            proxy: Some("caddy".into()),
            ..Default::default()
        };
        let cases = [
            (given(&[]), "Europe/Berlin", Proxy::Caddy),
            (
                given(&[("timezone", Given::Env, "Asia/Tokyo")]),
                "Asia/Tokyo",
                Proxy::Caddy,
            ),
            (
                given(&[
                    ("timezone", Given::Flag, "UTC"),
                    ("proxy", Given::Env, "io"),
                ]),
                "UTC",
                Proxy::Io,
            ),
        ];
        for (args, timezone, proxy) in cases {
            let s = settings(&args, Some(&saved)).unwrap();
            assert_eq!((s.timezone.as_str(), s.proxy), (timezone, proxy));
        }
        let defaults = settings(&given(&[]), None).unwrap();
        assert_eq!(
            (defaults.timezone.as_str(), defaults.proxy),
            ("UTC", Proxy::Io)
        );
    }

    /// The remembered part of `Settings`, comparable.
    fn remembered_part(s: &Settings) -> impl PartialEq + std::fmt::Debug {
        (
            s.email.as_str().to_string(),
            s.handle.clone(),
            s.proxy,
            s.nomad.version.clone(),
            s.pds_image.clone(),
            s.plc_url.clone(),
            s.docker_apt.clone(),
            s.timezone.clone(),
            s.pds_env.clone(),
            s.io.ingress_syntax,
        )
    }

    fn a_url() -> impl proptest::strategy::Strategy<Value = String> {
        "https?://[a-z]{1,8}(\\.[a-z]{2,5}){1,2}(:[1-9][0-9]{1,3})?(/[a-z0-9]{1,6}){0,2}"
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// Every remembered setting survives site.toml: render, parse, and a
        /// run with no flags resolves the same settings.
        #[test]
        fn remembered_settings_round_trip_through_site_toml(
            email in "[a-z][a-z0-9]{0,8}(\\.[a-z0-9]{1,4})?@[a-z]{1,8}\\.(com|org|co)",
            handle in proptest::prop_oneof!["[a-z][a-z0-9]{2,12}", "[a-z][a-z0-9]{2,8}\\.(com|net)"],
            proxy in proptest::prop_oneof!["io", "caddy"],
            io_ingress_syntax in proptest::prop_oneof!["ingress", "host"],
            nomad_version in "[0-9]\\.[0-9]{1,2}\\.[0-9]{1,2}(-rc[0-9])?",
            pds_image in "[a-z]{1,8}(\\.[a-z]{2,4}(:[0-9]{4})?)?/[a-z][a-z0-9]{0,4}(-[a-z0-9]{1,4})?:[0-9][0-9a-z]{0,4}(\\.[0-9]{1,2})?",
            plc_url in a_url(),
            docker_apt_url in a_url(),
            mirror_key in proptest::bool::ANY,
            timezone in proptest::prop_oneof!["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+3"],
            pds_env in proptest::collection::btree_map("PDS_[A-Z][A-Z0-9_]{0,10}", "[A-Za-z0-9:/@.=,;$ -]{0,16}", 0..4),
        ) {
            let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/docker-apt/mirror-key.asc");
            let mut args = vec![
                "--hostname".to_string(), "pds.example.com".into(),
                "--email".into(), email, "--handle".into(), handle,
                "--proxy".into(), proxy, "--nomad-version".into(), nomad_version,
                "--pds-image".into(), pds_image, "--plc-url".into(), plc_url,
                "--docker-apt-url".into(), docker_apt_url,
                "--timezone".into(), timezone,
                "--io-ingress-syntax".into(), io_ingress_syntax,
            ];
            if mirror_key {
                args.extend(["--docker-apt-key".to_string(), key.to_string()]);
            }
            for (k, v) in &pds_env {
                args.extend(["--pds-env".to_string(), format!("{k}={v}")]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let first = settings(&parse(&args), None).unwrap();
            let text = toml::to_string_pretty(&record(&first, None)).unwrap();
            let saved: SiteRecord = toml::from_str(&text).unwrap();
            saved.check(&first.hostname).unwrap();
            let later = settings(&parse(&["--hostname", "pds.example.com"]), Some(&saved)).unwrap();
            proptest::prop_assert_eq!(remembered_part(&later), remembered_part(&first), "{}", text);
            // And saving again changes nothing.
            proptest::prop_assert_eq!(record(&later, Some(saved.clone())), saved);
        }
    }
}
