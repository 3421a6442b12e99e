//! The crate's one error type: a message with the context it was seen in (like
//! `anyhow`), plus what a caller needs to act on it — a [`ErrorKind`] that fixes
//! the exit code, the step that failed, a hint saying what to do next, and the
//! typed error it came from (found again with [`Error::downcast_ref`]).
//!
//! This module is the bottom of the crate: every other module may import it, and
//! it imports none. Module error enums convert into it next to their definitions
//! (`impl From<SshError> for Error`), each variant choosing its kind there.
//! Errors are rendered once, in `cli`.

use std::error::Error as StdError;
use std::fmt;

pub use crate::{bail, ensure, err};

/// What kind of failure, for the exit code and `--json`'s `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Anything not classified more precisely.
    Other,
    /// A flag, `site.toml`, `pds.env` or a file given on the command line is wrong.
    BadInput,
    /// A check stopped the run before the step changed anything.
    Blocked,
    /// The droplet could not be reached or logged in to (SSH, keys, sudo).
    Ssh,
    /// The droplet's SSH host key is not the one pinned for the site.
    HostKeyChanged,
    /// A command on the droplet failed (its stderr tail is in the message).
    RemoteCommand,
    /// A wait ran out of time.
    TimedOut,
    /// Nomad's or the PDS's API failed or answered an error.
    Api,
    /// A job or service on the droplet did not come up (Nomad's event and logs are quoted).
    Unhealthy,
    /// Local files: the site's state directory, files read on this machine.
    Local,
    /// A bug in pdsup.
    Internal,
}

/// Every exit code `pdsup` ends with besides 0 (success), one per kind. The
/// README's "Exit codes" table is checked against this one (tests/cli.rs).
pub const EXIT_CODES: &[(ErrorKind, u8, &str)] = &[
    (ErrorKind::Other, 1, "any other failure"),
    (
        ErrorKind::BadInput,
        2,
        "bad input: a flag, `site.toml`, `pds.env` or a given file (also usage errors)",
    ),
    (
        ErrorKind::Blocked,
        3,
        "blocked: a check stopped the run; that step changed nothing",
    ),
    (
        ErrorKind::Ssh,
        4,
        "the droplet could not be reached or logged in to (SSH, keys, sudo)",
    ),
    (
        ErrorKind::HostKeyChanged,
        5,
        "the droplet's SSH host key is not the site's pinned key",
    ),
    (
        ErrorKind::RemoteCommand,
        6,
        "a command on the droplet failed (its stderr is quoted)",
    ),
    (ErrorKind::TimedOut, 7, "a wait timed out"),
    (
        ErrorKind::Api,
        8,
        "Nomad's or the PDS's API failed or refused a request",
    ),
    (
        ErrorKind::Unhealthy,
        9,
        "a job on the droplet did not come up (Nomad's event and the task's log are quoted)",
    ),
    (
        ErrorKind::Local,
        10,
        "local files: the site's state directory or a file on this machine",
    ),
    (ErrorKind::Internal, 11, "a bug in pdsup"),
];

impl ErrorKind {
    /// The name `--json` uses (`bad_input`, `host_key_changed`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Other => "other",
            ErrorKind::BadInput => "bad_input",
            ErrorKind::Blocked => "blocked",
            ErrorKind::Ssh => "ssh",
            ErrorKind::HostKeyChanged => "host_key_changed",
            ErrorKind::RemoteCommand => "remote_command",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::Api => "api",
            ErrorKind::Unhealthy => "unhealthy",
            ErrorKind::Local => "local",
            ErrorKind::Internal => "internal",
        }
    }

    /// The process exit code for an error of this kind.
    pub fn exit_code(self) -> u8 {
        EXIT_CODES
            .iter()
            .find(|(kind, _, _)| *kind == self)
            .map_or(1, |(_, code, _)| *code)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// A failure: `{}` shows the outermost message, `{:#}` the whole chain joined
/// with `: `, as `anyhow` does.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    /// Context and message, outermost first; the source's own chain follows.
    messages: Vec<String>,
    source: Option<Source>,
    step: Option<String>,
    hint: Option<String>,
}

impl Error {
    /// An error that is only a message.
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Error::build(kind, vec![message.to_string()], None)
    }

    /// A message of kind [`ErrorKind::Other`].
    pub fn msg(message: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Other, message)
    }

    /// Wraps a typed error: its message and its `source()` chain become the
    /// chain, and [`Error::downcast_ref`] finds it again.
    pub fn from_source(kind: ErrorKind, source: impl StdError + Send + Sync + 'static) -> Self {
        Error::build(kind, Vec::new(), Some(Box::new(source)))
    }

    fn build(kind: ErrorKind, messages: Vec<String>, source: Option<Source>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                messages,
                source,
                step: None,
                hint: None,
            }),
        }
    }

    /// Adds a message in front: "what was being done" around "what went wrong".
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.inner.messages.insert(0, context.to_string());
        self
    }

    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.inner.kind = kind;
        self
    }

    /// What to do next, shown after the error (`hint: ...`).
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.inner.hint = Some(hint.into());
        self
    }

    /// The step the error happened in (set by the runner).
    pub fn with_step(mut self, step: impl Into<String>) -> Self {
        self.inner.step = Some(step.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    pub fn step(&self) -> Option<&str> {
        self.inner.step.as_deref()
    }

    pub fn hint(&self) -> Option<&str> {
        self.inner.hint.as_deref()
    }

    pub fn exit_code(&self) -> u8 {
        self.kind().exit_code()
    }

    /// Every message, outermost first: the context, then the source's chain.
    pub fn chain(&self) -> impl Iterator<Item = String> + '_ {
        let mut next: Option<&(dyn StdError + 'static)> = self
            .inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static));
        let sources = std::iter::from_fn(move || {
            let current = next?;
            next = current.source();
            Some(current.to_string())
        });
        self.inner.messages.iter().cloned().chain(sources)
    }

    /// The typed error this one was made from (or one in its source chain).
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        let mut next: Option<&(dyn StdError + 'static)> = self
            .inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static));
        while let Some(current) = next {
            if let Some(found) = current.downcast_ref::<E>() {
                return Some(found);
            }
            next = current.source();
        }
        None
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chain = self.chain();
        if let Some(first) = chain.next() {
            f.write_str(&first)?;
        }
        if f.alternate() {
            for cause in chain {
                write!(f, ": {cause}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chain = self.chain();
        write!(f, "{}", chain.next().unwrap_or_default())?;
        let causes: Vec<String> = chain.collect();
        if !causes.is_empty() {
            write!(f, "\n\nCaused by:")?;
            for cause in causes {
                write!(f, "\n    {cause}")?;
            }
        }
        write!(f, "\n\nkind: {}", self.kind())?;
        if let Some(step) = self.step() {
            write!(f, ", step: {step}")?;
        }
        if let Some(hint) = self.hint() {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::msg(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::msg(message)
    }
}

/// Local I/O: the state directory and files named on the command line (remote
/// I/O fails inside an SSH error or a command's exit status instead).
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::from_source(ErrorKind::Local, e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::from_source(ErrorKind::Other, e)
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            ErrorKind::TimedOut
        } else {
            ErrorKind::Api
        };
        Error::from_source(kind, e)
    }
}

impl From<russh::Error> for Error {
    fn from(e: russh::Error) -> Self {
        Error::from_source(ErrorKind::Ssh, e)
    }
}

impl From<tokio::time::error::Elapsed> for Error {
    fn from(e: tokio::time::error::Elapsed) -> Self {
        Error::from_source(ErrorKind::TimedOut, e)
    }
}

/// `anyhow::Context`'s shape, plus setting the kind and a hint on the way out.
pub trait Context<T> {
    /// Wraps the error in a message saying what was being done.
    fn context<C: fmt::Display>(self, context: C) -> Result<T>;

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, context: F) -> Result<T>;

    /// Sets the error's kind (the origin knows it best).
    fn kind(self, kind: ErrorKind) -> Result<T>;

    /// Attaches what to do next.
    fn hint(self, hint: impl Into<String>) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context<C: fmt::Display>(self, context: C) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, context: F) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }

    fn kind(self, kind: ErrorKind) -> Result<T> {
        self.map_err(|e| e.into().with_kind(kind))
    }

    fn hint(self, hint: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().with_hint(hint))
    }
}

/// A missing value becomes an error of kind [`ErrorKind::Other`] unless `.kind` says otherwise.
impl<T> Context<T> for Option<T> {
    fn context<C: fmt::Display>(self, context: C) -> Result<T> {
        self.ok_or_else(|| Error::msg(context))
    }

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, context: F) -> Result<T> {
        self.ok_or_else(|| Error::msg(context()))
    }

    fn kind(self, kind: ErrorKind) -> Result<T> {
        self.ok_or_else(|| Error::new(kind, "a value was missing"))
    }

    fn hint(self, hint: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::msg("a value was missing").with_hint(hint))
    }
}

/// Builds an [`Error`]: `err!("format", args..)` (kind Other),
/// `err!(BadInput, "format", args..)`, or `err!(typed_error)` (its own kind).
#[macro_export]
macro_rules! err {
    ($kind:ident, $fmt:literal $(, $arg:expr)* $(,)?) => {
        $crate::error::Error::new($crate::error::ErrorKind::$kind, format!($fmt $(, $arg)*))
    };
    ($fmt:literal $(, $arg:expr)* $(,)?) => {
        $crate::error::Error::msg(format!($fmt $(, $arg)*))
    };
    ($err:expr $(,)?) => {
        $crate::error::Error::from($err)
    };
}

/// Returns early with [`err!`]'s error.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)+) => {
        return Err($crate::err!($($arg)+).into())
    };
}

/// Returns early with [`err!`]'s error unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::bail!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer typed")]
    struct Typed {
        #[source]
        source: std::io::Error,
    }

    fn typed() -> Typed {
        Typed {
            source: std::io::Error::other("inner io"),
        }
    }

    #[test]
    fn display_is_the_outermost_message_and_alternate_the_whole_chain() {
        let e = Error::from_source(ErrorKind::Api, typed())
            .context("middle")
            .context("outer");
        assert_eq!(e.to_string(), "outer");
        assert_eq!(format!("{e:#}"), "outer: middle: outer typed: inner io");
        assert_eq!(
            e.chain().collect::<Vec<_>>(),
            ["outer", "middle", "outer typed", "inner io"]
        );
        assert_eq!(e.kind(), ErrorKind::Api, "context keeps the kind");
    }

    #[test]
    fn downcast_finds_the_typed_source_and_its_sources() {
        let e = Error::from_source(ErrorKind::Local, typed()).context("while testing");
        assert!(e.downcast_ref::<Typed>().is_some());
        assert_eq!(
            e.downcast_ref::<std::io::Error>().unwrap().to_string(),
            "inner io"
        );
        assert!(Error::msg("plain").downcast_ref::<Typed>().is_none());
    }

    fn bails(kind: bool) -> Result<()> {
        if kind {
            bail!(BadInput, "bad {}", 1);
        }
        let n = 2;
        bail!("other {n}")
    }

    fn ensures(ok: bool) -> Result<u8> {
        ensure!(ok, Blocked, "not ok");
        Ok(1)
    }

    #[test]
    fn macros_take_an_optional_kind() {
        let e = bails(true).unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (ErrorKind::BadInput, "bad 1")
        );
        let e = bails(false).unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (ErrorKind::Other, "other 2")
        );
        assert_eq!(ensures(false).unwrap_err().kind(), ErrorKind::Blocked);
        assert_eq!(ensures(true).unwrap(), 1);
        let e = err!(std::io::Error::other("x"));
        assert_eq!(e.kind(), ErrorKind::Local);
    }

    #[test]
    fn context_on_results_and_options() {
        let r: std::result::Result<(), std::io::Error> = Err(std::io::Error::other("gone"));
        let e = r.context("reading state").unwrap_err();
        assert_eq!(format!("{e:#}"), "reading state: gone");
        assert_eq!(e.kind(), ErrorKind::Local);
        let e = None::<u8>
            .with_context(|| "no home")
            .kind(ErrorKind::Local)
            .hint("pass --state-dir")
            .unwrap_err();
        assert_eq!(
            (e.to_string().as_str(), e.kind(), e.hint()),
            ("no home", ErrorKind::Local, Some("pass --state-dir"))
        );
    }

    #[test]
    fn every_kind_has_one_exit_code_and_they_differ() {
        let kinds = [
            ErrorKind::Other,
            ErrorKind::BadInput,
            ErrorKind::Blocked,
            ErrorKind::Ssh,
            ErrorKind::HostKeyChanged,
            ErrorKind::RemoteCommand,
            ErrorKind::TimedOut,
            ErrorKind::Api,
            ErrorKind::Unhealthy,
            ErrorKind::Local,
            ErrorKind::Internal,
        ];
        assert_eq!(EXIT_CODES.len(), kinds.len());
        for kind in kinds {
            let rows = EXIT_CODES.iter().filter(|(k, _, _)| *k == kind).count();
            assert_eq!(rows, 1, "{kind} has {rows} rows in EXIT_CODES");
            assert_ne!(kind.exit_code(), 0);
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.name())
            );
        }
        let mut codes: Vec<u8> = EXIT_CODES.iter().map(|(_, c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), EXIT_CODES.len(), "two kinds share a code");
        assert_eq!(
            ErrorKind::BadInput.exit_code(),
            2,
            "clap's usage errors are 2"
        );
    }
}
