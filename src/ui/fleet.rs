//! What `pdsup fleet` shows: one progress line per site (indicatif's
//! multi-progress on a terminal, plain lines prefixed with the site
//! otherwise), each site's full log in a file of its own, the closing table,
//! and the handouts (a printable page per participant, one CSV for the
//! organiser). Rendering is pure; the files are written by `ops::fleet`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Mode;
use crate::plan::{render_plan, Change, Progress, StepId, StepPlan};

/// The progress of a whole fleet: one line per site.
pub struct FleetUi {
    mode: Mode,
    multi: MultiProgress,
}

impl FleetUi {
    pub fn new(json: bool, quiet: bool) -> Self {
        let mode = if quiet || json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Tty
        } else {
            Mode::Plain
        };
        let multi = match mode {
            Mode::Tty => MultiProgress::new(),
            _ => MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        };
        FleetUi { mode, multi }
    }

    /// A site's progress: its line, and its log file (created, 0600: it is
    /// the organiser's, though it never holds a secret).
    pub fn site(&self, hostname: &str, log: File) -> SiteProgress {
        let bar = match self.mode {
            Mode::Tty => {
                let bar = self.multi.add(ProgressBar::new_spinner()).with_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:.bold} {wide_msg} {elapsed:.dim}",
                    )
                    .expect("valid template"),
                );
                bar.set_prefix(hostname.to_string());
                bar.set_message("waiting for a free slot (--parallel)");
                bar.enable_steady_tick(Duration::from_millis(120));
                Some(bar)
            }
            _ => None,
        };
        SiteProgress {
            hostname: hostname.to_string(),
            mode: self.mode,
            bar,
            log: Mutex::new(log),
            started: Instant::now(),
        }
    }

    /// A line above the sites' lines (warnings before the run).
    pub fn line(&self, text: &str) {
        match self.mode {
            Mode::Tty => {
                let _ = self.multi.println(text);
            }
            Mode::Plain => eprintln!("{text}"),
            Mode::Quiet => {}
        }
    }
}

/// One site's progress: its line on the terminal, every event in its log.
pub struct SiteProgress {
    hostname: String,
    mode: Mode,
    bar: Option<ProgressBar>,
    log: Mutex<File>,
    started: Instant,
}

impl SiteProgress {
    /// Into the site's log only.
    pub fn log(&self, text: &str) {
        let elapsed = self.started.elapsed().as_secs();
        let mut file = self.log.lock().expect("log lock");
        for line in text.lines() {
            let _ = writeln!(file, "[{:>4}s] {line}", elapsed);
        }
    }

    /// Into the log, and the site's line.
    pub fn status(&self, text: &str) {
        self.log(text);
        match self.mode {
            Mode::Tty => {
                if let Some(bar) = &self.bar {
                    bar.set_message(text.to_string());
                }
            }
            Mode::Plain => eprintln!("{}: {text}", self.hostname),
            Mode::Quiet => {}
        }
    }

    /// The site's last line: its result.
    pub fn finish(&self, ok: bool, verdict: &str) {
        self.log(verdict);
        match self.mode {
            Mode::Tty => {
                if let Some(bar) = &self.bar {
                    let mark = if ok { "✓" } else { "✗" };
                    bar.set_style(
                        ProgressStyle::with_template("{prefix:.bold} {wide_msg}")
                            .expect("valid template"),
                    );
                    bar.set_prefix(format!("{mark} {}", self.hostname));
                    bar.finish_with_message(verdict.to_string());
                }
            }
            Mode::Plain => eprintln!("{}: {verdict}", self.hostname),
            Mode::Quiet => {}
        }
    }
}

impl Progress for SiteProgress {
    fn step_started(&self, index: usize, total: usize, step: StepId) {
        self.status(&format!("[{index}/{total}] {}", step.name()));
    }

    fn show_plan(&self, plan: &StepPlan, dry_run: bool) {
        for note in &plan.notes {
            self.log(&format!("  note: {note}"));
        }
        if dry_run {
            self.log(&render_plan(plan, true));
        }
    }

    fn change_started(&self, change: &Change) {
        self.log(&format!("  → {}", change.summary));
        if let Some(bar) = &self.bar {
            bar.set_message(change.summary.clone());
        }
    }

    fn progress(&self, message: &str) {
        self.log(&format!("    {message}"));
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
        }
    }

    fn waiting(&self, message: &str) {
        self.status(message);
    }

    fn step_finished(&self, step: StepId, plan: &StepPlan, dry_run: bool) {
        let verdict = match (plan.changes.len(), dry_run) {
            (0, _) => "unchanged".to_string(),
            (n, true) => format!("{n} change(s) planned"),
            (n, false) => format!("{n} change(s) applied"),
        };
        self.log(&format!("  {}: {verdict}", step.name()));
    }

    fn note(&self, message: &str) {
        self.log(&format!("  note: {message}"));
    }
}

/// One line of the closing table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRow {
    pub hostname: String,
    /// What happened (`converged`, `unchanged`, `healthy (0.4.1)`), or why it failed.
    pub result: Result<String, String>,
    pub accounts_created: usize,
    pub accounts_existing: usize,
    pub dns_records: Vec<String>,
    pub seconds: u64,
    /// The site's full log.
    pub log: String,
    /// `fleet backup`'s archive of the site, once made.
    pub backup: Option<BackupCell>,
}

/// A site's archive, as `fleet backup`'s table shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCell {
    pub archive: String,
    pub bytes: u64,
    pub accounts: usize,
}

impl SiteRow {
    /// The row in `--json`'s `sites`.
    pub fn json(&self) -> serde_json::Value {
        let (result, error) = match &self.result {
            Ok(what) => (Some(what), None),
            Err(why) => (None, Some(why)),
        };
        let mut row = serde_json::json!({
            "hostname": self.hostname,
            "ok": self.result.is_ok(),
            "result": result,
            "error": error,
            "accounts_created": self.accounts_created,
            "accounts_existing": self.accounts_existing,
            "dns_records": self.dns_records,
            "seconds": self.seconds,
            "log": self.log,
        });
        if let Some(b) = &self.backup {
            row["backup"] = serde_json::json!({
                "archive": b.archive,
                "bytes": b.bytes,
                "accounts": b.accounts,
            });
        }
        row
    }
}

fn minutes(seconds: u64) -> String {
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

/// A size in bytes for people: `512 B`, `3.4 KiB`, `12.0 MiB`, `1.2 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The width of a table's SITE column.
fn site_width(rows: &[SiteRow]) -> usize {
    rows.iter()
        .map(|r| r.hostname.len())
        .max()
        .unwrap_or(0)
        .max(4)
}

/// `fleet backup`'s closing table: each site's time, archive size, accounts
/// and archive, or why it failed.
pub fn render_backup_table(rows: &[SiteRow]) -> String {
    let width = site_width(rows);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>6}  {:>10}  {:>8}  ARCHIVE",
        "SITE", "TIME", "SIZE", "ACCOUNTS"
    );
    for row in rows {
        let (size, accounts, what) = match (&row.result, &row.backup) {
            (Ok(_), Some(b)) => (
                human_size(b.bytes),
                b.accounts.to_string(),
                b.archive.clone(),
            ),
            (Ok(what), None) => ("-".into(), "-".into(), what.clone()),
            (Err(why), _) => (
                "-".into(),
                "-".into(),
                format!("FAILED: {why} (log: {})", row.log),
            ),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {size:>10}  {accounts:>8}  {what}",
            row.hostname,
            minutes(row.seconds)
        );
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.hostname.as_str())
        .collect();
    if !failed.is_empty() {
        let only: Vec<String> = failed.iter().map(|h| format!("--only {h}")).collect();
        let _ = writeln!(
            out,
            "\n{} of {} sites failed: fix the cause, then back up just them with \
             `pdsup fleet backup FILE {}`",
            failed.len(),
            rows.len(),
            only.join(" ")
        );
    }
    out
}

/// The closing table: each site's result, its accounts and its time, then
/// the DNS records to add, site by site.
pub fn render_table(rows: &[SiteRow], with_accounts: bool) -> String {
    let width = site_width(rows);
    let mut out = String::new();
    let accounts_head = if with_accounts { "ACCOUNTS       " } else { "" };
    let _ = writeln!(
        out,
        "{:<width$}  {:>6}  {accounts_head}RESULT",
        "SITE", "TIME"
    );
    for row in rows {
        let time = minutes(row.seconds);
        let accounts = if !with_accounts {
            String::new()
        } else if row.result.is_ok() {
            format!(
                "{:<15}",
                format!(
                    "{} new, {} had",
                    row.accounts_created, row.accounts_existing
                )
            )
        } else {
            format!("{:<15}", "-")
        };
        let result = match &row.result {
            Ok(what) => what.clone(),
            Err(why) => format!("FAILED: {why} (log: {})", row.log),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {time:>6}  {accounts}{result}",
            row.hostname
        );
    }
    let failed = rows.iter().filter(|r| r.result.is_err()).count();
    if failed > 0 {
        let _ = writeln!(
            out,
            "\n{failed} of {} sites failed: fix the cause and run the same command again; \
             the sites that converged are skipped quickly",
            rows.len()
        );
    }
    if rows.iter().any(|r| !r.dns_records.is_empty()) {
        out.push_str("\nDNS records to add at your DNS provider:\n");
        for row in rows.iter().filter(|r| !r.dns_records.is_empty()) {
            let _ = writeln!(out, "  {}:", row.hostname);
            for record in &row.dns_records {
                let _ = writeln!(out, "    {record}");
            }
        }
    }
    out
}

/// An account as the handouts show it. The password is there on purpose:
/// handouts are files of mode 0600, never logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handout {
    pub site: String,
    pub handle: String,
    pub email: String,
    pub display_name: Option<String>,
    pub did: Option<String>,
    /// `None` for an account pdsup did not make (its password is not known here).
    pub password: Option<String>,
}

impl Handout {
    pub fn pds_url(&self) -> String {
        format!("https://{}", self.site)
    }
}

/// How to log in from a Bluesky client, as one line (the CSV's column).
pub fn login_steps(h: &Handout) -> String {
    format!(
        "In the Bluesky app: Sign in, then under Hosting provider choose Custom and enter {}; \
         then your handle {} and the password; change the password in Settings after logging in",
        h.pds_url(),
        h.handle
    )
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A printable page for one participant.
pub fn render_handout_html(h: &Handout) -> String {
    let e = |s: &str| html_escape(s);
    let name = h.display_name.as_deref().unwrap_or(&h.handle);
    let password = match &h.password {
        Some(p) => format!("<code class=\"secret\">{}</code>", e(p)),
        None => "<em>not known to pdsup (the account existed already); ask the organiser for a reset</em>".to_string(),
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Your Bluesky account: {handle}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 40em; margin: 2em auto; line-height: 1.5; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: .3em 1em .3em 0; vertical-align: top; }}
code {{ font-size: 1.2em; }}
.secret {{ font-weight: bold; letter-spacing: .05em; }}
</style>
</head>
<body>
<h1>Welcome, {name}</h1>
<p>This is your account on the workshop's Personal Data Server.</p>
<table>
<tr><th>Handle</th><td><code>{handle}</code></td></tr>
<tr><th>Password</th><td>{password} (one-time: change it after your first login)</td></tr>
<tr><th>Server (PDS)</th><td><code>{url}</code></td></tr>
<tr><th>Email</th><td>{email}</td></tr>
</table>
<h2>How to log in from a Bluesky client</h2>
<ol>
<li>Open the Bluesky app (or bsky.app) and choose <strong>Sign in</strong>.</li>
<li>Under <strong>Hosting provider</strong>, choose <strong>Custom</strong> and enter <code>{url}</code>.</li>
<li>Enter your handle <code>{handle}</code> and the password above.</li>
<li>In <strong>Settings → Privacy and security</strong>, change your password.</li>
</ol>
</body>
</html>
"#,
        handle = e(&h.handle),
        name = e(name),
        url = e(&h.pds_url()),
        email = e(&h.email),
    )
}

/// One CSV field, quoted when it must be (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The organiser's CSV: one row per account of every site.
pub fn render_csv(handouts: &[Handout]) -> String {
    let mut out =
        String::from("site,handle,email,display_name,password,pds_url,did,how_to_log_in\n");
    for h in handouts {
        let fields = [
            h.site.clone(),
            h.handle.clone(),
            h.email.clone(),
            h.display_name.clone().unwrap_or_default(),
            h.password.clone().unwrap_or_default(),
            h.pds_url(),
            h.did.clone().unwrap_or_default(),
            login_steps(h),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, result: Result<&str, &str>) -> SiteRow {
        SiteRow {
            hostname: host.into(),
            result: result.map(str::to_string).map_err(str::to_string),
            accounts_created: 2,
            accounts_existing: 0,
            dns_records: if result.is_ok() {
                vec![format!("A    {host:<40} 10.0.0.1")]
            } else {
                vec![]
            },
            seconds: 125,
            log: format!("/out/logs/{host}.log"),
            backup: None,
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }

    #[test]
    fn the_backup_table_gives_each_archive_or_why_there_is_none() {
        let mut made = row("t1.workshop.example", Ok("backed up"));
        made.backup = Some(BackupCell {
            archive: "/state/sites/t1.workshop.example/backups/t1-20261203T180000Z.tar.gz".into(),
            bytes: 5 * 1024 * 1024 / 2,
            accounts: 3,
        });
        made.seconds = 9;
        let failed = row(
            "t2.workshop.example",
            Err("connecting to root@10.0.0.9: timed out"),
        );
        let rows = [made.clone(), failed];
        let table = render_backup_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "SITE                   TIME        SIZE  ACCOUNTS  ARCHIVE"
        );
        assert_eq!(
            lines[1],
            "t1.workshop.example   0m09s     2.5 MiB         3  /state/sites/t1.workshop.example/backups/t1-20261203T180000Z.tar.gz"
        );
        assert_eq!(
            lines[2],
            "t2.workshop.example   2m05s           -         -  FAILED: connecting to root@10.0.0.9: timed out (log: /out/logs/t2.workshop.example.log)"
        );
        assert!(
            table.contains("1 of 2 sites failed: fix the cause, then back up just them with `pdsup fleet backup FILE --only t2.workshop.example`"),
            "{table}"
        );
        let json = made.json();
        assert_eq!(json["backup"]["bytes"], 5 * 1024 * 1024 / 2);
        assert_eq!(json["backup"]["accounts"], 3);
        assert!(rows[1].json().get("backup").is_none());
    }

    #[test]
    fn the_table_names_each_site_its_result_and_the_failed_ones_why() {
        let rows = [
            row("t1.workshop.example", Ok("converged")),
            row(
                "t2.workshop.example",
                Err("connecting to root@10.0.0.9: timed out"),
            ),
        ];
        let table = render_table(&rows, true);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "SITE                   TIME  ACCOUNTS       RESULT"
        );
        assert_eq!(
            lines[1],
            "t1.workshop.example   2m05s  2 new, 0 had   converged"
        );
        assert_eq!(
            lines[2],
            "t2.workshop.example   2m05s  -              FAILED: connecting to root@10.0.0.9: timed out (log: /out/logs/t2.workshop.example.log)"
        );
        assert!(table.contains("1 of 2 sites failed"), "{table}");
        assert!(
            table.contains("  t1.workshop.example:\n    A    t1.workshop.example"),
            "{table}"
        );
        assert!(!table.contains("  t2.workshop.example:\n"), "{table}");
        assert_eq!(
            rows[1].json(),
            serde_json::json!({
                "hostname": "t2.workshop.example",
                "ok": false,
                "result": null,
                "error": "connecting to root@10.0.0.9: timed out",
                "accounts_created": 2,
                "accounts_existing": 0,
                "dns_records": [],
                "seconds": 125,
                "log": "/out/logs/t2.workshop.example.log",
            })
        );
        let plain = render_table(&rows[..1], false);
        assert!(
            plain.starts_with("SITE                   TIME  RESULT\n"),
            "{plain}"
        );
        assert!(!plain.contains("failed"), "{plain}");
    }

    fn handout(password: Option<&str>) -> Handout {
        Handout {
            site: "t1.workshop.example".into(),
            handle: "alice.t1.workshop.example".into(),
            email: "alice@example.com".into(),
            display_name: Some("Alice <\"the\" admin> & co".into()),
            did: Some("did:plc:abc".into()),
            password: password.map(str::to_string),
        }
    }

    #[test]
    fn a_handout_page_shows_the_login_and_escapes_what_it_quotes() {
        let page = render_handout_html(&handout(Some("abcd-efgh-ijkl")));
        assert!(
            page.contains("<code class=\"secret\">abcd-efgh-ijkl</code>"),
            "{page}"
        );
        assert!(
            page.contains("<code>https://t1.workshop.example</code>"),
            "{page}"
        );
        assert!(
            page.contains("Welcome, Alice &lt;&quot;the&quot; admin&gt; &amp; co"),
            "{page}"
        );
        assert!(!page.contains("<\"the\""), "{page}");
        let unknown = render_handout_html(&handout(None));
        assert!(unknown.contains("not known to pdsup"), "{unknown}");
    }

    #[test]
    fn the_csv_has_a_row_per_account_quoted_where_needed() {
        let csv = render_csv(&[handout(Some("pw,1")), handout(None)]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "site,handle,email,display_name,password,pds_url,did,how_to_log_in"
        );
        assert!(lines[1].starts_with(
            "t1.workshop.example,alice.t1.workshop.example,alice@example.com,\"Alice <\"\"the\"\" admin> & co\",\"pw,1\",https://t1.workshop.example,did:plc:abc,\"In the Bluesky app"
        ), "{}", lines[1]);
        assert!(
            lines[2].contains(",\"Alice <\"\"the\"\" admin> & co\",,https://"),
            "{}",
            lines[2]
        );
        assert_eq!(lines.len(), 3);
    }
}
