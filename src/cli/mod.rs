//! The command line: one file per subcommand, each a thin layer over `steps`.
//! `main` only parses, runs, and renders errors once (`error:` … `caused by:`).

pub mod account;
pub mod args;
pub mod backup;
pub mod completions;
pub mod crawl;
pub mod dns;
pub mod down;
pub mod fleet;
pub mod logs;
pub mod restore;
pub mod site;
pub mod status;
pub mod up;
pub mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::Error;

const EXAMPLES: &str = "\
Examples:
  # Zero to PDS on a fresh droplet (Docker, Nomad, IO, the PDS, the first account):
  pdsup up root@203.0.113.7 --hostname pds.example.com --email me@example.com --handle alice

  # See what it would do, with no droplet at all:
  pdsup plan --hostname pds.example.com --email me@example.com --handle alice

  # Caddy instead of IO, the distribution's Docker, a non-root sudo user:
  pdsup up deploy@203.0.113.7 --hostname pds.example.com --email me@example.com \\
      --handle alice --proxy caddy --docker-source distro

  # Rebuild a lost droplet with the same identity (secrets come from the site's state):
  pdsup up root@198.51.100.4 --hostname pds.example.com --accept-new-host-key

  # On the droplet itself, e.g. from cloud-init (logs go to the journal as `pdsup`):
  pdsup up --local --hostname pds.example.com --email me@example.com --handle alice

  # Day 2 (the site's droplet is the DEST of its last `up`; --hostname picks the site):
  pdsup status                          # exit 9 when anything is wrong: fit for cron
  pdsup account create bob --email bob@example.com
  pdsup dns --check
  pdsup logs pds --follow
  pdsup upgrade --to 0.4.204            # reverted by Nomad if it does not become healthy
  pdsup backup                          # a consistent archive in the site's state directory
  pdsup restore ARCHIVE root@198.51.100.4 --hostname pds.example.com --accept-new-host-key

  # A workshop: many droplets and participants from one file (see examples/fleet.toml):
  pdsup fleet up workshop.toml --parallel 4

State (secrets, pinned host key, site settings) lives in ~/.local/share/pdsup/sites/<hostname>/.";

#[derive(Debug, Parser)]
#[command(
    name = "pdsup",
    version,
    about = "A fresh Ubuntu/Debian droplet to a running Bluesky PDS, in one command over SSH",
    long_about = "pdsup installs Docker and Nomad on a droplet, configures Nomad's host volumes, \
installs the proxy (IO or Caddy), runs the Bluesky PDS as a Nomad job with secrets it generates \
and keeps locally, creates the first account, and prints the DNS records to add. Every step checks \
first and changes only what differs, so running it again is safe and changes nothing.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Print one JSON document with the result on stdout (no progress output)
    #[arg(long, global = true)]
    pub json: bool,

    /// More output: -v shows commands and their output, -vv everything
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors (and the final summary)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Where site state is kept [default: ~/.local/share/pdsup]
    #[arg(long, global = true, env = "PDSUP_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up (or converge) a droplet: Docker, Nomad, proxy, PDS, first account
    Up(up::UpArgs),
    /// Show what `up` would change: for a fresh droplet (no DEST, no network) or against DEST (read-only)
    Plan(up::PlanArgs),
    /// The site's health: droplet, Docker, Nomad, proxy, PDS, TLS, disk, accounts (fails when not OK)
    Status(status::StatusArgs),
    /// The PDS's accounts: list, create, delete, reset-password, takedown, untakedown
    Account(account::AccountArgs),
    /// Make invite codes
    Invite(account::InviteArgs),
    /// The PDS's, the proxy's or Nomad's log (--follow, --since)
    Logs(logs::LogsArgs),
    /// Ask relays to crawl the PDS [default: the site's PDS_CRAWLERS]
    RequestCrawl(crawl::CrawlArgs),
    /// Shell completions on stdout (bash, zsh, fish, elvish, powershell)
    Completions(completions::CompletionsArgs),
    /// The man page (roff) on stdout: `pdsup man > pdsup.1`
    Man(completions::ManArgs),
    /// Many sites from one file (a workshop): up, plan, status, down or backup on each, in parallel
    Fleet(fleet::FleetArgs),
    /// The DNS records the site needs; with --check, whether each resolves as it should
    Dns(dns::DnsArgs),
    /// Run a newer PDS image (a Nomad deployment that reverts when it is not healthy)
    Upgrade(upgrade::UpgradeArgs),
    /// Return to the PDS image the last upgrade replaced
    Rollback(upgrade::RollbackArgs),
    /// Stop and remove the Nomad jobs pdsup deployed; the PDS data stays (unless --purge-data)
    Down(down::DownArgs),
    /// Take a consistent backup of the site's PDS while it serves, into the site's state directory
    Backup(backup::BackupArgs),
    /// Put a backup onto a droplet (a fresh one, or --force) and converge as `up` does
    Restore(restore::RestoreArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let local = matches!(&cli.command, Command::Up(a) if a.local);
    crate::ui::logging::init(cli.verbose, local);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report_error(&err, json);
            ExitCode::from(err.exit_code())
        }
    }
}

async fn run(cli: Cli) -> crate::error::Result<()> {
    let global = up::Global {
        json: cli.json,
        quiet: cli.quiet,
        state_dir: cli.state_dir,
    };
    match cli.command {
        Command::Up(args) => up::up(args, &global).await,
        Command::Plan(args) => up::plan(args, &global).await,
        Command::Status(args) => status::status(args, &global).await,
        Command::Account(args) => account::account(args, &global).await,
        Command::Invite(args) => account::invite(args, &global).await,
        Command::Logs(args) => logs::logs(args, &global).await,
        Command::RequestCrawl(args) => crawl::request_crawl(args, &global).await,
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
        Command::Fleet(args) => fleet::fleet(args, &global).await,
        Command::Dns(args) => dns::dns(args, &global).await,
        Command::Upgrade(args) => upgrade::upgrade(args, &global).await,
        Command::Rollback(args) => upgrade::rollback(args, &global).await,
        Command::Down(args) => down::down(args, &global).await,
        Command::Backup(args) => backup::backup(args, &global).await,
        Command::Restore(args) => restore::restore(args, &global).await,
    }
}

/// The one place errors are rendered: `error:`, each `caused by:`, then `hint:`;
/// with `--json`, one object on stdout as well. The exit code is the kind's.
fn report_error(err: &Error, json: bool) {
    // For the journal (`--local`); the stderr logger leaves `progress` records to the UI.
    log::error!(target: "progress", "{err:#}");
    // A report that is itself the JSON document (status, dns --check) is not followed by a second one.
    let reported = err.downcast_ref::<crate::ops::Reported>().is_some();
    if json && !reported {
        let mut doc = error_json(err);
        // A fleet's error is its document, with every site's row.
        if let Some(failed) = err.downcast_ref::<crate::ops::fleet::SitesFailed>() {
            let mut fleet = failed.document.clone();
            if let (Some(all), Some(error)) = (fleet.as_object_mut(), doc.as_object()) {
                all.extend(error.clone());
            }
            doc = fleet;
        }
        println!("{doc}");
    }
    eprint!("{}", error_text(err));
}

fn error_text(err: &Error) -> String {
    let mut chain = err.chain();
    let mut text = format!("error: {}\n", chain.next().unwrap_or_default());
    for cause in chain {
        text.push_str(&format!("caused by: {cause}\n"));
    }
    if let Some(hint) = err.hint() {
        text.push_str(&format!("hint: {hint}\n"));
    }
    text
}

fn error_json(err: &Error) -> serde_json::Value {
    let causes: Vec<String> = err.chain().skip(1).collect();
    serde_json::json!({
        "ok": false,
        "error": err.to_string(),
        "caused_by": causes,
        "kind": err.kind(),
        "step": err.step(),
        "hint": err.hint(),
        "exit_code": err.exit_code(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn an_error_renders_as_text_and_json_with_its_kind_step_and_hint() {
        let err = Error::new(ErrorKind::Blocked, "port 443 is taken")
            .context("preflight found problems")
            .with_step("preflight")
            .with_hint("stop the service on port 443");
        assert_eq!(
            error_text(&err),
            "error: preflight found problems\ncaused by: port 443 is taken\nhint: stop the service on port 443\n"
        );
        assert_eq!(
            error_json(&err),
            serde_json::json!({
                "ok": false,
                "error": "preflight found problems",
                "caused_by": ["port 443 is taken"],
                "kind": "blocked",
                "step": "preflight",
                "hint": "stop the service on port 443",
                "exit_code": 3,
            })
        );
        let plain = Error::msg("boom");
        assert_eq!(error_text(&plain), "error: boom\n");
        let json = error_json(&plain);
        assert_eq!(
            (json["kind"].as_str(), json["exit_code"].as_u64()),
            (Some("other"), Some(1))
        );
        assert!(json["step"].is_null() && json["hint"].is_null(), "{json}");
    }
}
