//! Installing a file that a service reads, so that a bad file never leaves the
//! service down: the new file is written beside the old one as a candidate,
//! checked by the service's own validator, moved into place with the old file
//! kept as a backup, and the unit restarted. When the unit does not come up on
//! the new file, the backup is put back, the unit restarted on it, and the run
//! fails quoting the unit's journal (the line that names the cause), rather than
//! leaving a live site without its proxy or scheduler.
//!
//! The commands are built by pure functions ([`Install::candidate`],
//! [`swap_script`], ...) so that the plan can show them and the tests can check
//! them; [`apply`] only runs them in order through the `Host`.

use crate::error::{bail, Result};

use crate::host::{write_script, FileMode, Host, Script};

/// How many journal lines of the unit a failure quotes.
const JOURNAL_LINES: u32 = 30;

/// (Re)starting `unit`, after installing `file` when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    pub unit: String,
    /// `None`: the file is already right, only the unit needs (re)starting.
    pub file: Option<NewFile>,
}

/// A file's new contents and how to check them before they replace the old.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewFile {
    pub path: String,
    pub contents: String,
    pub mode: FileMode,
    /// A script that exits non-zero when the candidate (at [`candidate_path`])
    /// would not work; `None` when it was checked locally already.
    pub validate: Option<Script>,
}

/// Where the new file is written before it is checked and moved into place.
/// The suffix keeps it out of config directories that load `*.hcl`.
pub fn candidate_path(path: &str) -> String {
    format!("{path}.pdsup-new")
}

/// Where the previous file is kept until the unit runs on the new one.
pub fn backup_path(path: &str) -> String {
    format!("{path}.pdsup-old")
}

/// Keeps a copy of the current file (or notes that there was none, by removing a
/// stale backup) and moves the candidate into place.
pub fn swap_script(path: &str) -> Script {
    let (b, c) = (&backup_path(path), &candidate_path(path));
    Script::of(
        "set -e; if [ -e {} ]; then cp -p {} {}; else rm -f {}; fi; mv -f {} {}",
        &[path, path, b, b, c, path],
    )
}

/// Puts the previous file back, or removes the new one when there was none.
pub fn restore_script(path: &str) -> Script {
    let b = &backup_path(path);
    Script::of(
        "set -e; if [ -e {} ]; then mv -f {} {}; else rm -f {}; fi",
        &[b, b, path, path],
    )
}

/// Removes a file (the refused candidate, the backup once the unit runs).
pub fn remove_script(path: &str) -> Script {
    Script::of("rm -f {}", &[path])
}

/// Restarts the unit (enabled, so it also comes back after a reboot) and
/// succeeds only when it is active afterwards. Both units pdsup manages are
/// `Type=notify`: `restart` returns once the service is ready, or failed.
pub fn restart_script(unit: &str) -> Script {
    Script::of(
        "systemctl enable {} >/dev/null 2>&1; systemctl restart {} && systemctl is-active --quiet {}",
        &[unit, unit, unit],
    )
}

/// Prints the journal's cursor after the unit's last entry (`-- cursor: ...`),
/// so that a failure can quote only what was logged after it.
pub fn cursor_script(unit: &str) -> Script {
    Script::of(
        "journalctl -u {} -n 1 --show-cursor --no-pager -o cat",
        &[unit],
    )
}

/// The cursor in [`cursor_script`]'s output; `None` when the unit has no entries.
pub fn parse_cursor(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("-- cursor: "))
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
}

/// The unit's journal lines after `cursor` (its last lines without one): the
/// service's own words for why it did not start.
pub fn journal_script(unit: &str, cursor: Option<&str>) -> Script {
    let lines = JOURNAL_LINES.to_string();
    match cursor {
        Some(cursor) => Script::of(
            "journalctl -u {} --after-cursor={} -n {} --no-pager -o cat",
            &[unit, cursor, &lines],
        ),
        None => Script::of("journalctl -u {} -n {} --no-pager -o cat", &[unit, &lines]),
    }
}

impl Install {
    /// What the change runs, in order, with each command in full, for the
    /// plan's detail (the file's contents go on stdin, shown as the diff).
    pub fn describe(&self) -> String {
        let unit = &self.unit;
        let mut lines: Vec<String> = Vec::new();
        let mut step = |what: String, cmds: &[&str]| {
            lines.push(format!("  - {what}"));
            for cmd in cmds {
                lines.push(format!("      $ {cmd}"));
            }
        };
        if let Some(file) = &self.file {
            let candidate = candidate_path(&file.path);
            let write = write_script(&candidate, &file.mode, file.contents.len() as u64);
            step(
                format!("write the new file to {candidate} (contents on stdin)"),
                &[&write],
            );
            if let Some(check) = &file.validate {
                step(format!("check it: {check}"), &[]);
                step(
                    "if the check fails: remove the candidate and stop, changing nothing".into(),
                    &[&remove_script(&candidate)],
                );
            }
            step(
                format!(
                    "keep the current file as {} and move the new one into place",
                    backup_path(&file.path)
                ),
                &[&swap_script(&file.path)],
            );
        }
        step(
            "note where the journal ends".into(),
            &[&cursor_script(unit)],
        );
        step(
            format!("restart {unit}, enabled so that it also comes back after a reboot"),
            &[&restart_script(unit)],
        );
        if let Some(file) = &self.file {
            step(
                format!("once {unit} is active: drop the backup"),
                &[&remove_script(&backup_path(&file.path))],
            );
            step(
                format!(
                    "if {unit} does not come up: quote its journal, put the previous {} back and restart it",
                    file.path
                ),
                &[
                    &journal_script(unit, Some("<the cursor noted above>")),
                    &restore_script(&file.path),
                    &restart_script(unit),
                ],
            );
        } else {
            step(
                format!("if {unit} does not come up: quote its journal"),
                &[&journal_script(unit, Some("<the cursor noted above>"))],
            );
        }
        format!("on the droplet:\n{}", lines.join("\n"))
    }
}

/// Runs the install: see the module documentation. Leaves the unit running on
/// the previous file when the new one does not work, and says so.
pub async fn apply(host: &dyn Host, install: &Install) -> Result<()> {
    let unit = &install.unit;
    if let Some(file) = &install.file {
        let candidate = candidate_path(&file.path);
        host.write_file(&candidate, file.contents.as_bytes(), &file.mode)
            .await?;
        if let Some(check) = &file.validate {
            let out = host.exec(&check.clone().cmd()).await?;
            if !out.success() {
                host.exec(&remove_script(&candidate).cmd()).await?;
                bail!(
                    RemoteCommand,
                    "the new {} did not pass `{check}`; the current file was left as it was and {unit} was not restarted:\n{}",
                    file.path,
                    output_tail(&out)
                );
            }
        }
        host.run(&swap_script(&file.path).cmd()).await?;
    }
    let cursor = host
        .exec(&cursor_script(unit).cmd())
        .await
        .ok()
        .and_then(|o| parse_cursor(&o.stdout_str()));
    let started = host.exec(&restart_script(unit).cmd()).await?;
    if started.success() {
        if let Some(file) = &install.file {
            host.run(&remove_script(&backup_path(&file.path)).cmd())
                .await?;
        }
        return Ok(());
    }
    // The journal is read before the restore, so that it tells of the new file.
    let journal = host
        .exec(&journal_script(unit, cursor.as_deref()).cmd())
        .await
        .map(|o| indent(&o.stdout_str()))
        .unwrap_or_else(|e| format!("  (could not read the journal: {e:#})"));
    let Some(file) = &install.file else {
        bail!(
            Unhealthy,
            "{unit} did not start. Its journal (journalctl -u {unit}):\n{journal}\nFix the cause, then run pdsup again"
        );
    };
    host.run(&restore_script(&file.path).cmd()).await?;
    let again = host.exec(&restart_script(unit).cmd()).await?;
    let now = if again.success() {
        format!(
            "the previous {} was put back and {unit} runs on it again",
            file.path
        )
    } else {
        format!(
            "the previous {} was put back, but {unit} does not start on it either",
            file.path
        )
    };
    bail!(
        Unhealthy,
        "{unit} did not start with the new {}; {now}. Its journal from the failed start (journalctl -u {unit}):\n{journal}\nFix the cause, then run pdsup again",
        file.path
    )
}

fn output_tail(out: &crate::host::Output) -> String {
    let mut text = out.stdout_str();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.trim_end().lines().collect();
    indent(&lines[lines.len().saturating_sub(20)..].join("\n"))
}

fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::host::{Cmd, Output};

    #[test]
    fn scripts_keep_the_old_file_until_the_unit_runs_on_the_new_one() {
        let path = "/etc/caddy/Caddyfile";
        assert_eq!(candidate_path(path), "/etc/caddy/Caddyfile.pdsup-new");
        assert_eq!(
            swap_script(path),
            "set -e; if [ -e /etc/caddy/Caddyfile ]; then cp -p /etc/caddy/Caddyfile /etc/caddy/Caddyfile.pdsup-old; \
             else rm -f /etc/caddy/Caddyfile.pdsup-old; fi; mv -f /etc/caddy/Caddyfile.pdsup-new /etc/caddy/Caddyfile"
        );
        assert_eq!(
            restore_script(path),
            "set -e; if [ -e /etc/caddy/Caddyfile.pdsup-old ]; then mv -f /etc/caddy/Caddyfile.pdsup-old /etc/caddy/Caddyfile; \
             else rm -f /etc/caddy/Caddyfile; fi"
        );
        assert!(restart_script("nomad")
            .contains("systemctl restart nomad && systemctl is-active --quiet nomad"));
        assert_eq!(
            journal_script("nomad", None),
            "journalctl -u nomad -n 30 --no-pager -o cat"
        );
        assert_eq!(
            journal_script("nomad", Some("s=1;i=2")),
            "journalctl -u nomad --after-cursor='s=1;i=2' -n 30 --no-pager -o cat"
        );
        assert_eq!(
            parse_cursor("Started nomad\n-- cursor: s=1;i=2\n").as_deref(),
            Some("s=1;i=2")
        );
        assert_eq!(parse_cursor("-- No entries --\n"), None);
    }

    /// The swap and restore scripts, run for real on a temporary directory.
    #[test]
    fn swap_then_restore_gives_back_the_previous_file_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.conf");
        let p = path.to_str().unwrap();
        let sh = |script: Script| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        std::fs::write(&path, "old").unwrap();
        std::fs::write(candidate_path(p), "new").unwrap();
        sh(swap_script(p));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(!std::path::Path::new(&candidate_path(p)).exists());
        sh(restore_script(p));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert!(!std::path::Path::new(&backup_path(p)).exists());

        // No previous file: restoring removes the new one.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(backup_path(p), "stale").unwrap();
        std::fs::write(candidate_path(p), "new").unwrap();
        sh(swap_script(p));
        sh(restore_script(p));
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A host that records the scripts it is given and answers each with the
    /// first matching canned exit status (0 when none matches).
    struct Recorder {
        scripts: Mutex<Vec<String>>,
        /// (substring of the script, exit statuses for successive matches)
        answers: Mutex<Vec<(&'static str, Vec<u32>)>>,
    }

    impl Recorder {
        fn new(answers: Vec<(&'static str, Vec<u32>)>) -> Self {
            Recorder {
                scripts: Mutex::new(Vec::new()),
                answers: Mutex::new(answers),
            }
        }

        fn scripts(&self) -> Vec<String> {
            self.scripts.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Host for Recorder {
        async fn exec(&self, cmd: &Cmd) -> Result<Output> {
            self.scripts.lock().unwrap().push(cmd.script.clone());
            let mut status = 0;
            let mut stdout = Vec::new();
            for (needle, statuses) in self.answers.lock().unwrap().iter_mut() {
                if cmd.script.contains(*needle) {
                    if !statuses.is_empty() {
                        status = statuses.remove(0);
                    }
                    if needle.starts_with("--show-cursor") {
                        stdout = b"Started nomad\n-- cursor: s=abc;i=7\n".to_vec();
                    } else if needle.starts_with("journalctl") {
                        stdout = b"==> failed to validate volume io, err: stat /srv/nomad/io: no such file or directory\n".to_vec();
                    }
                    break;
                }
            }
            Ok(Output {
                status: Some(status),
                stdout,
                stderr: b"caddy: bad directive\n".to_vec(),
            })
        }

        async fn forward(&self, _: u16) -> Result<SocketAddr> {
            unreachable!()
        }

        async fn upload(&self, _: &std::path::Path, _: &str, _: &FileMode) -> Result<()> {
            unreachable!()
        }

        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    fn install(validate: Option<&'static str>) -> Install {
        Install {
            unit: "nomad".into(),
            file: Some(NewFile {
                path: "/etc/nomad.d/nomad.hcl".into(),
                contents: "client {}\n".into(),
                mode: FileMode::root(0o640),
                validate: validate.map(|v| Script::of(v, &[])),
            }),
        }
    }

    /// The first word of each script, and the path or unit it acts on.
    fn sequence(scripts: &[String]) -> Vec<&'static str> {
        scripts
            .iter()
            .map(|s| {
                if s.contains("mktemp") {
                    "write candidate"
                } else if s.starts_with("validate") {
                    "validate"
                } else if s.contains("cp -p") {
                    "swap"
                } else if s.contains("systemctl restart") {
                    "restart"
                } else if s.contains("--show-cursor") {
                    "cursor"
                } else if s.starts_with("journalctl") {
                    "journal"
                } else if s.contains("mv -f /etc/nomad.d/nomad.hcl.pdsup-old") {
                    "restore"
                } else if s.starts_with("rm -f") && s.contains("pdsup-old") {
                    "drop backup"
                } else if s.starts_with("rm -f") && s.contains("pdsup-new") {
                    "drop candidate"
                } else {
                    panic!("unexpected script {s}")
                }
            })
            .collect()
    }

    fn run(host: &Recorder, install: &Install) -> Result<()> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(apply(host, install))
    }

    #[test]
    fn a_unit_that_starts_on_the_new_file_keeps_it() {
        let host = Recorder::new(vec![]);
        run(&host, &install(Some("validate it"))).unwrap();
        assert_eq!(
            sequence(&host.scripts()),
            [
                "write candidate",
                "validate",
                "swap",
                "cursor",
                "restart",
                "drop backup"
            ]
        );
        assert!(host.scripts()[0].contains("/etc/nomad.d/nomad.hcl.pdsup-new"));
    }

    #[test]
    fn a_refused_candidate_changes_nothing() {
        let host = Recorder::new(vec![("validate", vec![1])]);
        let err = run(&host, &install(Some("validate it"))).unwrap_err();
        assert_eq!(
            sequence(&host.scripts()),
            ["write candidate", "validate", "drop candidate"]
        );
        let msg = format!("{err:#}");
        assert!(msg.contains("did not pass `validate it`"), "{msg}");
        assert!(msg.contains("caddy: bad directive"), "{msg}");
        assert!(msg.contains("was not restarted"), "{msg}");
    }

    #[test]
    fn a_unit_that_fails_on_the_new_file_gets_the_old_one_back_and_the_journal_is_quoted() {
        let host = Recorder::new(vec![
            ("systemctl restart", vec![1, 0]),
            ("--show-cursor", vec![0]),
            ("journalctl", vec![0]),
        ]);
        let err = run(&host, &install(None)).unwrap_err();
        let scripts = host.scripts();
        assert_eq!(
            sequence(&scripts),
            [
                "write candidate",
                "swap",
                "cursor",
                "restart",
                "journal",
                "restore",
                "restart"
            ]
        );
        // Only what was logged since the failed restart began is quoted.
        assert!(
            scripts[4].contains("--after-cursor='s=abc;i=7'"),
            "{}",
            scripts[4]
        );
        let msg = format!("{err:#}");
        assert!(
            msg.contains(
                "failed to validate volume io, err: stat /srv/nomad/io: no such file or directory"
            ),
            "{msg}"
        );
        assert!(msg.contains("runs on it again"), "{msg}");
        assert!(!msg.contains("systemctl status"), "{msg}");
    }

    #[test]
    fn a_unit_that_fails_on_the_old_file_too_is_reported_as_down() {
        let host = Recorder::new(vec![
            ("systemctl restart", vec![1, 1]),
            ("journalctl", vec![0]),
        ]);
        let msg = format!("{:#}", run(&host, &install(None)).unwrap_err());
        assert!(msg.contains("does not start on it either"), "{msg}");
    }

    #[test]
    fn a_start_without_a_new_file_quotes_the_journal() {
        let host = Recorder::new(vec![
            ("systemctl restart", vec![1]),
            ("journalctl", vec![0]),
        ]);
        let only_start = Install {
            unit: "nomad".into(),
            file: None,
        };
        let msg = format!("{:#}", run(&host, &only_start).unwrap_err());
        assert_eq!(sequence(&host.scripts()), ["cursor", "restart", "journal"]);
        assert!(msg.contains("failed to validate volume io"), "{msg}");
    }

    #[test]
    fn describe_lists_the_commands_in_order() {
        let text = install(Some("caddy validate --config X")).describe();
        let check = text.find("check it: caddy validate").unwrap();
        let swap = text.find("nomad.hcl.pdsup-old").unwrap();
        let restart = text.find("systemctl restart nomad").unwrap();
        assert!(check < swap && swap < restart, "{text}");
        assert!(text.contains("put the previous /etc/nomad.d/nomad.hcl back"));
    }
}
