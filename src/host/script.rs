//! The one way a shell script with values in it is built.
//!
//! A template is a `&'static str` (so it is written in pdsup's source, never
//! assembled at run time) whose `{}` holes are filled with values, each quoted
//! for POSIX `sh` by [`quote`]. A value therefore always reaches the shell as
//! one word, whatever it holds: a path with a space, a URL with a quote, a
//! journal cursor with a `;`. Fixed fragments shared by several templates (the
//! apt-get prefix) are joined with `concat!` so that they stay static too.

use std::fmt;
use std::ops::Deref;

use super::{quote, Cmd};

/// A POSIX `sh` script: fixed text from templates and quoted values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Script {
    text: String,
}

impl Script {
    pub fn new() -> Self {
        Script::default()
    }

    /// A script of one template filled with `values` (see [`fill`]).
    pub fn of(template: &'static str, values: &[&str]) -> Self {
        Script {
            text: fill(template, values),
        }
    }

    /// Appends the filled template and a newline.
    pub fn line(mut self, template: &'static str, values: &[&str]) -> Self {
        self.text.push_str(&fill(template, values));
        self.text.push('\n');
        self
    }

    /// Appends the filled template as it is (for one-line scripts joined with `; `).
    pub fn push(mut self, template: &'static str, values: &[&str]) -> Self {
        self.text.push_str(&fill(template, values));
        self
    }

    /// Appends each value as one more quoted word, after a space (a list of
    /// package names, for instance).
    pub fn words(mut self, values: &[&str]) -> Self {
        for value in values {
            self.text.push(' ');
            self.text.push_str(&quote(value));
        }
        self
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn cmd(self) -> Cmd {
        Cmd {
            script: self.text,
            stdin: Vec::new(),
        }
    }
}

impl From<Script> for Cmd {
    fn from(script: Script) -> Cmd {
        script.cmd()
    }
}

impl Deref for Script {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for Script {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl AsRef<std::ffi::OsStr> for Script {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.text.as_ref()
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl PartialEq<str> for Script {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Script {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

/// `template` with each `{}` replaced by the next of `values`, quoted for `sh`.
///
/// Panics when the number of holes and values differ: that is a mistake in
/// pdsup's source, caught by the unit test of the template.
pub fn fill(template: &'static str, values: &[&str]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut values = values.iter();
    while let Some(at) = rest.find("{}") {
        out.push_str(&rest[..at]);
        let value = values
            .next()
            .unwrap_or_else(|| panic!("more holes than values in the script {template:?}"));
        out.push_str(&quote(value));
        rest = &rest[at + 2..];
    }
    out.push_str(rest);
    assert!(
        values.next().is_none(),
        "more values than holes in the script {template:?}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_take_each_value_as_one_quoted_word() {
        let table: [(&'static str, &[&str], &str); 6] = [
            (
                "rm -f {}",
                &["/etc/caddy/Caddyfile"],
                "rm -f /etc/caddy/Caddyfile",
            ),
            ("rm -f {}", &["/srv/my data"], "rm -f '/srv/my data'"),
            ("echo {}", &["it's"], r#"echo "it's""#),
            ("echo {}", &["$(reboot)"], "echo '$(reboot)'"),
            ("a {} b {}", &["x;y", ""], "a 'x;y' b ''"),
            ("{ echo {}; }", &["ok"], "{ echo ok; }"),
        ];
        for (template, values, want) in table {
            assert_eq!(fill(template, values), want, "{template} {values:?}");
        }
    }

    #[test]
    fn a_value_never_escapes_its_word() {
        let nasty = ["a'b", "a\"b", "a\nb", "$HOME", "`id`", "a\\b", "*", "-rf /"];
        for value in nasty {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(Script::of("printf %s {}", &[value]).as_str())
                .output()
                .unwrap();
            assert!(out.status.success(), "{value:?}: {out:?}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), value);
        }
    }

    #[test]
    #[should_panic(expected = "more holes than values")]
    fn a_missing_value_is_a_bug() {
        fill("cp {} {}", &["a"]);
    }

    #[test]
    #[should_panic(expected = "more values than holes")]
    fn a_spare_value_is_a_bug() {
        fill("ls", &["a"]);
    }

    #[test]
    fn lines_and_pushes_build_one_script() {
        let s = Script::new()
            .line("set -e", &[])
            .push("cd {}; ", &["/var/tmp/x y"])
            .push("ls", &[])
            .words(&["a b", "c"]);
        assert_eq!(s, "set -e\ncd '/var/tmp/x y'; ls 'a b' c");
        assert_eq!(s.cmd().script, "set -e\ncd '/var/tmp/x y'; ls 'a b' c");
    }
}
