//! The command line: one file per subcommand, each a thin layer over `steps`.
//! `main` only parses, runs, and renders errors once (`error:` … `caused by:`).

pub mod args;
pub mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = up::Global {
        json: cli.json,
        quiet: cli.quiet,
        state_dir: cli.state_dir,
    };
    match cli.command {
        Command::Up(args) => up::up(args, &global).await,
        Command::Plan(args) => up::plan(args, &global).await,
    }
}

/// The one place errors are rendered.
fn report_error(err: &anyhow::Error, json: bool) {
    // For the journal (`--local`); the stderr logger leaves `progress` records to the UI.
    log::error!(target: "progress", "{err:#}");
    if json {
        let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
        println!(
            "{}",
            serde_json::json!({"ok": false, "error": err.to_string(), "caused_by": causes})
        );
    }
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("caused by: {cause}");
    }
}
