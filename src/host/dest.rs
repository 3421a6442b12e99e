//! Where to connect: the `DEST` the user typed ([`Destination`]) and what it
//! resolves to once `~/.ssh/config` is applied ([`Target`]).
//!
//! Precedence follows OpenSSH: what the user typed (`user@`, `:port`) wins over
//! the ssh config, which wins over the defaults (user `root`, port 22). The
//! config is read with `ssh2-config` (Host patterns, HostName, User, Port,
//! IdentityFile); options it does not know are ignored, not errors, because a
//! user's config is written for OpenSSH, not for us.

use std::fmt;
use std::io::BufReader;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Context, Result};
use ssh2_config::{ParseRule, SshConfig};

pub const DEFAULT_USER: &str = "root";
pub const DEFAULT_PORT: u16 = 22;

/// What the user typed: `[user@]host[:port]`, `[user@][v6addr]:port`, or a
/// bare alias from `~/.ssh/config`. Nothing is looked up yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub user: Option<String>,
    /// A host name, an IP address (IPv6 without brackets) or an ssh config alias.
    pub host: String,
    pub port: Option<u16>,
}

/// Why a `DEST` did not parse. The message always shows valid examples.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid destination `{input}`: {reason}.\n\
     A destination is [user@]host[:port], [user@][ipv6-address]:port, or a Host alias from \
     ~/.ssh/config, for example root@203.0.113.7, admin@pds.example.com:2222, \
     root@[2001:db8::7]:22 or my-droplet"
)]
pub struct DestinationError {
    pub input: String,
    pub reason: String,
}

impl FromStr for Destination {
    type Err = DestinationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| DestinationError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(fail("it is empty"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("it contains whitespace"));
        }
        if input.contains("://") {
            return Err(fail("URLs are not accepted, give the host only"));
        }
        let (user, rest) = match input.rsplit_once('@') {
            Some((user, rest)) => {
                if user.is_empty() {
                    return Err(fail("the user before `@` is empty"));
                }
                if user.contains([':', '/', '[', ']']) || user.starts_with('-') {
                    return Err(fail(&format!("`{user}` is not a valid user name")));
                }
                (Some(user.to_string()), rest)
            }
            None => (None, input),
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (inside, after) = bracketed
                .split_once(']')
                .ok_or_else(|| fail("`[` without a closing `]`"))?;
            if inside.parse::<Ipv6Addr>().is_err() {
                return Err(fail(&format!("`{inside}` is not an IPv6 address")));
            }
            let port = match after {
                "" => None,
                _ => {
                    let port = after
                        .strip_prefix(':')
                        .ok_or_else(|| fail("only `:port` may follow `]`"))?;
                    Some(parse_port(port).map_err(|r| fail(&r))?)
                }
            };
            (inside.to_string(), port)
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 address: its colons are not a port separator.
            if rest.parse::<Ipv6Addr>().is_err() {
                return Err(fail(
                    "too many `:` (write an IPv6 address with a port as [address]:port)",
                ));
            }
            (rest.to_string(), None)
        } else if let Some((host, port)) = rest.split_once(':') {
            (
                host.to_string(),
                Some(parse_port(port).map_err(|r| fail(&r))?),
            )
        } else {
            (rest.to_string(), None)
        };
        if host.is_empty() {
            return Err(fail("the host is empty"));
        }
        if !host.contains(':') {
            check_host_name(&host).map_err(|r| fail(&r))?;
        }
        Ok(Destination { user, host, port })
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{port}` is not a port number (1-65535)")),
        Ok(p) => Ok(p),
    }
}

/// Host names, IPv4 addresses and ssh config aliases: letters, digits and `.-_`.
fn check_host_name(host: &str) -> Result<(), String> {
    if host.starts_with('-') {
        return Err(format!("`{host}` starts with `-`"));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("`{bad}` is not allowed in a host name"));
    }
    Ok(())
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(port)) => write!(f, "[{}]:{port}", self.host),
            (false, Some(port)) => write!(f, "{}:{port}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

/// A destination with the ssh config applied: everything needed to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host as the user typed it (an alias or the address itself).
    pub alias: String,
    pub user: String,
    /// The address to connect to (after `HostName`), IPv6 without brackets.
    pub host: String,
    pub port: u16,
    /// `IdentityFile` entries from the ssh config, in order, `~` expanded.
    pub identity_files: Vec<PathBuf>,
}

impl Target {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Target {
    /// `root@203.0.113.7:22`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.address())
    }
}

/// Applies the ssh config to `dest`. `ssh_config` is the `--ssh-config` file
/// (it must exist); `None` reads `~/.ssh/config` when there is one.
pub fn resolve(dest: &Destination, ssh_config: Option<&Path>) -> Result<Target> {
    resolve_in(dest, ssh_config, dirs::home_dir().as_deref())
}

/// [`resolve`] with an explicit home directory (for `~` in the config and the
/// default `~/.ssh/config`), so that tests do not depend on the real one.
pub fn resolve_in(
    dest: &Destination,
    ssh_config: Option<&Path>,
    home: Option<&Path>,
) -> Result<Target> {
    let config = match ssh_config {
        Some(path) => Some(read_config(path, home)?),
        None => match home.map(|h| h.join(".ssh").join("config")) {
            Some(path) if path.exists() => Some(read_config(&path, home)?),
            _ => None,
        },
    };
    let params = config.map(|c| c.query(&dest.host));
    if let Some(p) = &params {
        if p.proxy_jump.is_some() || p.unsupported_fields.contains_key("proxycommand") {
            log::warn!(
                "{}: ProxyJump/ProxyCommand in the ssh config is not supported; connecting directly",
                dest.host
            );
        }
    }
    let (host_name, user, port, identity_files) = match params {
        Some(p) => (p.host_name, p.user, p.port, p.identity_file),
        None => (None, None, None, None),
    };
    let host = host_name
        // OpenSSH's `%h` token in HostName stands for the name given on the command line.
        .map(|h| h.replace("%h", &dest.host))
        .unwrap_or_else(|| dest.host.clone());
    Ok(Target {
        alias: dest.host.clone(),
        user: dest
            .user
            .clone()
            .or(user)
            .unwrap_or_else(|| DEFAULT_USER.to_string()),
        host,
        port: dest.port.or(port).unwrap_or(DEFAULT_PORT),
        identity_files: identity_files.unwrap_or_default(),
    })
}

fn read_config(path: &Path, home: Option<&Path>) -> Result<SshConfig> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the ssh config {}", path.display()))?;
    let mut config = SshConfig::default();
    if let Some(home) = home {
        config = config.home_dir(home);
    }
    config
        .parse(
            &mut BufReader::new(file),
            ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map_err(|e| crate::error::Error::from_source(crate::error::ErrorKind::BadInput, e))
        .with_context(|| format!("cannot parse the ssh config {}", path.display()))
}

impl From<DestinationError> for crate::error::Error {
    fn from(e: DestinationError) -> Self {
        crate::error::Error::from_source(crate::error::ErrorKind::BadInput, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(user: Option<&str>, host: &str, port: Option<u16>) -> Destination {
        Destination {
            user: user.map(String::from),
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn parses_valid_destinations() {
        let cases = [
            ("203.0.113.7", dest(None, "203.0.113.7", None)),
            ("root@203.0.113.7", dest(Some("root"), "203.0.113.7", None)),
            (
                "admin@pds.example.com:2222",
                dest(Some("admin"), "pds.example.com", Some(2222)),
            ),
            (
                "pds.example.com:22",
                dest(None, "pds.example.com", Some(22)),
            ),
            ("my-droplet", dest(None, "my-droplet", None)),
            ("my_droplet.1", dest(None, "my_droplet.1", None)),
            (
                "root@[2001:db8::7]:2200",
                dest(Some("root"), "2001:db8::7", Some(2200)),
            ),
            ("[2001:db8::7]", dest(None, "2001:db8::7", None)),
            ("2001:db8::7", dest(None, "2001:db8::7", None)),
            ("ubuntu@::1", dest(Some("ubuntu"), "::1", None)),
            ("a.b@host", dest(Some("a.b"), "host", None)),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Destination>(), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_invalid_destinations_with_examples() {
        let cases = [
            ("", "empty"),
            ("@host", "user before `@` is empty"),
            ("root@", "host is empty"),
            ("root@host:", "not a port number"),
            ("root@host:0", "not a port number"),
            ("root@host:65536", "not a port number"),
            ("root@host:ssh", "not a port number"),
            ("root@[2001:db8::7", "without a closing"),
            ("root@[2001:db8::7]2200", "only `:port`"),
            ("root@[not-v6]:22", "not an IPv6 address"),
            ("root@a:b:c", "too many `:`"),
            ("ssh://root@host", "URLs"),
            ("root@host name", "whitespace"),
            ("root@-oProxyCommand=x", "starts with `-`"),
            ("root@host/path", "`/` is not allowed"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Destination>().unwrap_err();
            assert!(err.reason.contains(reason), "{input}: {}", err.reason);
            let message = err.to_string();
            assert!(message.contains("[user@]host[:port]"), "{message}");
            assert!(message.contains(&format!("`{input}`")), "{message}");
        }
    }

    #[test]
    fn displays_like_it_parses() {
        for input in [
            "root@203.0.113.7:22",
            "root@[2001:db8::7]:2200",
            "alias",
            "::1",
        ] {
            let d: Destination = input.parse().unwrap();
            assert_eq!(d.to_string(), input);
        }
    }

    fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const CONFIG: &str = "\
Host pds
    HostName 198.51.100.4
    User admin
    Port 2200
    IdentityFile ~/.ssh/pds_key
    ForwardX11 no

Host *.lab
    User ubuntu
    HostName %h.internal

Host *
    IdentityFile /keys/fallback
    SomeFutureOption yes
";

    #[test]
    fn applies_config_alias() {
        let (dir, path) = config(CONFIG);
        let home = dir.path();
        let t = resolve_in(&"pds".parse().unwrap(), Some(&path), Some(home)).unwrap();
        assert_eq!(t.alias, "pds");
        assert_eq!(t.host, "198.51.100.4");
        assert_eq!(t.user, "admin");
        assert_eq!(t.port, 2200);
        assert_eq!(
            t.identity_files,
            vec![home.join(".ssh/pds_key"), PathBuf::from("/keys/fallback")]
        );
        assert_eq!(t.to_string(), "admin@198.51.100.4:2200");
    }

    #[test]
    fn typed_user_and_port_win_over_config() {
        let (dir, path) = config(CONFIG);
        let t = resolve_in(
            &"root@pds:22".parse().unwrap(),
            Some(&path),
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("root", "198.51.100.4", 22)
        );
    }

    #[test]
    fn host_patterns_and_percent_h() {
        let (dir, path) = config(CONFIG);
        let t = resolve_in(&"box1.lab".parse().unwrap(), Some(&path), Some(dir.path())).unwrap();
        assert_eq!(t.user, "ubuntu");
        assert_eq!(t.host, "box1.lab.internal");
        assert_eq!(t.port, 22);
    }

    #[test]
    fn defaults_without_config() {
        let home = tempfile::tempdir().unwrap();
        let t = resolve_in(&"[2001:db8::7]".parse().unwrap(), None, Some(home.path())).unwrap();
        assert_eq!(t.user, "root");
        assert_eq!(t.port, 22);
        assert!(t.identity_files.is_empty());
        assert_eq!(t.to_string(), "root@[2001:db8::7]:22");
    }

    #[test]
    fn reads_default_config_from_home() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".ssh")).unwrap();
        std::fs::write(home.path().join(".ssh/config"), CONFIG).unwrap();
        let t = resolve_in(&"pds".parse().unwrap(), None, Some(home.path())).unwrap();
        assert_eq!(t.host, "198.51.100.4");
    }

    #[test]
    fn missing_explicit_config_is_an_error() {
        let home = tempfile::tempdir().unwrap();
        let missing = home.path().join("nope");
        let err =
            resolve_in(&"pds".parse().unwrap(), Some(&missing), Some(home.path())).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read the ssh config"),
            "{err:#}"
        );
    }
}
