//! The fleet file of `pdsup fleet`: one TOML file for a workshop's sites.
//!
//! ```toml
//! [settings]                  # shared: any of `up`'s settings, by their site.toml key
//! email = "organiser@example.com"
//! handle = "organiser"
//!
//! [[sites]]
//! hostname = "table1.workshop.example"
//! dest = "root@203.0.113.7"
//! timezone = "Europe/Berlin"  # an override for this site only
//!
//! [[sites.participants]]
//! handle = "alice"            # alice.table1.workshop.example
//! email = "alice@example.com"
//! display_name = "Alice"
//! ```
//!
//! The whole file is checked here, every problem with its line, before any
//! droplet is contacted. A site's values become one more layer of the
//! settings table (`table::Layers::fleet`): a site's own value, else the
//! shared one, above its `site.toml` and the defaults. Parsing is pure; the
//! values are checked by the same parsers as `up`'s flags when the command
//! line resolves each site's settings.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::table::{self, Origin, Resolved, Setting};
use crate::inputs::{Email, Handle, Hostname};

/// The relay's limit on accounts for a new PDS host: above it, a site's
/// accounts may not all be crawled until the host is trusted.
pub const RELAY_NEW_HOST_ACCOUNTS: usize = 100;

/// The settings whose values are files on this machine: relative paths are
/// read from the fleet file's directory.
const PATH_SETTINGS: &[&str] = &[
    "docker_apt_key",
    "nomad_zip",
    "nomad_release_key",
    "pds_image_archive",
    "acme_ca_root",
];
/// The settings that are switches (`true` / `false`).
const BOOL_SETTINGS: &[&str] = &["confirm_email", "allow_exposed_api"];

#[derive(Clone, Debug)]
pub struct Fleet {
    /// The file as the user named it, for messages.
    pub file: String,
    pub sites: Vec<FleetSite>,
    /// Nothing stops the run, but the organiser should know (never a secret).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct FleetSite {
    pub hostname: Hostname,
    /// The droplet, `[user@]host[:port]` or an ssh alias (parsed by the command line).
    pub dest: String,
    /// Where the site's table starts: `workshop.toml line 8`.
    pub at: String,
    /// The fleet's values for this site, by setting id (its own over the shared ones).
    pub values: BTreeMap<&'static str, Resolved>,
    pub participants: Vec<Participant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// The full handle the account is created with (`alice.table1.workshop.example`).
    pub handle: String,
    pub email: Email,
    pub display_name: Option<String>,
}

/// One thing wrong with the file, at a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

/// Every problem of a fleet file, in the order of the file.
#[derive(Debug, PartialEq, Eq)]
pub struct Problems {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}; nothing was contacted",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}:{}: {}", self.file, p.line, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl From<Problems> for crate::error::Error {
    fn from(p: Problems) -> Self {
        crate::error::Error::from_source(crate::error::ErrorKind::BadInput, p)
            .with_hint("fix the fleet file and run the same command again")
    }
}

/// Reads and checks a fleet file; relative file paths in it are taken from its directory.
pub fn load(path: &Path) -> crate::error::Result<Fleet> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::error::err!(
            BadInput,
            "cannot read the fleet file {}: {e}",
            path.display()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(parse(&text, &path.display().to_string(), base)?)
}

/// Checks the whole file: every problem is reported, each with its line.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Fleet, Problems> {
    let mut checker = Checker {
        text,
        file,
        base,
        problems: Vec::new(),
    };
    let fleet = checker.fleet();
    if checker.problems.is_empty() {
        Ok(fleet)
    } else {
        checker.problems.sort_by_key(|p| p.line);
        Err(Problems {
            file: file.to_string(),
            problems: checker.problems,
        })
    }
}

struct Checker<'t> {
    text: &'t str,
    file: &'t str,
    base: &'t Path,
    problems: Vec<Problem>,
}

type Entry<'a, 'i> = (
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
);

impl Checker<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = self.line(span);
        self.problems.push(Problem {
            line,
            message: message.into(),
        });
    }

    fn at(&self, span: Range<usize>) -> String {
        format!("{} line {}", self.file, self.line(span))
    }

    fn fleet(&mut self) -> Fleet {
        let mut fleet = Fleet {
            file: self.file.to_string(),
            sites: Vec::new(),
            warnings: Vec::new(),
        };
        let doc = match DeTable::parse(self.text) {
            Ok(doc) => doc,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                self.problem(span, format!("not valid TOML: {}", e.message().trim()));
                return fleet;
            }
        };
        let mut shared = BTreeMap::new();
        let mut sites = None;
        for (key, value) in doc.get_ref().iter() {
            match key.get_ref().as_ref() {
                "settings" => match value.get_ref() {
                    DeValue::Table(t) => shared = self.settings(t.iter(), &[]),
                    other => self.problem(
                        value.span(),
                        format!(
                            "settings must be a table ([settings]), not {}",
                            other.type_str()
                        ),
                    ),
                },
                "sites" => sites = Some(value),
                other => self.problem(
                    key.span(),
                    format!(
                        "unknown key {other:?}: a fleet file has [settings] and [[sites]] (with [[sites.participants]])"
                    ),
                ),
            }
        }
        let Some(sites) = sites else {
            self.problem(
                0..0,
                "no sites: add one [[sites]] table per droplet, with its hostname and dest",
            );
            return fleet;
        };
        let DeValue::Array(list) = sites.get_ref() else {
            self.problem(
                sites.span(),
                "sites must be an array of tables: one [[sites]] table per droplet",
            );
            return fleet;
        };
        if list.is_empty() {
            self.problem(
                sites.span(),
                "sites is empty: add one [[sites]] table per droplet",
            );
        }
        let mut hostnames: BTreeMap<String, usize> = BTreeMap::new();
        let mut dests: BTreeMap<String, usize> = BTreeMap::new();
        for site in list.iter() {
            let DeValue::Table(t) = site.get_ref() else {
                self.problem(
                    site.span(),
                    "each entry of sites must be a table ([[sites]])",
                );
                continue;
            };
            let line = self.line(site.span());
            if let Some(s) = self.site(t, site.span(), &shared) {
                if let Some(first) = hostnames.insert(s.hostname.to_string(), line) {
                    self.problem(
                        site.span(),
                        format!(
                            "the site {} is already at line {first}: each site once",
                            s.hostname
                        ),
                    );
                    continue;
                }
                if let Some(first) = dests.insert(s.dest.clone(), line) {
                    self.problem(
                        site.span(),
                        format!(
                            "dest {:?} is already the droplet of the site at line {first}: one site per droplet",
                            s.dest
                        ),
                    );
                    continue;
                }
                let accounts = s.participants.len() + 1;
                if accounts > RELAY_NEW_HOST_ACCOUNTS {
                    fleet.warnings.push(format!(
                        "{} will hold {accounts} accounts: a relay crawls at most {RELAY_NEW_HOST_ACCOUNTS} \
                         accounts of a new PDS host until the host is trusted; split the participants \
                         over more sites, or ask the relay's operator to raise the limit",
                        s.hostname
                    ));
                }
                fleet.sites.push(s);
            }
        }
        fleet
    }

    /// Setting values from a table's entries; keys in `also` belong to the
    /// caller and are skipped.
    fn settings<'a, 'i: 'a>(
        &mut self,
        entries: impl Iterator<Item = Entry<'a, 'i>>,
        also: &[&str],
    ) -> BTreeMap<&'static str, Resolved> {
        let mut values = BTreeMap::new();
        for (key, value) in entries {
            let name = key.get_ref().as_ref();
            if also.contains(&name) {
                continue;
            }
            let Some(setting) = table::ALL.iter().copied().find(|s| s.id == name) else {
                let more = if also.is_empty() {
                    String::new()
                } else {
                    format!("{}, or ", also.join(", "))
                };
                self.problem(
                    key.span(),
                    format!(
                        "unknown key {name:?}: expected {more}one of up's settings by its site.toml name ({})",
                        setting_names()
                    ),
                );
                continue;
            };
            if setting.id == table::HOSTNAME.id {
                self.problem(
                    key.span(),
                    "hostname names one site: give it in its [[sites]] table, not in [settings]",
                );
                continue;
            }
            if let Some(raw) = self.setting_values(setting, value) {
                let at = self.at(key.span());
                values.insert(
                    setting.id,
                    Resolved {
                        values: raw,
                        origin: Origin::Fleet {
                            key: setting.id,
                            at,
                        },
                    },
                );
            }
        }
        values
    }

    /// A setting's raw values, as its flag would take them.
    fn setting_values(
        &mut self,
        setting: &'static Setting,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<Vec<String>> {
        let id = setting.id;
        let is_list = setting.env.is_none();
        let is_bool = BOOL_SETTINGS.contains(&id);
        match value.get_ref() {
            DeValue::Boolean(b) if is_bool => Some(vec![b.to_string()]),
            DeValue::String(s) if !is_list && !is_bool => {
                let s = s.to_string();
                if PATH_SETTINGS.contains(&id) && !s.is_empty() && Path::new(&s).is_relative() {
                    Some(vec![self.base.join(&s).display().to_string()])
                } else {
                    Some(vec![s])
                }
            }
            DeValue::Array(items) if is_list => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        other => {
                            self.problem(
                                item.span(),
                                format!(
                                    "{id}: each entry must be a string like \"KEY=VALUE\", not {}",
                                    other.type_str()
                                ),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                let want = if is_list {
                    "a list of strings, e.g. [\"PDS_KEY=value\"]"
                } else if is_bool {
                    "true or false"
                } else {
                    "a string (in quotes)"
                };
                self.problem(
                    value.span(),
                    format!("{id} must be {want}, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn site(
        &mut self,
        t: &DeTable<'_>,
        span: Range<usize>,
        shared: &BTreeMap<&'static str, Resolved>,
    ) -> Option<FleetSite> {
        const OWN: &[&str] = &["hostname", "dest", "participants"];
        let before = self.problems.len();
        let hostname = match t.get("hostname") {
            None => {
                self.problem(
                    span.clone(),
                    "this site has no hostname (the PDS's DNS name)",
                );
                None
            }
            Some(v) => match v.get_ref() {
                DeValue::String(s) => match s.parse::<Hostname>() {
                    Ok(h) => Some(h),
                    Err(e) => {
                        self.problem(v.span(), format!("hostname: {e}"));
                        None
                    }
                },
                other => {
                    self.problem(
                        v.span(),
                        format!("hostname must be a string, not {}", other.type_str()),
                    );
                    None
                }
            },
        };
        let dest = match t.get("dest") {
            None => {
                self.problem(
                    span.clone(),
                    "this site has no dest (its droplet: [user@]host[:port] or an ssh alias)",
                );
                None
            }
            Some(v) => match v.get_ref() {
                DeValue::String(s)
                    if !s.trim().is_empty() && !s.chars().any(|c| c.is_whitespace()) =>
                {
                    Some(s.to_string())
                }
                DeValue::String(s) => {
                    self.problem(
                        v.span(),
                        format!(
                            "dest {s:?}: expected [user@]host[:port] or an ssh alias, without spaces"
                        ),
                    );
                    None
                }
                other => {
                    self.problem(
                        v.span(),
                        format!("dest must be a string, not {}", other.type_str()),
                    );
                    None
                }
            },
        };
        let mut values = shared.clone();
        values.extend(self.settings(t.iter(), OWN));
        let participants = match (&hostname, t.get("participants")) {
            (_, None) => Vec::new(),
            (Some(h), Some(list)) => self.participants(h, list, &values),
            (None, Some(_)) => Vec::new(),
        };
        if self.problems.len() > before {
            return None;
        }
        Some(FleetSite {
            hostname: hostname?,
            dest: dest?,
            at: self.at(span),
            values,
            participants,
        })
    }

    fn participants(
        &mut self,
        hostname: &Hostname,
        list: &Spanned<DeValue<'_>>,
        values: &BTreeMap<&'static str, Resolved>,
    ) -> Vec<Participant> {
        let DeValue::Array(items) = list.get_ref() else {
            self.problem(
                list.span(),
                "participants must be an array of tables: one [[sites.participants]] per person",
            );
            return Vec::new();
        };
        // The first account's handle, when the fleet gives it: no participant may take it.
        let first = values
            .get(table::HANDLE.id)
            .and_then(|h| Handle::parse(h.one(), hostname).ok())
            .map(|h| h.initial().to_string());
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for item in items.iter() {
            let DeValue::Table(t) = item.get_ref() else {
                self.problem(
                    item.span(),
                    "each participant must be a table ([[sites.participants]])",
                );
                continue;
            };
            if let Some(p) = self.participant(hostname, t, item.span()) {
                let line = self.line(item.span());
                if first.as_deref() == Some(p.handle.as_str()) {
                    self.problem(
                        item.span(),
                        format!(
                            "{} is the site's first account (handle in the settings): give the participant another handle",
                            p.handle
                        ),
                    );
                } else if let Some(at) = seen.insert(p.handle.clone(), line) {
                    self.problem(
                        item.span(),
                        format!(
                            "the handle {} is already the participant's at line {at}: one account per handle",
                            p.handle
                        ),
                    );
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    fn participant(
        &mut self,
        hostname: &Hostname,
        t: &DeTable<'_>,
        span: Range<usize>,
    ) -> Option<Participant> {
        let before = self.problems.len();
        for (key, _) in t.iter() {
            let name = key.get_ref().as_ref();
            if !["handle", "email", "display_name"].contains(&name) {
                self.problem(
                    key.span(),
                    format!("unknown key {name:?} for a participant: expected handle, email, display_name"),
                );
            }
        }
        let text = |this: &mut Self, key: &str| -> Option<(String, Range<usize>)> {
            let v = t.get(key)?;
            match v.get_ref() {
                DeValue::String(s) => Some((s.to_string(), v.span())),
                other => {
                    this.problem(
                        v.span(),
                        format!("{key} must be a string, not {}", other.type_str()),
                    );
                    None
                }
            }
        };
        let handle = match text(self, "handle") {
            Some((h, span)) => match Handle::parse(&h, hostname) {
                Ok(Handle::UnderHostname { full }) => Some(full),
                Ok(Handle::Custom { domain, .. }) => {
                    self.problem(
                        span,
                        format!(
                            "handle {domain:?}: a participant's handle is a name under the site's \
                             hostname (e.g. \"alice\" for alice.{hostname}); they can switch to a \
                             domain of their own later in the app"
                        ),
                    );
                    None
                }
                Err(e) => {
                    self.problem(span, e.to_string());
                    None
                }
            },
            None => {
                if t.get("handle").is_none() {
                    self.problem(span.clone(), "this participant has no handle");
                }
                None
            }
        };
        let email = match text(self, "email") {
            Some((e, span)) => match e.parse::<Email>() {
                Ok(e) => Some(e),
                Err(err) => {
                    self.problem(span, err.to_string());
                    None
                }
            },
            None => {
                if t.get("email").is_none() {
                    self.problem(span.clone(), "this participant has no email");
                }
                None
            }
        };
        let display_name = match text(self, "display_name") {
            Some((name, span)) => {
                // The Bluesky app's limit on a profile's display name.
                if name.chars().count() > 64 || name.chars().any(char::is_control) {
                    self.problem(
                        span,
                        "display_name: at most 64 characters, on one line".to_string(),
                    );
                }
                Some(name)
            }
            None => None,
        };
        if self.problems.len() > before {
            return None;
        }
        Some(Participant {
            handle: handle?,
            email: email?,
            display_name,
        })
    }
}

fn setting_names() -> String {
    let names: BTreeSet<&str> = table::ALL
        .iter()
        .map(|s| s.id)
        .filter(|id| *id != table::HOSTNAME.id)
        .collect();
    names.into_iter().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[settings]
email = "organiser@example.com"
handle = "organiser"
plc_url = "http://10.0.0.1:2582"
pds_env = ["PDS_CRAWLERS="]
nomad_zip = "release/nomad.zip"

[[sites]]
hostname = "t1.workshop.example"
dest = "root@203.0.113.7"
timezone = "Europe/Berlin"
plc_url = "http://10.0.0.2:2582"

[[sites.participants]]
handle = "alice"
email = "alice@example.com"
display_name = "Alice"

[[sites.participants]]
handle = "bob"
email = "bob@example.com"

[[sites]]
hostname = "t2.workshop.example"
dest = "root@203.0.113.8"
confirm_email = true
"#;

    fn problems(text: &str) -> Vec<(usize, String)> {
        match parse(text, "w.toml", Path::new("/fleet")) {
            Ok(_) => panic!("no problems found in:\n{text}"),
            Err(p) => p
                .problems
                .into_iter()
                .map(|p| (p.line, p.message))
                .collect(),
        }
    }

    /// The one problem of `text`: its line, and a part of its message.
    fn one_problem(text: &str, line: usize, part: &str) {
        let got = problems(text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, line, "{got:?}");
        assert!(got[0].1.contains(part), "{part:?} not in {:?}", got[0].1);
    }

    const SITE: &str = "[[sites]]\nhostname = \"t1.workshop.example\"\ndest = \"root@10.0.0.1\"\n";

    #[test]
    fn a_good_file_gives_each_site_its_values_over_the_shared_ones() {
        let fleet = parse(GOOD, "w.toml", Path::new("/fleet")).unwrap();
        assert_eq!(fleet.sites.len(), 2);
        assert!(fleet.warnings.is_empty());
        let t1 = &fleet.sites[0];
        assert_eq!(t1.hostname.as_str(), "t1.workshop.example");
        assert_eq!(t1.dest, "root@203.0.113.7");
        assert_eq!(t1.at, "w.toml line 9");
        let value = |s: &FleetSite, id: &str| s.values.get(id).map(|r| r.values.clone());
        assert_eq!(
            value(t1, "plc_url"),
            Some(vec!["http://10.0.0.2:2582".into()])
        );
        assert_eq!(
            t1.values["plc_url"].origin.to_string(),
            "plc_url in w.toml line 13"
        );
        assert_eq!(value(t1, "timezone"), Some(vec!["Europe/Berlin".into()]));
        assert_eq!(value(t1, "pds_env"), Some(vec!["PDS_CRAWLERS=".into()]));
        // A relative file is read from the fleet file's directory.
        assert_eq!(
            value(t1, "nomad_zip"),
            Some(vec!["/fleet/release/nomad.zip".into()])
        );
        assert_eq!(
            t1.participants,
            vec![
                Participant {
                    handle: "alice.t1.workshop.example".into(),
                    email: "alice@example.com".parse().unwrap(),
                    display_name: Some("Alice".into()),
                },
                Participant {
                    handle: "bob.t1.workshop.example".into(),
                    email: "bob@example.com".parse().unwrap(),
                    display_name: None,
                },
            ]
        );
        let t2 = &fleet.sites[1];
        assert_eq!(
            value(t2, "plc_url"),
            Some(vec!["http://10.0.0.1:2582".into()])
        );
        assert_eq!(
            t2.values["plc_url"].origin.to_string(),
            "plc_url in w.toml line 5"
        );
        assert_eq!(value(t2, "confirm_email"), Some(vec!["true".into()]));
        assert_eq!(value(t2, "timezone"), None);
        assert!(t2.participants.is_empty());
    }

    #[test]
    fn the_example_in_the_repository_is_a_good_fleet_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet.toml");
        let fleet = load(&path).unwrap();
        assert!(fleet.sites.len() >= 2);
        assert!(fleet.sites.iter().all(|s| !s.participants.is_empty()));
    }

    #[test]
    fn every_problem_of_the_file_is_reported_with_its_line() {
        let text = "[settings]\nproxy = 3\nfoo = \"x\"\n\n[[sites]]\nhostname = \"bad host\"\n";
        let got = problems(text);
        let lines: Vec<usize> = got.iter().map(|p| p.0).collect();
        assert_eq!(lines, vec![2, 3, 5, 6], "{got:?}");
        let shown = parse(text, "w.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            shown.starts_with(
                "w.toml has 4 problems; nothing was contacted\n  w.toml:2: proxy must be a string"
            ),
            "{shown}"
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        one_problem(
            "[settings]\nproxy = \"io\"\nemail = \n",
            3,
            "not valid TOML",
        );
    }

    #[test]
    fn the_file_s_shape_is_checked() {
        one_problem("", 1, "no sites");
        one_problem("sites = []\n", 1, "sites is empty");
        one_problem("sites = \"a\"\n", 1, "sites must be an array of tables");
        one_problem("sites = [1]\n", 1, "each entry of sites must be a table");
        one_problem(
            &format!("settings = 1\n{SITE}"),
            1,
            "settings must be a table",
        );
        one_problem(&format!("site = 1\n{SITE}"), 1, "unknown key \"site\"");
    }

    #[test]
    fn settings_are_up_s_by_name_and_type() {
        one_problem(
            &format!("[settings]\nplc = \"x\"\n{SITE}"),
            2,
            "unknown key \"plc\"",
        );
        one_problem(
            &format!("[settings]\nhostname = \"x.example\"\n{SITE}"),
            2,
            "hostname names one site",
        );
        one_problem(
            &format!("[settings]\nproxy = true\n{SITE}"),
            2,
            "proxy must be a string",
        );
        one_problem(
            &format!("[settings]\nconfirm_email = \"yes\"\n{SITE}"),
            2,
            "confirm_email must be true or false",
        );
        one_problem(
            &format!("[settings]\npds_env = \"A=1\"\n{SITE}"),
            2,
            "pds_env must be a list of strings",
        );
        one_problem(
            &format!("[settings]\npds_env = [\"A=1\", 2]\n{SITE}"),
            2,
            "each entry must be a string",
        );
        // An override in a site is checked the same way, and names the site's own keys.
        one_problem(
            &format!("{SITE}nomad_version = 1.1\n"),
            4,
            "nomad_version must be a string",
        );
        one_problem(
            &format!("{SITE}colour = \"red\"\n"),
            4,
            "expected hostname, dest, participants, or one of up's settings",
        );
    }

    #[test]
    fn a_site_needs_a_good_hostname_and_dest_once() {
        one_problem("[[sites]]\ndest = \"root@10.0.0.1\"\n", 1, "no hostname");
        one_problem("[[sites]]\nhostname = \"a.example\"\n", 1, "no dest");
        one_problem(
            "[[sites]]\nhostname = \"-a.example\"\ndest = \"d\"\n",
            2,
            "hostname:",
        );
        one_problem(
            "[[sites]]\nhostname = 1\ndest = \"d\"\n",
            2,
            "hostname must be a string",
        );
        one_problem(
            "[[sites]]\nhostname = \"a.example\"\ndest = \"root@ x\"\n",
            3,
            "without spaces",
        );
        one_problem(
            "[[sites]]\nhostname = \"a.example\"\ndest = 22\n",
            3,
            "dest must be a string",
        );
        one_problem(
            &format!("{SITE}[[sites]]\nhostname = \"t1.workshop.example\"\ndest = \"d2\"\n"),
            4,
            "the site t1.workshop.example is already at line 1",
        );
        one_problem(
            &format!(
                "{SITE}[[sites]]\nhostname = \"t2.workshop.example\"\ndest = \"root@10.0.0.1\"\n"
            ),
            4,
            "one site per droplet",
        );
    }

    #[test]
    fn participants_are_checked_one_by_one() {
        let p = |body: &str| format!("{SITE}[[sites.participants]]\n{body}");
        one_problem(
            &p("email = \"a@b.co\"\n"),
            4,
            "this participant has no handle",
        );
        one_problem(
            &p("handle = \"alice\"\n"),
            4,
            "this participant has no email",
        );
        one_problem(
            &p("handle = \"al\"\nemail = \"a@b.co\"\n"),
            5,
            "3 to 18 characters",
        );
        one_problem(
            &p("handle = \"alice.com\"\nemail = \"a@b.co\"\n"),
            5,
            "a name under the site's",
        );
        one_problem(&p("handle = \"alice\"\nemail = \"a@\"\n"), 6, "email");
        one_problem(
            &p("handle = 1\nemail = \"a@b.co\"\n"),
            5,
            "handle must be a string",
        );
        one_problem(
            &p("handle = \"alice\"\nemail = \"a@b.co\"\nage = 3\n"),
            7,
            "unknown key \"age\"",
        );
        one_problem(
            &p(&format!(
                "handle = \"alice\"\nemail = \"a@b.co\"\ndisplay_name = \"{}\"\n",
                "x".repeat(65)
            )),
            7,
            "at most 64 characters",
        );
        one_problem(
            &format!("{SITE}participants = 1\n"),
            4,
            "participants must be an array",
        );
        one_problem(
            &format!("{SITE}participants = [1]\n"),
            4,
            "each participant must be a table",
        );
        let twice = p("handle = \"alice\"\nemail = \"a@b.co\"\n[[sites.participants]]\nhandle = \"Alice\"\nemail = \"c@b.co\"\n");
        one_problem(&twice, 7, "already the participant's at line 4");
        let first = format!(
            "[settings]\nhandle = \"org\"\n{}",
            p("handle = \"org\"\nemail = \"a@b.co\"\n")
        );
        one_problem(&first, 6, "the site's first account");
    }

    #[test]
    fn more_accounts_than_a_relay_takes_from_a_new_host_is_a_warning() {
        let mut text = SITE.to_string();
        for i in 0..RELAY_NEW_HOST_ACCOUNTS {
            text.push_str(&format!(
                "[[sites.participants]]\nhandle = \"user{i:03}\"\nemail = \"u{i}@example.com\"\n"
            ));
        }
        let fleet = parse(&text, "w.toml", Path::new("/")).unwrap();
        assert_eq!(fleet.warnings.len(), 1);
        assert!(
            fleet.warnings[0].contains("101 accounts"),
            "{:?}",
            fleet.warnings
        );
    }
}
