//! The table of site settings and the one place their layers are merged.
//!
//! Every setting a run resolves is a [`Setting`] in [`ALL`]: its flag, its
//! environment variable, its default, and whether the site remembers it in
//! `site.toml`. A value is taken from the first layer that has it:
//!
//! 1. the flag (`--plc-url`), then its environment variable (`PDSUP_PLC_URL`);
//!    clap applies this order and reports which one it was;
//! 2. the site's `site.toml`, for remembered settings only;
//! 3. the table's default.
//!
//! Each value keeps its [`Origin`], so an error about it says where it came
//! from (`--plc-url`, `PDSUP_PLC_URL`, `plc_url in <path>/site.toml`, `default`),
//! as cargo's config does.
//!
//! **What is remembered.** A setting is remembered when it shapes what runs on
//! the droplet, so that a later run, or a rebuild on a new droplet, without the
//! flag deploys the same thing rather than the default: the first account
//! (email, handle), the proxy, the Nomad version, the PDS image, the PLC
//! directory, the time zone and the extra PDS environment (all in the PDS's or
//! Nomad's configuration), the syntax of IO's ingress block (it must suit the IO
//! image the site runs, which is pinned by digest in `site.toml` too), and
//! Docker's apt repository with its key (written to the droplet's apt sources).
//! Not remembered:
//! - where this run fetches bytes from, which does not change what is deployed
//!   (the release is checked against its signature either way):
//!   `--nomad-release-url`, `--nomad-release-key`, and local files given for
//!   one run (`--nomad-zip`, `--pds-image-archive`);
//! - `--docker-source`: it is read only while Docker is not installed yet;
//! - `--acme-ca`, `--acme-ca-root`: a test or staging CA that a later run
//!   forgets falls back to Caddy's public CAs, the safe direction;
//! - `--io-image`, `--io-config-dir`: kept as before (not remembered);
//! - `--confirm-email`: an action of the run that creates the account;
//! - `--hostname`: it names the site, and so the `site.toml` itself.

use std::collections::BTreeMap;
use std::fmt;

/// One setting: the clap argument, its environment variable and default, and
/// whether `site.toml` keeps it.
#[derive(Debug, PartialEq, Eq)]
pub struct Setting {
    /// The clap argument's id, which is also the setting's key in `site.toml`.
    pub id: &'static str,
    pub flag: &'static str,
    /// `None` for a list: one variable cannot hold several values without a
    /// separator the values themselves may contain.
    pub env: Option<&'static str>,
    pub default: Option<&'static str>,
    pub remembered: bool,
}

const fn setting(
    id: &'static str,
    flag: &'static str,
    env: &'static str,
    default: Option<&'static str>,
    remembered: bool,
) -> Setting {
    Setting {
        id,
        flag,
        env: Some(env),
        default,
        remembered,
    }
}

const REMEMBERED: bool = true;
const PER_RUN: bool = false;

pub const HOSTNAME: Setting = setting("hostname", "--hostname", "PDSUP_HOSTNAME", None, PER_RUN);
pub const EMAIL: Setting = setting("email", "--email", "PDSUP_EMAIL", None, REMEMBERED);
pub const HANDLE: Setting = setting("handle", "--handle", "PDSUP_HANDLE", None, REMEMBERED);
pub const PROXY: Setting = setting("proxy", "--proxy", "PDSUP_PROXY", Some("io"), REMEMBERED);
pub const DOCKER_SOURCE: Setting = setting(
    "docker_source",
    "--docker-source",
    "PDSUP_DOCKER_SOURCE",
    Some("docker"),
    PER_RUN,
);
pub const DOCKER_APT_URL: Setting = setting(
    "docker_apt_url",
    "--docker-apt-url",
    "PDSUP_DOCKER_APT_URL",
    Some(super::DOCKER_APT_URL),
    REMEMBERED,
);
/// Remembered with the URL it was given for: see `cli::args`.
pub const DOCKER_APT_KEY: Setting = setting(
    "docker_apt_key",
    "--docker-apt-key",
    "PDSUP_DOCKER_APT_KEY",
    None,
    REMEMBERED,
);
pub const NOMAD_VERSION: Setting = setting(
    "nomad_version",
    "--nomad-version",
    "PDSUP_NOMAD_VERSION",
    Some(super::NOMAD_VERSION),
    REMEMBERED,
);
pub const NOMAD_RELEASE_URL: Setting = setting(
    "nomad_release_url",
    "--nomad-release-url",
    "PDSUP_NOMAD_RELEASE_URL",
    Some(super::NOMAD_RELEASES),
    PER_RUN,
);
pub const NOMAD_ZIP: Setting =
    setting("nomad_zip", "--nomad-zip", "PDSUP_NOMAD_ZIP", None, PER_RUN);
pub const NOMAD_RELEASE_KEY: Setting = setting(
    "nomad_release_key",
    "--nomad-release-key",
    "PDSUP_NOMAD_RELEASE_KEY",
    None,
    PER_RUN,
);
pub const PDS_IMAGE: Setting = setting(
    "pds_image",
    "--pds-image",
    "PDSUP_PDS_IMAGE",
    Some(super::PDS_IMAGE),
    REMEMBERED,
);
pub const PDS_IMAGE_ARCHIVE: Setting = setting(
    "pds_image_archive",
    "--pds-image-archive",
    "PDSUP_PDS_IMAGE_ARCHIVE",
    None,
    PER_RUN,
);
pub const PLC_URL: Setting = setting(
    "plc_url",
    "--plc-url",
    "PDSUP_PLC_URL",
    Some(super::PLC_URL),
    REMEMBERED,
);
pub const ACME_CA: Setting = setting("acme_ca", "--acme-ca", "PDSUP_ACME_CA", None, PER_RUN);
pub const ACME_CA_ROOT: Setting = setting(
    "acme_ca_root",
    "--acme-ca-root",
    "PDSUP_ACME_CA_ROOT",
    None,
    PER_RUN,
);
pub const IO_IMAGE: Setting = setting(
    "io_image",
    "--io-image",
    "PDSUP_IO_IMAGE",
    Some(super::IO_IMAGE),
    PER_RUN,
);
pub const IO_CONFIG_DIR: Setting = setting(
    "io_config_dir",
    "--io-config-dir",
    "PDSUP_IO_CONFIG_DIR",
    Some(super::IO_VOLUME_PATH),
    PER_RUN,
);
/// Remembered: it must match the IO image the site runs (see `io_image_pin`).
pub const IO_INGRESS_SYNTAX: Setting = setting(
    "io_ingress_syntax",
    "--io-ingress-syntax",
    "PDSUP_IO_INGRESS_SYNTAX",
    Some("ingress"),
    REMEMBERED,
);
pub const CONFIRM_EMAIL: Setting = setting(
    "confirm_email",
    "--confirm-email",
    "PDSUP_CONFIRM_EMAIL",
    Some("false"),
    PER_RUN,
);
pub const ALLOW_EXPOSED_API: Setting = setting(
    "allow_exposed_api",
    "--allow-exposed-api",
    "PDSUP_ALLOW_EXPOSED_API",
    Some("false"),
    PER_RUN,
);
pub const PDS_ENV: Setting = Setting {
    id: "pds_env",
    flag: "--pds-env",
    env: None,
    default: None,
    remembered: REMEMBERED,
};
pub const TIMEZONE: Setting = setting(
    "timezone",
    "--timezone",
    "PDSUP_TIMEZONE",
    Some("UTC"),
    REMEMBERED,
);

/// Every site setting, in the order of `--help`.
pub const ALL: &[&Setting] = &[
    &HOSTNAME,
    &EMAIL,
    &HANDLE,
    &PROXY,
    &DOCKER_SOURCE,
    &DOCKER_APT_URL,
    &DOCKER_APT_KEY,
    &NOMAD_VERSION,
    &NOMAD_RELEASE_URL,
    &NOMAD_ZIP,
    &NOMAD_RELEASE_KEY,
    &PDS_IMAGE,
    &PDS_IMAGE_ARCHIVE,
    &PLC_URL,
    &ACME_CA,
    &ACME_CA_ROOT,
    &IO_IMAGE,
    &IO_CONFIG_DIR,
    &IO_INGRESS_SYNTAX,
    &CONFIRM_EMAIL,
    &ALLOW_EXPOSED_API,
    &PDS_ENV,
    &TIMEZONE,
];

/// The settings `site.toml` keeps.
pub fn remembered() -> impl Iterator<Item = &'static Setting> {
    ALL.iter().copied().filter(|s| s.remembered)
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    /// A remembered value: the key and the file (its path, or `site.toml`
    /// when the record was not read from a file).
    SiteFile {
        key: &'static str,
        file: String,
    },
    /// A fleet file's value for one site (`pdsup fleet`): the key and where
    /// it stands (`workshop.toml line 12`).
    Fleet {
        key: &'static str,
        at: String,
    },
    Default,
}

impl Origin {
    pub fn is_given(&self) -> bool {
        matches!(
            self,
            Origin::Flag(_) | Origin::Env(_) | Origin::Fleet { .. }
        )
    }

    /// The origin as a prefix of one entry's name in a list: `--pds-env`
    /// (then `PDS_FOO`), or `<file> pds_env` (then `PDS_FOO`).
    pub fn of_entries(&self) -> String {
        match self {
            Origin::SiteFile { key, file } => format!("{file} {key}"),
            Origin::Fleet { key, at } => format!("{at} {key}"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => f.write_str(flag),
            Origin::Env(var) => f.write_str(var),
            Origin::SiteFile { key, file } => write!(f, "{key} in {file}"),
            Origin::Fleet { key, at } => write!(f, "{key} in {at}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// Which of its two sources clap took a value from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Given {
    Flag,
    Env,
}

/// A setting's raw values (one, or a list's entries) and their origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub values: Vec<String>,
    pub origin: Origin,
}

impl Resolved {
    /// The value of a setting that takes one (the last, as clap's own).
    pub fn one(&self) -> &str {
        self.values.last().map(String::as_str).unwrap_or("")
    }
}

/// The layers a run's settings are resolved from.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// What clap found on the command line or in the environment, raw, by setting id.
    pub given: BTreeMap<&'static str, (Given, Vec<String>)>,
    /// A fleet file's values for this site (`pdsup fleet`), by setting id:
    /// below what was given to the run, above `site.toml`.
    pub fleet: BTreeMap<&'static str, Resolved>,
    /// The site's `site.toml`, by key.
    pub site: toml::Table,
    /// How errors name the site file.
    pub site_file: String,
}

impl Layers {
    /// The merge: flag or environment, then the fleet file, then the site
    /// file (remembered settings only), then the default. `None` when no
    /// layer has a value.
    pub fn resolve(&self, setting: &'static Setting) -> Option<Resolved> {
        self.chosen(setting)
            .or_else(|| self.remembered(setting))
            .or_else(|| {
                setting.default.map(|value| Resolved {
                    values: vec![value.to_string()],
                    origin: Origin::Default,
                })
            })
    }

    /// The value chosen for this run: given (flag, environment), else the fleet file's.
    pub fn chosen(&self, setting: &'static Setting) -> Option<Resolved> {
        self.given(setting)
            .or_else(|| self.fleet.get(setting.id).cloned())
    }

    /// The value given to this run, by flag or environment variable.
    pub fn given(&self, setting: &'static Setting) -> Option<Resolved> {
        let (given, values) = self.given.get(setting.id)?;
        let origin = match (given, setting.env) {
            (Given::Env, Some(var)) => Origin::Env(var),
            _ => Origin::Flag(setting.flag),
        };
        Some(Resolved {
            values: values.clone(),
            origin,
        })
    }

    /// The value `site.toml` remembers, if the setting is one it keeps.
    pub fn remembered(&self, setting: &'static Setting) -> Option<Resolved> {
        if !setting.remembered {
            return None;
        }
        let values = match self.site.get(setting.id)? {
            toml::Value::String(one) => vec![one.clone()],
            toml::Value::Array(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => return None,
        };
        Some(Resolved {
            values,
            origin: Origin::SiteFile {
                key: setting.id,
                file: self.site_file.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(given: &[(&'static str, Given, &str)], site: &str) -> Layers {
        Layers {
            given: given
                .iter()
                .map(|(id, from, v)| (*id, (*from, vec![v.to_string()])))
                .collect(),
            site: toml::from_str(site).unwrap(),
            site_file: "/state/sites/pds.example.com/site.toml".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_fleet_value_is_below_the_flag_and_above_the_site_file() {
        let mut l = layers(&[], "plc_url = \"http://site\"\n");
        let at = "workshop.toml line 7".to_string();
        l.fleet.insert(
            "plc_url",
            Resolved {
                values: vec!["http://fleet".into()],
                origin: Origin::Fleet { key: "plc_url", at },
            },
        );
        let r = l.resolve(&PLC_URL).unwrap();
        assert_eq!(
            (r.one(), r.origin.to_string().as_str()),
            ("http://fleet", "plc_url in workshop.toml line 7")
        );
        assert!(r.origin.is_given());
        assert_eq!(r.origin.of_entries(), "workshop.toml line 7 plc_url");
        l.given
            .insert("plc_url", (Given::Flag, vec!["http://flag".into()]));
        assert_eq!(l.resolve(&PLC_URL).unwrap().one(), "http://flag");
    }

    #[test]
    fn flag_beats_env_beats_site_beats_default() {
        let site = "plc_url = \"http://site\"\nio_image = \"site/io\"\n";
        let plc_flag = |from| layers(&[("plc_url", from, "http://given")], site);
        // (what, layers, setting, the value and its origin)
        type Case = (
            &'static str,
            Layers,
            &'static Setting,
            Option<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "flag",
                plc_flag(Given::Flag),
                &PLC_URL,
                Some(("http://given", "--plc-url")),
            ),
            (
                "environment",
                plc_flag(Given::Env),
                &PLC_URL,
                Some(("http://given", "PDSUP_PLC_URL")),
            ),
            (
                "site file",
                layers(&[], site),
                &PLC_URL,
                Some((
                    "http://site",
                    "plc_url in /state/sites/pds.example.com/site.toml",
                )),
            ),
            (
                "default",
                layers(&[], ""),
                &PLC_URL,
                Some((super::super::PLC_URL, "default")),
            ),
            // A per-run setting never comes from the site file, even if it is there.
            (
                "not remembered",
                layers(&[], site),
                &IO_IMAGE,
                Some((super::super::IO_IMAGE, "default")),
            ),
            ("no default", layers(&[], ""), &EMAIL, None),
            // A list has no environment variable: whatever clap says, it is the flag.
            (
                "list",
                layers(&[("pds_env", Given::Env, "PDS_A=1")], ""),
                &PDS_ENV,
                Some(("PDS_A=1", "--pds-env")),
            ),
        ];
        for (what, layers, setting, want) in cases {
            let got = layers.resolve(setting);
            let got = got.as_ref().map(|r| (r.one(), r.origin.to_string()));
            let want = want.map(|(v, o)| (v, o.to_string()));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_remembered_list_names_its_file_and_key_before_an_entry() {
        let l = layers(&[], "pds_env = [\"PDS_A=1\", \"PDS_B=2\"]\n");
        let r = l.resolve(&PDS_ENV).unwrap();
        assert_eq!(r.values, ["PDS_A=1", "PDS_B=2"]);
        assert_eq!(
            r.origin.of_entries(),
            "/state/sites/pds.example.com/site.toml pds_env"
        );
        assert!(!r.origin.is_given());
        assert_eq!(Origin::Flag("--pds-env").of_entries(), "--pds-env");
    }

    #[test]
    fn ids_are_unique_and_env_vars_are_pdsup_s() {
        let mut ids: Vec<&str> = ALL.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ALL.len());
        for s in ALL {
            assert_eq!(s.flag, format!("--{}", s.id.replace('_', "-")), "{s:?}");
            if let Some(var) = s.env {
                assert_eq!(var, format!("PDSUP_{}", s.id.to_uppercase()), "{s:?}");
            }
        }
    }
}
