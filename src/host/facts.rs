//! Facts: what a step reads from the droplet, each as the command that asks
//! and a pure function from that command's output to a value (as in pyinfra).
//! The commands are read-only; the parsers are table-tested with real outputs,
//! empty and garbled ones included, so that a surprise on a droplet becomes a
//! plain "no" rather than a panic or a wrong "yes".
//!
//! The facts every part of pdsup shares live here (a file's contents, a unit's
//! state, the machine's architecture); the steps' own facts are built the same
//! way in `steps::facts`.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::error::Result;

use super::{Cmd, CommandFailed, Host, Output, Script};

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

/// Facts already asked for, by command: several steps' facts are fetched in one
/// round trip ([`FactCache::prefetch`]) and each fact then reads its own part.
/// The answers hold only while nothing on the droplet changes: whoever changes
/// it calls [`FactCache::forget`] first.
#[derive(Debug, Default)]
pub struct FactCache {
    answers: RefCell<HashMap<String, Output>>,
}

impl FactCache {
    /// Asks the host, in one exec, every command of `cmds` not answered yet.
    /// A batch that fails as a whole (a dropped connection) leaves nothing
    /// cached: each fact then asks on its own and reports its own error.
    pub async fn prefetch<H: Host + ?Sized>(&self, host: &H, cmds: &[Cmd]) -> Result<()> {
        let mut missing: Vec<&Cmd> = Vec::new();
        {
            let answers = self.answers.borrow();
            for cmd in cmds {
                let new = !answers.contains_key(&cmd.script)
                    && !missing.iter().any(|m| m.script == cmd.script);
                // A command that reads stdin cannot share one.
                if new && cmd.stdin.is_empty() {
                    missing.push(cmd);
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let marker = batch_marker();
        let out = host.exec(&batch_cmd(&missing, &marker)).await?;
        if let Some(outputs) = split_batch(&out, &marker, missing.len()) {
            let mut answers = self.answers.borrow_mut();
            for (cmd, output) in missing.into_iter().zip(outputs) {
                answers.insert(cmd.script.clone(), output);
            }
        }
        Ok(())
    }

    /// The answer to `fact`, from the cache or from the host.
    pub async fn read<T, H: Host + ?Sized>(&self, host: &H, fact: &Fact<T>) -> Result<T> {
        if let Some(out) = self.answers.borrow().get(&fact.cmd.script) {
            return Ok((fact.parse)(out));
        }
        fact.read(host).await
    }

    /// As [`Fact::read_checked`]: a cached non-zero exit is the same error.
    pub async fn read_checked<T, H: Host + ?Sized>(&self, host: &H, fact: &Fact<T>) -> Result<T> {
        if let Some(out) = self.answers.borrow().get(&fact.cmd.script) {
            if !out.success() {
                return Err(CommandFailed {
                    host: host.describe(),
                    command: super::first_line(&fact.cmd.script),
                    status: out.status,
                    stderr_tail: out.stderr_tail(),
                }
                .into());
            }
            return Ok((fact.parse)(out));
        }
        fact.read_checked(host).await
    }

    /// Drops every answer: the droplet is about to change.
    pub fn forget(&self) {
        self.answers.borrow_mut().clear();
    }
}

/// A marker no command's output contains by chance.
fn batch_marker() -> String {
    use rand::rand_core::UnwrapErr;
    use rand::rngs::SysRng;
    use rand::Rng;
    let mut bytes = [0u8; 8];
    UnwrapErr(SysRng).fill_bytes(&mut bytes);
    format!("pdsup-fact-{}", hex::encode(bytes))
}

/// One script running `cmds` side by side, each in its own subshell (an
/// `exit` in one ends only that one) with no stdin and its output in a file of
/// its own; then, in order, each one's stdout followed by a line `MARKER STATUS`
/// and its stderr followed by a line `MARKER`, so that [`split_batch`] can give
/// every command its own output back. Side by side because the facts are
/// read-only and most of their time is spent waiting (dpkg's database,
/// Docker's socket): the batch takes about as long as its slowest fact. If no
/// temporary directory can be made the batch fails as a whole, and each fact
/// is then asked on its own.
pub fn batch_cmd(cmds: &[&Cmd], marker: &str) -> Cmd {
    let mut script = String::from("d=$(mktemp -d) || exit 1\ntrap 'rm -rf \"$d\"' EXIT\n");
    for (i, cmd) in cmds.iter().enumerate() {
        script.push_str(&format!(
            "(\n{}\n) </dev/null >\"$d/{i}\" 2>\"$d/{i}.err\" & p{i}=$!\n",
            cmd.script
        ));
    }
    for i in 0..cmds.len() {
        script.push_str(&format!(
            "wait $p{i}; s=$?; cat \"$d/{i}\"; printf '\\n%s %s\\n' {marker} \"$s\"; \
             cat \"$d/{i}.err\" >&2; printf '\\n%s\\n' {marker} >&2\n"
        ));
    }
    Cmd {
        script,
        stdin: Vec::new(),
    }
}

/// Each command's output from a batch's: `None` unless all `count` commands
/// reported (the batch was cut short, or the host lost the connection).
pub fn split_batch(out: &Output, marker: &str, count: usize) -> Option<Vec<Output>> {
    let status_mark = format!("\n{marker} ").into_bytes();
    let stderr_mark = format!("\n{marker}\n").into_bytes();
    let mut outputs = Vec::with_capacity(count);
    let (mut stdout, mut stderr) = (&out.stdout[..], &out.stderr[..]);
    for _ in 0..count {
        let at = find(stdout, &status_mark)?;
        let rest = &stdout[at + status_mark.len()..];
        let eol = rest.iter().position(|&b| b == b'\n')?;
        let status: u32 = std::str::from_utf8(&rest[..eol]).ok()?.parse().ok()?;
        let err_at = find(stderr, &stderr_mark)?;
        outputs.push(Output {
            status: Some(status),
            stdout: stdout[..at].to_vec(),
            stderr: stderr[..err_at].to_vec(),
        });
        stdout = &rest[eol + 1..];
        stderr = &stderr[err_at + stderr_mark.len()..];
    }
    Some(outputs)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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

    fn sh(cmd: &Cmd) -> Output {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd.script)
            .output()
            .unwrap();
        Output {
            status: out.status.code().map(|c| c as u32),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    #[test]
    fn a_batch_runs_its_commands_side_by_side_and_leaves_no_files() {
        // The first command waits (up to 10 s) for a file only the second one
        // makes: it can succeed only if both run at once.
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("second ran");
        let flag = flag.to_str().unwrap();
        let waits = Script::of(
            "for _ in $(seq 100); do [ -e {} ] && { echo seen; exit 0; }; sleep 0.1; done; exit 1",
            &[flag],
        )
        .cmd();
        let makes = Script::of("touch {}", &[flag]).cmd();
        let marker = batch_marker();
        let tmp = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&batch_cmd(&[&waits, &makes], &marker).script)
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let out = Output {
            status: out.status.code().map(|c| c as u32),
            stdout: out.stdout,
            stderr: out.stderr,
        };
        let outputs = split_batch(&out, &marker, 2).expect("all answered");
        assert_eq!(outputs[0].status, Some(0), "{:?}", outputs[0]);
        assert_eq!(outputs[0].stdout, b"seen\n");
        assert_eq!(outputs[1].status, Some(0));
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "the batch left its files"
        );
    }

    #[test]
    fn a_batch_gives_each_command_its_own_output_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("no newline at the end");
        std::fs::write(&file, "last line").unwrap();
        let path = file.to_str().unwrap();
        let cmds = [
            file_text(path).cmd,
            Cmd::sh("echo out; echo err >&2; exit 3"),
            // An `exit` ends its own command only; stdin is empty, not the batch's.
            Cmd::sh("cat; exit 0"),
            Cmd::sh("printf 'two\nlines\n'"),
            file_text(dir.path().join("missing").to_str().unwrap()).cmd,
        ];
        let refs: Vec<&Cmd> = cmds.iter().collect();
        let marker = batch_marker();
        let batch = sh(&batch_cmd(&refs, &marker));
        let outputs = split_batch(&batch, &marker, cmds.len()).expect("all answered");
        for (cmd, got) in cmds.iter().zip(&outputs) {
            let alone = sh(cmd);
            assert_eq!(got.status, alone.status, "{}", cmd.script);
            assert_eq!(got.stdout, alone.stdout, "{}", cmd.script);
            assert_eq!(got.stderr, alone.stderr, "{}", cmd.script);
        }
        assert_eq!(outputs[0].stdout, b"ylast line");
        assert_eq!(
            (outputs[1].status, &outputs[1].stderr[..]),
            (Some(3), &b"err\n"[..])
        );
        assert_eq!(outputs[4].stdout, b"n");
    }

    #[test]
    fn a_batch_cut_short_answers_nothing() {
        let cmds = [Cmd::sh("echo one"), Cmd::sh("echo two")];
        let refs: Vec<&Cmd> = cmds.iter().collect();
        let marker = batch_marker();
        let whole = sh(&batch_cmd(&refs, &marker));
        assert!(split_batch(&whole, &marker, 2).is_some());
        // The connection dropped after the first command.
        let cut = Output {
            status: None,
            stdout: whole.stdout[..whole.stdout.len() - 5].to_vec(),
            stderr: whole.stderr.clone(),
        };
        assert!(split_batch(&cut, &marker, 2).is_none());
        assert!(split_batch(&Output::default(), &marker, 1).is_none());
        // Another batch's marker is not this one's.
        assert!(split_batch(&whole, &batch_marker(), 2).is_none());
    }

    /// This machine's `sh`, counting the round trips.
    #[derive(Default)]
    struct CountingShell {
        execs: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Host for CountingShell {
        async fn exec(&self, cmd: &Cmd) -> Result<Output> {
            self.execs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(sh(cmd))
        }
        async fn forward(&self, _: u16) -> Result<std::net::SocketAddr> {
            crate::bail!("no tunnels here")
        }
        async fn upload(
            &self,
            _: &std::path::Path,
            _: &str,
            _: &super::super::FileMode,
        ) -> Result<()> {
            crate::bail!("no uploads here")
        }
        fn describe(&self) -> String {
            "this machine".into()
        }
    }

    #[tokio::test]
    async fn prefetched_facts_cost_one_round_trip_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.hcl");
        std::fs::write(&file, "client {}\n").unwrap();
        let path = file.to_str().unwrap();
        let failing: Fact<bool> =
            Fact::new(Cmd::sh("echo 'no such unit' >&2; exit 4"), Output::success);
        let host = CountingShell::default();
        let execs = || host.execs.load(std::sync::atomic::Ordering::SeqCst);
        let cache = FactCache::default();
        let cmds = [
            file_text(path).cmd,
            exists(path).cmd,
            failing.cmd.clone(),
            exists(path).cmd,
        ];
        cache.prefetch(&host, &cmds).await.unwrap();
        assert_eq!(execs(), 1);
        assert_eq!(
            cache
                .read_checked(&host, &file_text(path))
                .await
                .unwrap()
                .as_deref(),
            Some("client {}\n")
        );
        assert!(cache.read(&host, &exists(path)).await.unwrap());
        assert!(!cache.read(&host, &failing).await.unwrap());
        let err = cache.read_checked(&host, &failing).await.unwrap_err();
        assert!(format!("{err:#}").contains("no such unit"), "{err:#}");
        // Asked already: nothing to fetch.
        cache.prefetch(&host, &cmds).await.unwrap();
        assert_eq!(execs(), 1);
        // Not prefetched: asked on its own, and not kept.
        assert!(cache
            .read(&host, &is_dir(dir.path().to_str().unwrap()))
            .await
            .unwrap());
        assert_eq!(execs(), 2);
        // After a change, the droplet is asked again.
        std::fs::remove_file(&file).unwrap();
        cache.forget();
        assert!(!cache.read(&host, &exists(path)).await.unwrap());
        assert_eq!(
            cache.read_checked(&host, &file_text(path)).await.unwrap(),
            None
        );
        assert_eq!(execs(), 4);
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
