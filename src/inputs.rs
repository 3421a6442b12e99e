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
        if !parsed.domain().contains('.') {
            return Err(InputError::Email(
                raw.to_string(),
                "the domain has no dot".into(),
            ));
        }
        Ok(Email(parsed.email()))
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
}
