//! The `pds.env` file format: `KEY=VALUE` lines, the format the official
//! `pdsadmin` sources, so the file works with pdsadmin as it is. What goes into
//! the file (the PDS's environment) is the business of `pds::env`; how it is
//! written and read back, exactly as bash would, is this module's.

use std::collections::BTreeMap;

use crate::error::{bail, Result};

use super::secrets::{ADMIN_PASSWORD, JWT_SECRET, ROTATION_KEY};
use crate::inputs::check_one_line;
use crate::secret::EnvValue;

/// `KEY=VALUE` from `origin` (the flag, or where in site.toml it was saved).
pub fn parse_extra_from(raw: &str, origin: &str) -> Result<(String, String)> {
    let Some((key, value)) = raw.split_once('=') else {
        bail!(BadInput, "{origin} {raw:?}: expected KEY=VALUE, e.g. --pds-env PDS_EMAIL_FROM_ADDRESS=admin@example.com");
    };
    check_extra_key(key)?;
    check_one_line(&format!("{origin} {key}"), value)?;
    Ok((key.to_string(), value.to_string()))
}

/// A `--pds-env` name: a shell variable name in upper case that pdsup does not manage.
pub fn check_extra_key(key: &str) -> Result<()> {
    if !valid_key(key) || key.contains(|c: char| c.is_ascii_lowercase()) {
        bail!(
            BadInput,
            "--pds-env {key:?}: names are upper-case letters, digits and '_'"
        );
    }
    if [JWT_SECRET, ADMIN_PASSWORD, ROTATION_KEY, "PDS_HOSTNAME"].contains(&key) {
        bail!(
            BadInput,
            "--pds-env cannot set {key}: pdsup manages it (secrets live in the site's pds.env)"
        );
    }
    Ok(())
}

/// A shell variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit())
}

/// `pds.env` text. Secrets are written in clear: the file is 0600 and is the
/// place they are kept. Every value must be one line without control
/// characters (see [`check_one_line`]); `pds_environment` makes sure of that.
pub fn render_env_file(env: &[(String, EnvValue)]) -> String {
    let mut out = String::from(
        "# PDS environment written by pdsup. Keep this file safe and private:\n\
         # it holds the PDS's secrets and its PLC rotation key.\n",
    );
    for (key, value) in env {
        let value = match value {
            EnvValue::Plain(v) => v.as_str(),
            EnvValue::Secret(s) => s.expose(),
        };
        out.push_str(key);
        out.push('=');
        out.push_str(&shell_value(value));
        out.push('\n');
    }
    out
}

/// Characters that mean themselves in an unquoted shell word.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_./:@,+=%".contains(c)
}

/// The value as bash reads it back: bare when every character is plain,
/// otherwise in double quotes with `\`, `"`, `$` and `` ` `` escaped (the only
/// characters bash treats specially there, `!` aside, which only an interactive
/// shell expands).
fn shell_value(value: &str) -> String {
    if !value.is_empty() && value.chars().all(is_plain) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Why a `pds.env` line cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {why}")]
pub struct EnvFileError {
    pub line: usize,
    pub why: String,
}

/// Parses `pds.env`: `KEY=VALUE` lines, comments, blank lines, `export KEY=VALUE`.
/// A value is bare, `"double-quoted"` (with `\\ \" \$ \``) or `'single-quoted'`.
///
/// Strict on purpose: the file is also `source`d by bash (pdsadmin), so any line
/// bash would read differently from this parser (an expansion, a second word,
/// an open quote) is an error, and so is a key defined twice, since it is
/// unclear which definition is the real one (for a secret, that matters).
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, EnvFileError> {
    let mut env = BTreeMap::new();
    for (i, raw_line) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |why: String| EnvFileError { line: line_no, why };
        let line = raw_line.trim_matches(|c| c == ' ' || c == '\t');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, raw_value)) = line.split_once('=') else {
            return Err(err("expected KEY=VALUE".into()));
        };
        if !valid_key(key) {
            return Err(err(format!(
                "{key:?} is not a variable name (letters, digits and '_')"
            )));
        }
        let value = parse_value(raw_value).map_err(|why| err(format!("{key}: {why}")))?;
        if env.insert(key.to_string(), value).is_some() {
            return Err(err(format!(
                "{key} is defined a second time; which definition is right cannot be guessed"
            )));
        }
    }
    Ok(env)
}

fn parse_value(raw: &str) -> Result<String, String> {
    if raw.chars().any(char::is_control) {
        return Err("the value contains a control character".into());
    }
    if let Some(rest) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        loop {
            match chars.next() {
                None => return Err("the double quote is never closed".into()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c @ ('\\' | '"' | '$' | '`')) => out.push(c),
                    // bash keeps a backslash before any other character.
                    Some(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => return Err("the double quote is never closed".into()),
                },
                Some('$') | Some('`') => return Err(
                    "an unescaped '$' or '`' inside double quotes would be expanded by the shell"
                        .into(),
                ),
                Some(c) => out.push(c),
            }
        }
        ensure_nothing_after(chars.as_str())?;
        return Ok(out);
    }
    if let Some(rest) = raw.strip_prefix('\'') {
        let Some((inner, after)) = rest.split_once('\'') else {
            return Err("the single quote is never closed".into());
        };
        ensure_nothing_after(after)?;
        return Ok(inner.to_string());
    }
    // The offending character is not quoted back: the value may be a secret.
    if !raw.chars().all(is_plain) {
        return Err(
            "an unquoted value may hold only letters, digits and -_./:@,+=%; other \
                    characters (spaces, quotes, $, ...) mean something else to the shell, so put \
                    the value in double quotes"
                .into(),
        );
    }
    Ok(raw.to_string())
}

fn ensure_nothing_after(after: &str) -> Result<(), String> {
    if after.trim().is_empty() {
        Ok(())
    } else {
        Err("text follows the closing quote; the shell would join it to the value".into())
    }
}

/// A broken `pds.env` (the site's file, read before anything is contacted).
impl From<EnvFileError> for crate::error::Error {
    fn from(e: EnvFileError) -> Self {
        crate::error::Error::from_source(crate::error::ErrorKind::BadInput, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicated_keys_and_unreadable_lines_are_errors_with_line_numbers() {
        let dup = "# c\nPDS_JWT_SECRET=aa\nPDS_FOO=\"a\nPDS_JWT_SECRET=evil\"\n";
        // The old splice: an open quote on line 3.
        assert_eq!(parse_env_file(dup).unwrap_err().line, 3);
        let dup = "PDS_JWT_SECRET=aa\n\nexport PDS_JWT_SECRET=bb\n";
        let err = parse_env_file(dup).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.why.contains("second time"), "{err}");
        assert!(!err.to_string().contains("bb"), "{err}");
        for (bad, line) in [
            ("A=1\nnot a line\n", 2),
            ("A=$(reboot)\n", 1),
            ("A=\"$HOME\"\n", 1),
            ("A=\"`id`\"\n", 1),
            ("A=a b\n", 1),
            ("A=\"a\"b\n", 1),
            ("A='a\n", 1),
            ("1A=x\n", 1),
            ("A B=x\n", 1),
            ("A=x\u{1b}\n", 1),
        ] {
            assert_eq!(
                parse_env_file(bad).map_err(|e| e.line),
                Err(line),
                "{bad:?}"
            );
        }
        let ok = "  # x\nexport A=1\nB='a \"$b'\nC=\"\\n\\\\ \\$\"\nD=\n";
        let env = parse_env_file(ok).unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "a \"$b");
        assert_eq!(env["C"], "\\n\\ $");
        assert_eq!(env["D"], "");
    }

    /// Values every parser accepts: one line, no control characters.
    fn accepted_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<String>(),
            proptest::string::string_regex("[ -~]{0,40}").unwrap(),
            proptest::string::string_regex("[\"'$`\\\\#= !a{}]{0,12}").unwrap(),
        ]
        .prop_filter("accepted values only", |v| check_one_line("v", v).is_ok())
    }

    proptest::proptest! {
        #[test]
        fn any_accepted_value_round_trips(values in proptest::collection::vec(accepted_value(), 1..6)) {
            let env: Vec<(String, EnvValue)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("PDS_K{i}"), EnvValue::Plain(v.clone())))
                .collect();
            let parsed = parse_env_file(&render_env_file(&env)).unwrap();
            proptest::prop_assert_eq!(parsed.len(), values.len());
            for (i, v) in values.iter().enumerate() {
                proptest::prop_assert_eq!(&parsed[&format!("PDS_K{i}")], v);
            }
        }
    }

    /// Values bash reads back, NUL-separated, after sourcing `file`.
    fn bash_reads(file: &std::path::Path, keys: &[String]) -> Vec<String> {
        let script = keys
            .iter()
            .map(|k| format!("printf '%s\\0' \"${k}\""))
            .collect::<Vec<_>>()
            .join("; ");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("set -euo pipefail; source \"$1\"; {script}"))
            .arg("bash")
            .arg(file)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "bash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("UTF-8 from bash");
        let mut values: Vec<String> = text.split('\0').map(String::from).collect();
        values.pop();
        values
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn bash_reads_any_accepted_value_back(values in proptest::collection::vec(accepted_value(), 1..8)) {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("pds.env");
            let keys: Vec<String> = (0..values.len()).map(|i| format!("PDS_K{i}")).collect();
            let env: Vec<(String, EnvValue)> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (k.clone(), EnvValue::Plain(v.clone())))
                .collect();
            std::fs::write(&file, render_env_file(&env)).unwrap();
            proptest::prop_assert_eq!(bash_reads(&file, &keys), values);
        }
    }

    /// pdsadmin `source`s the file under `set -euo pipefail`: bash must read
    /// back exactly what was written.
    #[test]
    fn bash_sources_the_file_to_the_same_values() {
        let tricky = [
            "plain",
            "",
            "two words",
            "say \"hi\"",
            "it's",
            "$HOME and ${PATH}",
            "`id` $(id)",
            "back\\slash\\",
            "\\\"",
            "# not a comment",
            "a=b=c",
            "!bang !! !$",
            "*?[a]~",
            "tab\\t",
            "ünïcødé ✓",
            "trailing space ",
            " leading",
            "semi;colon & amp | pipe > gt < lt",
            "{braces}",
        ];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pds.env");
        let env: Vec<(String, EnvValue)> = tricky
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("PDS_K{i}"), EnvValue::Plain(v.to_string())))
            .collect();
        std::fs::write(&file, render_env_file(&env)).unwrap();
        let parsed = parse_env_file(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for (i, value) in tricky.iter().enumerate() {
            let key = format!("PDS_K{i}");
            assert_eq!(&parsed[&key], value);
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "set -euo pipefail; source \"$1\"; printf %s \"${key}\""
                ))
                .arg("bash")
                .arg(&file)
                .output()
                .expect("bash");
            assert!(
                out.status.success(),
                "{key}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8(out.stdout).unwrap(), *value, "{key}");
        }
    }
}
