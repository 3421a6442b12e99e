//! The `Host` trait: every side effect on the droplet goes through it.
//!
//! A host runs shell commands as root (through `sudo -n` for a non-root login),
//! feeds them stdin, and forwards TCP ports. Reading and writing files are built on
//! `run` here, once, so that every transport gets the same atomic, mode-setting
//! writes. Secrets travel only on stdin, never in a command line (`ps` shows those).

pub mod config_file;
pub mod dest;
pub mod error;
pub mod facts;
pub mod known_hosts;
pub mod local;
mod script;
pub mod ssh;

pub use script::{fill, Script};

use std::net::SocketAddr;

use crate::error::{ErrorKind, Result};
use async_trait::async_trait;

/// A command for the remote shell. `script` is a POSIX `sh` script; it may hold
/// paths and flags but never a secret (those go to `stdin`). Built from a fixed
/// script ([`Cmd::sh`]), an argv ([`Cmd::argv`]) or a [`Script`], so that every
/// value in it is quoted by [`quote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub script: String,
    pub stdin: Vec<u8>,
}

impl Cmd {
    /// A fixed script, written in pdsup's source: values go through [`Script`].
    pub fn sh(script: &'static str) -> Self {
        Cmd {
            script: script.to_string(),
            stdin: Vec::new(),
        }
    }

    /// A command from an argv, each word quoted for `sh`.
    pub fn argv<I, S>(words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let quoted: Vec<String> = words.into_iter().map(|w| quote(w.as_ref())).collect();
        Cmd {
            script: quoted.join(" "),
            stdin: Vec::new(),
        }
    }

    pub fn with_stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = stdin.into();
        self
    }
}

/// Quotes one word for POSIX `sh`.
pub fn quote(word: &str) -> String {
    shlex::try_quote(word)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", word.replace('\'', "'\\''")))
}

#[derive(Clone, Debug, Default)]
pub struct Output {
    /// `None` when the transport ended without reporting an exit status: that
    /// counts as failure (a dropped connection must never look like success).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_tail(&self) -> String {
        tail(&String::from_utf8_lossy(&self.stderr), 12)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A command on the host that exited non-zero (or without an exit status): the
/// error of [`Host::run`], of kind [`ErrorKind::RemoteCommand`].
#[derive(Debug, thiserror::Error)]
#[error("on {host}: `{command}` failed with {}\n{stderr_tail}", status_text(*status))]
pub struct CommandFailed {
    pub host: String,
    /// The script's first line.
    pub command: String,
    pub status: Option<u32>,
    /// The last lines of its stderr.
    pub stderr_tail: String,
}

fn status_text(status: Option<u32>) -> String {
    status.map_or("no exit status (connection lost?)".to_string(), |s| {
        format!("exit status {s}")
    })
}

impl From<CommandFailed> for crate::error::Error {
    fn from(e: CommandFailed) -> Self {
        crate::error::Error::from_source(ErrorKind::RemoteCommand, e)
    }
}

/// Ownership and permissions of a written file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMode {
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

impl FileMode {
    pub fn root(mode: u32) -> Self {
        FileMode {
            mode,
            owner: "root".into(),
            group: "root".into(),
        }
    }
}

#[async_trait]
pub trait Host: Send + Sync {
    /// Runs `cmd` as root and returns its output, whatever its exit status.
    async fn exec(&self, cmd: &Cmd) -> Result<Output>;

    /// Makes `remote_port` on the host's loopback reachable from here and returns
    /// the local address to connect to (an SSH direct-tcpip tunnel, or the port
    /// itself when running on the host).
    async fn forward(&self, remote_port: u16) -> Result<SocketAddr>;

    /// Copies a local file to `path` on the host, streaming it (large files: the
    /// Nomad zip, a PDS image archive). Atomic: written beside, then renamed.
    async fn upload(&self, local: &std::path::Path, path: &str, mode: &FileMode) -> Result<()>;

    /// Who and where, for messages: `root@203.0.113.7:22`.
    fn describe(&self) -> String;

    /// Whether the connection to the host is still up (always, on the host itself).
    fn connected(&self) -> bool {
        true
    }

    /// Runs `cmd` and fails with its stderr when it exits non-zero.
    async fn run(&self, cmd: &Cmd) -> Result<Output> {
        let out = self.exec(cmd).await?;
        if !out.success() {
            return Err(CommandFailed {
                host: self.describe(),
                command: first_line(&cmd.script),
                status: out.status,
                stderr_tail: out.stderr_tail(),
            }
            .into());
        }
        Ok(out)
    }

    /// The file's bytes, or `None` when it does not exist.
    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        facts::file_bytes(path).read_checked(self).await
    }

    /// The file's text (invalid UTF-8 replaced), or `None` when it does not exist.
    async fn read_text(&self, path: &str) -> Result<Option<String>> {
        facts::file_text(path).read_checked(self).await
    }

    /// Writes `contents` to `path` atomically with the given mode and owner,
    /// creating parent directories. The bytes go on stdin, never in arguments.
    async fn write_file(&self, path: &str, contents: &[u8], mode: &FileMode) -> Result<()> {
        self.run(
            &write_script(path, mode, contents.len() as u64)
                .cmd()
                .with_stdin(contents),
        )
        .await?;
        Ok(())
    }
}

/// The shell script that writes stdin to `path` atomically (also used by uploads).
/// `len` is the number of bytes stdin carries: when fewer arrive (the connection
/// dropped mid-upload, and `cat` took the end of the channel for the end of the
/// file) the partial copy is removed instead of being renamed into place.
pub fn write_script(path: &str, mode: &FileMode, len: u64) -> Script {
    let dir = std::path::Path::new(path)
        .parent()
        .and_then(|p| p.to_str())
        .unwrap_or("/");
    let (len, mode_bits) = (len.to_string(), format!("{:o}", mode.mode));
    let owner = format!("{}:{}", mode.owner, mode.group);
    Script::of(
        "set -e; umask 077; want={}; mkdir -p {}; tmp=$(mktemp {}/.pdsup.XXXXXX); \
         trap 'rm -f \"$tmp\"' EXIT; cat > \"$tmp\"; got=$(wc -c < \"$tmp\"); \
         if [ \"$got\" -ne \"$want\" ]; then rm -f \"$tmp\"; echo \"incomplete copy: $got of $want bytes arrived\" >&2; exit 1; fi; \
         chown {} \"$tmp\"; chmod {} \"$tmp\"; mv -f \"$tmp\" {}",
        &[&len, dir, dir, &owner, &mode_bits, path],
    )
}

pub(crate) fn first_line(script: &str) -> String {
    let line = script.lines().next().unwrap_or("");
    if line.chars().count() > 120 {
        format!("{}…", line.chars().take(120).collect::<String>())
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_quotes_each_word() {
        let cmd = Cmd::argv(["echo", "a b", "it's"]);
        assert_eq!(cmd.script, r#"echo 'a b' "it's""#);
    }

    #[test]
    fn write_script_sets_mode_owner_and_renames() {
        let s = write_script("/etc/nomad.d/nomad.hcl", &FileMode::root(0o640), 12);
        assert!(s.contains("mkdir -p /etc/nomad.d"));
        assert!(s.contains("chmod 640"));
        assert!(s.contains("mv -f \"$tmp\" /etc/nomad.d/nomad.hcl"));
    }

    /// Runs `write_script(path, mode, len)` with `input` on stdin.
    fn write_with_sh(path: &std::path::Path, len: u64, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
        let mode = FileMode {
            mode: 0o600,
            owner: dir.uid().to_string(),
            group: dir.gid().to_string(),
        };
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(write_script(path.to_str().unwrap(), &mode, len))
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn write_script_never_renames_a_cut_short_copy_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pds-image.tar");
        let out = write_with_sh(&path, 10, b"short");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("5 of 10 bytes"));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");

        let out = write_with_sh(&path, 5, b"exact");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"exact");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
