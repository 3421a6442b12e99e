//! Facts: what a step reads from the droplet, each as the command that asks
//! and a pure function from that command's output to a value (as in pyinfra).
//! The commands are read-only; the parsers are table-tested with real outputs,
//! empty and garbled ones included, so that a surprise on a droplet becomes a
//! plain "no" rather than a panic or a wrong "yes".
//!
//! The facts every part of pdsup shares live here (a file's contents, a unit's
//! state, the machine's architecture); the steps' own facts are built the same
//! way in `steps::facts`.

use crate::error::Result;

use super::{Cmd, Host, Output, Script};

/// A read-only command and the parser of its output.
#[derive(Clone, Debug)]
pub struct Fact<T> {
    pub cmd: Cmd,
    pub parse: fn(&Output) -> T,
}

impl<T> Fact<T> {
    pub fn new(cmd: impl Into<Cmd>, parse: fn(&Output) -> T) -> Self {
        Fact {
            cmd: cmd.into(),
            parse,
        }
    }

    /// Asks the host; a non-zero exit is part of the answer (the parser reads
    /// it), only failing to run the command at all is an error.
    pub async fn read<H: Host + ?Sized>(&self, host: &H) -> Result<T> {
        Ok((self.parse)(&host.exec(&self.cmd).await?))
    }

    /// Asks the host and fails, with the command's stderr, when it exits non-zero.
    pub async fn read_checked<H: Host + ?Sized>(&self, host: &H) -> Result<T> {
        Ok((self.parse)(&host.run(&self.cmd).await?))
    }
}

/// A file's bytes, or `None` when it does not exist (a marker byte tells the two
/// apart: an empty file is `Some([])`). Read with [`Fact::read_checked`]: a
/// file that exists but cannot be read is an error, not an absent file.
pub fn file_bytes(path: &str) -> Fact<Option<Vec<u8>>> {
    Fact::new(
        Script::of(
            "if [ -e {} ]; then printf y; cat {}; else printf n; fi",
            &[path, path],
        ),
        parse_file_bytes,
    )
}

pub fn parse_file_bytes(out: &Output) -> Option<Vec<u8>> {
    match out.stdout.split_first() {
        Some((b'y', rest)) => Some(rest.to_vec()),
        _ => None,
    }
}

/// A file's text (invalid UTF-8 replaced), or `None` when it does not exist.
pub fn file_text(path: &str) -> Fact<Option<String>> {
    Fact::new(file_bytes(path).cmd, parse_file_text)
}

pub fn parse_file_text(out: &Output) -> Option<String> {
    parse_file_bytes(out).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Whether a path exists (a file, a directory, anything).
pub fn exists(path: &str) -> Fact<bool> {
    Fact::new(Script::of("[ -e {} ]", &[path]), Output::success)
}

/// Whether a path is a directory.
pub fn is_dir(path: &str) -> Fact<bool> {
    Fact::new(Script::of("[ -d {} ]", &[path]), Output::success)
}

/// Whether a systemd unit is active: `systemctl is-active`'s exit status, 0 for
/// active (and reloading); a lost connection (no status) counts as not active.
pub fn unit_active(unit: &str) -> Fact<bool> {
    Fact::new(
        Cmd::argv(["systemctl", "is-active", "--quiet", unit]),
        Output::success,
    )
}

/// Whether a systemd unit is enabled at boot.
pub fn unit_enabled(unit: &str) -> Fact<bool> {
    Fact::new(
        Script::of("systemctl is-enabled --quiet {} 2>/dev/null", &[unit]),
        Output::success,
    )
}

/// The kernel's name for the CPU: `x86_64`, `aarch64`; empty when unknown.
pub fn uname_arch() -> Fact<String> {
    Fact::new(Cmd::sh("uname -m"), first_line)
}

/// The first line of stdout, trimmed; empty when there is none.
pub fn first_line(out: &Output) -> String {
    out.stdout_str()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An output as a host would return it.
    pub fn output(status: Option<u32>, stdout: &str) -> Output {
        Output {
            status,
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        }
    }

    #[test]
    fn file_contents_tell_a_missing_file_from_an_empty_one() {
        type Row = (Option<u32>, &'static [u8], Option<&'static [u8]>);
        let table: [Row; 6] = [
            (Some(0), b"yclient {}\n", Some(b"client {}\n")),
            (Some(0), b"y", Some(b"")),
            (Some(0), b"n", None),
            (Some(0), b"", None),
            (None, b"", None),
            (Some(0), b"garbage", None),
        ];
        for (status, stdout, want) in table {
            let out = Output {
                status,
                stdout: stdout.to_vec(),
                stderr: Vec::new(),
            };
            assert_eq!(parse_file_bytes(&out).as_deref(), want, "{stdout:?}");
        }
        assert_eq!(
            parse_file_text(&output(Some(0), "yCaddyfile \u{2014} text")).as_deref(),
            Some("Caddyfile \u{2014} text")
        );
        let invalid = Output {
            status: Some(0),
            stdout: b"y\xffok".to_vec(),
            stderr: Vec::new(),
        };
        assert_eq!(parse_file_text(&invalid).as_deref(), Some("\u{fffd}ok"));
    }

    #[test]
    fn the_file_fact_reads_a_real_file_and_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("it's here.txt");
        std::fs::write(&path, "hello\n").unwrap();
        let run = |fact: Fact<Option<String>>| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&fact.cmd.script)
                .output()
                .unwrap();
            (fact.parse)(&Output {
                status: out.status.code().map(|c| c as u32),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        };
        assert_eq!(
            run(file_text(path.to_str().unwrap())).as_deref(),
            Some("hello\n")
        );
        let missing = dir.path().join("nothing");
        assert_eq!(run(file_text(missing.to_str().unwrap())), None);
    }

    #[test]
    fn unit_state_is_the_exit_status() {
        // `systemctl is-active --quiet` prints nothing; its status is the answer.
        let table = [
            (Some(0), true),
            (Some(3), false), // inactive, failed
            (Some(4), false), // no such unit
            (Some(1), false),
            (None, false), // the connection dropped
        ];
        for (status, want) in table {
            assert_eq!((unit_active("docker").parse)(&output(status, "")), want);
            assert_eq!((unit_enabled("docker").parse)(&output(status, "")), want);
        }
        assert_eq!(
            unit_active("docker").cmd.script,
            "systemctl is-active --quiet docker"
        );
        assert_eq!(
            unit_enabled("nomad").cmd.script,
            "systemctl is-enabled --quiet nomad 2>/dev/null"
        );
    }

    #[test]
    fn first_lines_are_trimmed_and_may_be_empty() {
        let table = [
            ("x86_64\n", "x86_64"),
            ("aarch64", "aarch64"),
            ("  armv7l  \nmore\n", "armv7l"),
            ("", ""),
            ("\n", ""),
        ];
        for (stdout, want) in table {
            assert_eq!((uname_arch().parse)(&output(Some(0), stdout)), want);
        }
    }
}
