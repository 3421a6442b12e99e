//! User input, validated before anything on the droplet changes.
//!
//! Each type can only be built through its parser, so a `Hostname` in hand is a
//! valid DNS name, a `Handle` a valid atproto handle, and so on. Errors say what is
//! wrong and what a valid value looks like.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    #[error("invalid hostname {0:?}: {1}. Use the DNS name the PDS will answer on, e.g. pds.example.com")]
    Hostname(String, &'static str),
    #[error("invalid handle {0:?}: {1}")]
    Handle(String, String),
    #[error(
        "invalid email {0:?}: {1}. The first account needs a working address, e.g. me@example.com"
    )]
    Email(String, String),
    #[error(
        "invalid time zone {0:?}: {1}. Use a zone name like Europe/Berlin, America/New_York or UTC"
    )]
    Timezone(String, &'static str),
    #[error("invalid URL {0:?}: {1}. Use an http:// or https:// URL")]
    Url(String, String),
    #[error("invalid image reference {0:?}: {1}. Use a Docker image reference like ghcr.io/bluesky-social/pds:0.4")]
    Image(String, String),
    #[error("invalid value for {0}: {1}")]
    Text(String, &'static str),
}

/// Refuses what no value spliced into a file or a command line may hold: control
/// characters (newline, carriage return, NUL, tab, escape, ...). `what` names
/// the value in the error.
pub fn check_one_line(what: &str, value: &str) -> Result<(), InputError> {
    if value.contains('\n') || value.contains('\r') {
        return Err(InputError::Text(
            what.to_string(),
            "it contains a line break; values must be on one line",
        ));
    }
    if value.contains('\0') {
        return Err(InputError::Text(what.to_string(), "it contains a NUL byte"));
    }
    if value.chars().any(char::is_control) {
        return Err(InputError::Text(
            what.to_string(),
            "it contains a control character (tab, escape, ...)",
        ));
    }
    Ok(())
}

/// The PDS's public DNS name (`PDS_HOSTNAME`), lowercase.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Hostname {
    type Err = InputError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = |why| InputError::Hostname(raw.to_string(), why);
        let name = raw.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err(err("it is empty"));
        }
        if name.contains("://") || name.contains('/') {
            return Err(err("give the bare name, without scheme or path"));
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Err(err("an IP address cannot get TLS certificates or handles"));
        }
        if name.len() > 253 {
            return Err(err("it is longer than 253 characters"));
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return Err(err("it needs at least two labels"));
        }
        for label in &labels {
            check_label(label).map_err(err)?;
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(err("the last label cannot be all digits"));
        }
        Ok(Hostname(name))
    }
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("it has an empty label (two dots in a row?)");
    }
    if label.len() > 63 {
        return Err("a label is longer than 63 characters");
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("only letters, digits, '-' and '.' are allowed");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label cannot start or end with '-'");
    }
    Ok(())
}

/// The first account's handle, resolved against the hostname.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handle {
    /// `alice.pds.example.com`: under the PDS hostname, served by the wildcard record.
    UnderHostname { full: String },
    /// `alice.com`: the account is created as `<label>.<hostname>` and the user
    /// switches to the custom domain once its `_atproto` TXT record resolves.
    Custom { domain: String, initial: String },
}

impl Handle {
    /// Parses `--handle`: a bare label (`alice`) or a full handle.
    pub fn parse(raw: &str, hostname: &Hostname) -> Result<Self, InputError> {
        let err = |why: &str| InputError::Handle(raw.to_string(), why.to_string());
        let lower = raw.trim().trim_start_matches('@').to_ascii_lowercase();
        let suffix = format!(".{}", hostname.as_str());
        let label = if !lower.contains('.') {
            lower.clone()
        } else if let Some(label) = lower.strip_suffix(&suffix) {
            label.to_string()
        } else {
            let domain: Hostname = lower.parse().map_err(|_| {
                err("a custom-domain handle must be a valid domain name, e.g. alice.com")
            })?;
            let first = domain.as_str().split('.').next().unwrap_or_default();
            let initial = format!("{}.{}", short_label(first).map_err(|w| err(&w))?, hostname);
            return Ok(Handle::Custom {
                domain: domain.0,
                initial,
            });
        };
        let label = short_label(&label).map_err(|w| err(&w))?;
        Ok(Handle::UnderHostname {
            full: format!("{label}.{hostname}"),
        })
    }

    /// The handle the account is created with.
    pub fn initial(&self) -> &str {
        match self {
            Handle::UnderHostname { full } => full,
            Handle::Custom { initial, .. } => initial,
        }
    }
}

/// A handle label under the hostname: one DNS label of 3 to 18 characters (the PDS's rule).
fn short_label(label: &str) -> Result<String, String> {
    if label.contains('.') {
        return Err(format!(
            "{label:?} has dots; a handle under the hostname is one label"
        ));
    }
    if !(3..=18).contains(&label.len()) {
        return Err(format!(
            "the name before the hostname must be 3 to 18 characters, {label:?} has {}",
            label.len()
        ));
    }
    check_label(label).map_err(|w| w.to_string())?;
    Ok(label.to_string())
}

/// The first account's email address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = InputError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let parsed = email_address::EmailAddress::parse_with_options(
            raw.trim(),
            email_address::Options::default().without_display_text(),
        )
        .map_err(|e| InputError::Email(raw.to_string(), e.to_string()))?;
        let address = parsed.email();
        // Quoted local parts (`"a b"@x.y`) are valid mail but end up in a
        // Caddyfile and in logs: only plain addresses are accepted.
        if address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "\"\\{}`$;'".contains(c))
        {
            return Err(InputError::Email(
                raw.to_string(),
                "only plain addresses are accepted (no spaces, quotes, braces or control characters)"
                    .into(),
            ));
        }
        if !parsed.domain().contains('.') {
            return Err(InputError::Email(
                raw.to_string(),
                "the domain has no dot".into(),
            ));
        }
        Ok(Email(address))
    }
}

/// The PDS's time zone (`TZ`): `UTC` or an IANA zone name such as
/// `Europe/Berlin` or `America/Argentina/Buenos_Aires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timezone(String);

impl Timezone {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Timezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Timezone {
    type Err = InputError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = |why| InputError::Timezone(raw.to_string(), why);
        if raw.is_empty() {
            return Err(err("it is empty"));
        }
        if raw.len() > 64 {
            return Err(err("it is longer than 64 characters"));
        }
        // The shape of the tz database's names: letters first in each part, then
        // letters, digits, '_', '-', '+' (Etc/GMT+3, EST5EDT).
        for part in raw.split('/') {
            let mut chars = part.chars();
            if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) {
                return Err(err("each part must start with a letter"));
            }
            if !chars.all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c)) {
                return Err(err(
                    "only letters, digits, '_', '-', '+' and '/' between parts are allowed",
                ));
            }
        }
        Ok(Timezone(raw.to_string()))
    }
}

/// An `http://` or `https://` URL with a host, normalised (no trailing `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HttpUrl {
    type Err = InputError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| InputError::Url(raw.to_string(), why.to_string());
        check_one_line("the URL", raw).map_err(|e| err(&e.to_string()))?;
        if raw.contains(char::is_whitespace) {
            return Err(err("it contains spaces"));
        }
        let url = reqwest::Url::parse(raw).map_err(|e| err(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err("only http:// and https:// are supported"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(err("it has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "credentials in the URL would be copied into files; leave them out",
            ));
        }
        if url.fragment().is_some() {
            return Err(err("a #fragment has no meaning here"));
        }
        // The serialised form percent-encodes quotes, braces and spaces, so it
        // can go into a Caddyfile or an env file as one word.
        Ok(HttpUrl(url.as_str().trim_end_matches('/').to_string()))
    }
}

/// A Docker image reference (`[registry[:port]/]path[:tag][@digest]`), checked
/// against the grammar of the distribution project's `reference` package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef(String);

impl ImageRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ImageRef {
    type Err = InputError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| InputError::Image(raw.to_string(), why.to_string());
        if raw.is_empty() {
            return Err(err("it is empty"));
        }
        if raw.len() > 255 {
            return Err(err("it is longer than 255 characters"));
        }
        let (name_tag, digest) = match raw.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (raw, None),
        };
        if let Some(digest) = digest {
            check_digest(digest).map_err(err)?;
        }
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(err)?;
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        // The first part is a registry when it looks like one (a dot, a port or localhost).
        if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            check_registry(parts.remove(0)).map_err(err)?;
        }
        for part in parts {
            check_path_component(part).map_err(err)?;
        }
        Ok(ImageRef(raw.to_string()))
    }
}

fn check_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err("the registry port must be digits");
        }
    }
    if host.is_empty() {
        return Err("the registry name is empty");
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("the registry must be a host name, optionally with :port");
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(part: &str) -> Result<(), &'static str> {
    const WHY: &str =
        "each path part is lowercase letters and digits, separated by '.', '_', '__' or '-'";
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(WHY);
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(WHY);
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok
        || tag.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(
            "the tag is up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
        );
    }
    Ok(())
}

/// `algorithm:hex`, e.g. `sha256:` and 64 hex digits.
fn check_digest(digest: &str) -> Result<(), &'static str> {
    const WHY: &str = "the digest must look like sha256:<64 hex digits>";
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(WHY);
    };
    let algorithm_ok = algorithm.starts_with(|c: char| c.is_ascii_alphabetic())
        && algorithm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c));
    if !algorithm_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(WHY);
    }
    Ok(())
}

impl From<InputError> for crate::error::Error {
    fn from(e: InputError) -> Self {
        crate::error::Error::from_source(crate::error::ErrorKind::BadInput, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Hostname {
        "pds.example.com".parse().unwrap()
    }

    #[test]
    fn hostnames() {
        assert_eq!(host().as_str(), "pds.example.com");
        assert_eq!(
            "PDS.Example.COM.".parse::<Hostname>().unwrap().as_str(),
            "pds.example.com"
        );
        for bad in [
            "",
            "localhost",
            "https://pds.example.com",
            "pds..example.com",
            "-pds.example.com",
            "pds_1.example.com",
            "203.0.113.7",
            "pds.example.123",
        ] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn handles() {
        let h = host();
        assert_eq!(
            Handle::parse("alice", &h).unwrap().initial(),
            "alice.pds.example.com"
        );
        assert_eq!(
            Handle::parse("@Alice.pds.example.com", &h)
                .unwrap()
                .initial(),
            "alice.pds.example.com"
        );
        assert_eq!(
            Handle::parse("alice.com", &h).unwrap(),
            Handle::Custom {
                domain: "alice.com".into(),
                initial: "alice.pds.example.com".into()
            }
        );
        for bad in [
            "al",
            "a_b",
            "averyveryverylongname1",
            "x.y.pds.example.com",
            "-bob",
        ] {
            assert!(Handle::parse(bad, &h).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            "me@example.com".parse::<Email>().unwrap().as_str(),
            "me@example.com"
        );
        for bad in [
            "",
            "me",
            "me@",
            "@example.com",
            "me@localhost",
            "Me <me@example.com>",
        ] {
            assert!(bad.parse::<Email>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn emails_with_quotes_or_control_characters_are_refused() {
        for bad in [
            "\"a\nb\"@example.com",
            "\"a b\"@example.com",
            "me@exa\nmple.com",
            "m\u{1b}e@example.com",
            "\"x}\"@example.com",
        ] {
            assert!(bad.parse::<Email>().is_err(), "{bad:?} should be refused");
        }
        // Surrounding whitespace (a pasted line) is trimmed, never kept.
        assert_eq!(
            " me@example.com\n".parse::<Email>().unwrap().as_str(),
            "me@example.com"
        );
    }

    #[test]
    fn one_line_values() {
        assert!(check_one_line("x", "a b \"'$`#=").is_ok());
        for bad in ["a\nb", "a\rb", "a\0b", "a\tb", "a\u{7f}b", "a\u{85}b"] {
            let err = check_one_line("--pds-env PDS_X", bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--pds-env PDS_X"), "{err}");
        }
    }

    #[test]
    fn timezones() {
        for good in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+3",
            "EST5EDT",
            "America/Port-au-Prince",
        ] {
            assert_eq!(good.parse::<Timezone>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Europe/ Berlin",
            "Europe/Berlin\nPDS_JWT_SECRET=x",
            "../etc/passwd",
            "/Europe/Berlin",
            "Europe//Berlin",
            "UTC\"",
            "$(reboot)",
            "Europe/Berlin ",
        ] {
            assert!(
                bad.parse::<Timezone>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn urls() {
        let url = |s: &str| s.parse::<HttpUrl>().map(|u| u.as_str().to_string());
        assert_eq!(
            url("https://plc.directory").unwrap(),
            "https://plc.directory"
        );
        assert_eq!(
            url("https://plc.directory/").unwrap(),
            "https://plc.directory"
        );
        assert_eq!(
            url("http://10.213.0.1:2582").unwrap(),
            "http://10.213.0.1:2582"
        );
        assert_eq!(
            url("https://10.213.0.1:14000/dir").unwrap(),
            "https://10.213.0.1:14000/dir"
        );
        for bad in [
            "",
            "plc.directory",
            "ftp://plc.directory",
            "file:///etc/passwd",
            "https://",
            "https://plc.directory\nPDS_JWT_SECRET=x",
            "https://plc.directory }",
            "https://user:pw@plc.directory",
            "https://plc.directory/#x",
        ] {
            assert!(url(bad).is_err(), "{bad:?} should be refused");
        }
        // What is left is one word: no quotes, braces or spaces survive.
        let odd = url("https://example.com/a\"b{c}").unwrap();
        assert!(!odd.contains(['"', '{', '}', ' ']), "{odd}");
    }

    #[test]
    fn image_references() {
        for good in [
            "ghcr.io/bluesky-social/pds:0.4",
            "agentio/io:latest",
            "pds",
            "localhost:5000/pds:dev",
            "10.213.0.1:5000/a/b_c/d__e/f-g/h.i:v1.2-rc_3",
            "example/pds@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "example/pds:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(good.parse::<ImageRef>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Example/pds",
            "example/pds:",
            "example/pds:-x",
            "example//pds",
            "example/pds:1 2",
            "example/pds\n",
            "example/pds;reboot",
            "example/pds@sha256:xyz",
            "example/pds:1\"",
            "-example/pds",
            "example/pds.",
            "example/a___b",
            "exa mple/pds",
        ] {
            assert!(
                bad.parse::<ImageRef>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
