//! `pdsup logs [pds|proxy|nomad]`: the PDS (and IO) from Nomad's allocation
//! logs through the tunnel to Nomad's API, Nomad and Caddy from the journal
//! on the droplet. `--follow` streams Nomad's logs and polls the journal
//! with its cursor; `--since` keeps what is newer than a duration ago (the
//! PDS's JSON lines by their `time`, the journal by `--since`).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::error::{bail, Result};
use crate::host::Script;
use crate::nomad::api::{LogStream, NomadApi};
use crate::plan::Progress;
use crate::settings::{Proxy, NOMAD_HTTP_PORT};
use crate::ui::Ui;

use super::account::Reach;
use super::Output;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The PDS's own log (Nomad's allocation logs of job pds)
    Pds,
    /// The proxy: Caddy's journal, or IO's allocation logs
    Proxy,
    /// The Nomad agent's journal
    Nomad,
}

pub struct Request {
    pub source: Source,
    pub follow: bool,
    pub since: Option<Duration>,
    pub lines: usize,
}

/// How much of a task's log is fetched to find the last lines.
const TAIL_BYTES: u64 = 256 * 1024;

/// `30s`, `10m`, `2h`, `3d` (or a bare number of seconds).
pub fn parse_since(text: &str) -> Result<Duration> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = match number.parse() {
        Ok(n) => n,
        Err(_) => bail!(
            BadInput,
            "--since {text:?}: give a duration such as 30s, 10m, 2h or 3d"
        ),
    };
    let seconds = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!(
            BadInput,
            "--since {text:?}: unknown unit {unit:?} (s, m, h or d)"
        ),
    };
    Ok(Duration::from_secs(n * seconds))
}

/// The `time` (ms since the epoch) of one of the PDS's JSON log lines.
fn line_time(line: &str) -> Option<i64> {
    if !line.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(line).ok()?["time"].as_i64()
}

/// Lines of both streams in time order (stable); a line without a time
/// stays after the line before it.
pub fn merge_by_time(streams: &[&str]) -> Vec<String> {
    let mut lines: Vec<(i64, usize, String)> = Vec::new();
    let mut n = 0;
    for text in streams {
        let mut last = i64::MIN;
        for line in text.lines() {
            if let Some(t) = line_time(line) {
                last = t;
            }
            lines.push((last, n, line.to_string()));
            n += 1;
        }
    }
    lines.sort_by_key(|(t, i, _)| (*t, *i));
    lines.into_iter().map(|(_, _, l)| l).collect()
}

/// Keeps the lines at or after `since_ms`; a line without a time follows the
/// verdict on the line before it (a stack trace stays with its message).
pub fn filter_since(lines: Vec<String>, since_ms: Option<i64>) -> Vec<String> {
    let Some(since) = since_ms else {
        return lines;
    };
    let mut keep = false;
    lines
        .into_iter()
        .filter(|l| {
            if let Some(t) = line_time(l) {
                keep = t >= since;
            }
            keep
        })
        .collect()
}

fn last(lines: Vec<String>, n: usize) -> Vec<String> {
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip).collect()
}

/// The journal of `unit`: the last `lines` (or those after `cursor`), with
/// the cursor to continue from.
pub fn journal_script(
    unit: &str,
    lines: usize,
    since_epoch: Option<u64>,
    cursor: Option<&str>,
) -> Script {
    let mut script = Script::of(
        "journalctl --no-pager -o short-iso --show-cursor -u {}",
        &[unit],
    );
    if let Some(c) = cursor {
        script = script.push(" --after-cursor={}", &[c]);
    } else {
        script = script.push(" -n {}", &[&lines.to_string()]);
        if let Some(e) = since_epoch {
            script = script.push(" --since {}", &[&format!("@{e}")]);
        }
    }
    script
}

/// journalctl's output without its `-- cursor: ...` line, and that cursor.
pub fn split_cursor(output: &str) -> (Vec<String>, Option<String>) {
    let mut cursor = None;
    let mut lines = Vec::new();
    for line in output.lines() {
        if let Some(c) = line.strip_prefix("-- cursor: ") {
            cursor = Some(c.trim().to_string());
        } else if line != "-- No entries --" {
            lines.push(line.to_string());
        }
    }
    (lines, cursor)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Prints lines as they are (or as JSON lines with `--json --follow`).
struct Printer {
    json: bool,
    out: Mutex<()>,
}

impl Printer {
    fn lines(&self, lines: &[String]) {
        let _guard = self.out.lock().expect("stdout lock");
        let mut stdout = std::io::stdout().lock();
        for l in lines {
            let _ = if self.json {
                writeln!(stdout, "{}", json!({ "line": l }))
            } else {
                writeln!(stdout, "{l}")
            };
        }
        let _ = stdout.flush();
    }
}

pub async fn logs(reach: Reach<'_>, request: Request, output: Output) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let proxy = reach.site.settings.proxy;
    let destination = reach.site.destination(reach.dest)?;
    let session = reach.site.connect(destination, &reach.options).await?;
    let host = session.host.as_ref();
    let since_epoch = request
        .since
        .map(|d| now_secs().saturating_sub(d.as_secs()));
    let target = match (request.source, proxy) {
        (Source::Pds, _) => Target::Job("pds"),
        (Source::Proxy, Proxy::Io) => Target::Job("io"),
        (Source::Proxy, Proxy::Caddy) => Target::Unit("caddy"),
        (Source::Nomad, _) => Target::Unit("nomad"),
    };
    let printer = Printer {
        json: output.json && request.follow,
        out: Mutex::new(()),
    };
    match target {
        Target::Job(job) => {
            ui.progress(&format!("asking Nomad for job {job}'s allocation"));
            let addr = host.forward(NOMAD_HTTP_PORT).await?;
            let nomad = NomadApi::new(addr);
            let (alloc, task) = running_task(&nomad, job).await?;
            let since_ms = since_epoch.map(|e| e as i64 * 1000);
            let mut texts = Vec::new();
            for stream in [LogStream::Stdout, LogStream::Stderr] {
                let bytes = nomad.log_tail(&alloc, &task, stream, TAIL_BYTES).await?;
                texts.push(String::from_utf8_lossy(&bytes).into_owned());
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let lines = last(filter_since(merge_by_time(&refs), since_ms), request.lines);
            ui.clear();
            if !request.follow {
                return print_all(output, request.source, &lines);
            }
            printer.lines(&lines);
            // Only what comes after: the tail is printed already.
            let follow = |stream| {
                let nomad = nomad.clone();
                let (alloc, task, printer) = (alloc.clone(), task.clone(), &printer);
                async move {
                    let mut pending = Vec::new();
                    let mut sink = |chunk: &[u8]| {
                        pending.extend_from_slice(chunk);
                        if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
                            let text = String::from_utf8_lossy(&pending[..end]).into_owned();
                            pending.drain(..=end);
                            let lines: Vec<String> = text.lines().map(str::to_string).collect();
                            printer.lines(&filter_since(lines, since_ms));
                        }
                    };
                    nomad.follow_log(&alloc, &task, stream, 0, &mut sink).await
                }
            };
            tokio::select! {
                r = async { tokio::try_join!(follow(LogStream::Stdout), follow(LogStream::Stderr)) } => { r?; }
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        }
        Target::Unit(unit) => {
            ui.progress(&format!("reading {unit}'s journal"));
            let out = host
                .run(&journal_script(unit, request.lines, since_epoch, None).cmd())
                .await?;
            let (lines, mut cursor) = split_cursor(&out.stdout_str());
            ui.clear();
            if !request.follow {
                return print_all(output, request.source, &lines);
            }
            printer.lines(&lines);
            let poll = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let out = host
                        .run(&journal_script(unit, request.lines, None, cursor.as_deref()).cmd())
                        .await?;
                    let (lines, next) = split_cursor(&out.stdout_str());
                    printer.lines(&lines);
                    if next.is_some() {
                        cursor = next;
                    }
                    if !host.connected() {
                        bail!(Ssh, "the connection to {} was lost", host.describe());
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), crate::error::Error>(())
            };
            tokio::select! {
                r = poll => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
    }
}

enum Target {
    Job(&'static str),
    Unit(&'static str),
}

/// The newest allocation of `job` that is meant to run, and its task.
async fn running_task(nomad: &NomadApi, job: &str) -> Result<(String, String)> {
    let allocs = nomad.allocations(job).await?;
    let Some(alloc) = allocs
        .iter()
        .filter(|a| a.desired_status == "run")
        .max_by_key(|a| (a.create_index, a.create_time))
        .or_else(|| {
            allocs
                .iter()
                .max_by_key(|a| (a.create_index, a.create_time))
        })
    else {
        bail!(
            Unhealthy,
            "job {job} has no allocation in Nomad, so no logs (`pdsup status`; `pdsup up` starts it)"
        );
    };
    let task = if alloc.task_states.contains_key(job) || alloc.task_states.is_empty() {
        job.to_string()
    } else {
        alloc.task_states.keys().next().cloned().unwrap_or_default()
    };
    Ok((alloc.id.clone(), task))
}

fn print_all(output: Output, source: Source, lines: &[String]) -> Result<()> {
    if output.json {
        let name = match source {
            Source::Pds => "pds",
            Source::Proxy => "proxy",
            Source::Nomad => "nomad",
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"source": name, "lines": lines}))?
        );
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_since() {
        assert_eq!(parse_since("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_since("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_since("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_since("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_since("45").unwrap(), Duration::from_secs(45));
        for bad in ["", "h", "10y", "-5m", "yesterday"] {
            let err = parse_since(bad).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::BadInput, "{bad}");
        }
    }

    #[test]
    fn streams_merge_by_time_and_since_keeps_continuations() {
        let out = "{\"time\":1000,\"msg\":\"a\"}\n{\"time\":3000,\"msg\":\"c\"}\n";
        let err = "{\"time\":2000,\"msg\":\"b\"}\n  at trace line\nplain start\n";
        let merged = merge_by_time(&[out, err]);
        assert_eq!(
            merged,
            vec![
                "{\"time\":1000,\"msg\":\"a\"}",
                "{\"time\":2000,\"msg\":\"b\"}",
                "  at trace line",
                "plain start",
                "{\"time\":3000,\"msg\":\"c\"}",
            ]
        );
        let since = filter_since(merged.clone(), Some(2000));
        assert_eq!(since.len(), 4, "{since:?}");
        assert_eq!(since[1], "  at trace line");
        assert_eq!(filter_since(merged.clone(), None).len(), 5);
        assert_eq!(last(merged, 2).len(), 2);
    }

    #[test]
    fn the_journal_is_read_by_unit_and_continued_by_cursor() {
        assert_eq!(
            journal_script("caddy", 100, Some(1700000000), None).as_str(),
            "journalctl --no-pager -o short-iso --show-cursor -u caddy -n 100 --since @1700000000"
        );
        assert_eq!(
            journal_script("nomad", 100, Some(1), Some("s=ab;i=1")).as_str(),
            "journalctl --no-pager -o short-iso --show-cursor -u nomad --after-cursor='s=ab;i=1'"
        );
        let (lines, cursor) =
            split_cursor("2026-12-03T10:00:00+0000 host caddy[1]: hi\n-- cursor: s=ab;i=2\n");
        assert_eq!(lines, vec!["2026-12-03T10:00:00+0000 host caddy[1]: hi"]);
        assert_eq!(cursor.as_deref(), Some("s=ab;i=2"));
        let (none, cursor) = split_cursor("-- No entries --\n");
        assert!(none.is_empty() && cursor.is_none());
    }
}
