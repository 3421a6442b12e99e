//! `Secret`: a value that must never reach logs, progress output, error messages
//! or process arguments. It prints as `********` through `Debug` and `Display`;
//! the only way to the real value is the explicit [`Secret::expose`].
//! `EnvValue` is an environment value that is either plain or such a secret
//! (the PDS job's `env` block and the site's `pds.env` are lists of them).

use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

pub const MASK: &str = "********";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value. Call sites are the places where a secret legitimately
    /// leaves the process: a 0600 file, stdin of a remote command, an HTTP body.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// A task environment value; secrets print masked everywhere except in the API body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    Secret(Secret),
}

impl EnvValue {
    pub fn plain(value: impl Into<String>) -> Self {
        EnvValue::Plain(value.into())
    }

    pub fn secret(value: impl Into<String>) -> Self {
        EnvValue::Secret(Secret::new(value))
    }

    /// The real value, for the API body and the 0600 env file.
    pub fn expose(&self) -> &str {
        match self {
            EnvValue::Plain(v) => v,
            EnvValue::Secret(s) => s.expose(),
        }
    }

    /// The value as it may be shown: secrets as `********`.
    pub fn shown(&self) -> &str {
        match self {
            EnvValue::Plain(v) => v,
            EnvValue::Secret(_) => MASK,
        }
    }
}

impl fmt::Display for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), MASK);
        assert_eq!(format!("{s:?}"), MASK);
        assert_eq!(format!("{:?}", Some(&s)), format!("Some({MASK})"));
        assert_eq!(s.expose(), "hunter2");
    }
}
