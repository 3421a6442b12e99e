//! `nomad`: a test double for the part of HashiCorp Nomad that pdsup uses.
//!
//! This is a test fixture, built only for pdsup's tests. It is not HashiCorp Nomad and must never
//! be shipped or described as Nomad. It runs as a single-node client+server agent: it reads an
//! agent config directory like Nomad, serves a subset of Nomad's HTTP API with Nomad's JSON shapes,
//! and runs `docker`-driver tasks through the host's `docker` CLI. See README.md for the exact list.
//!
//! `main` only dispatches and decides exit codes.

mod agent;
mod api;
mod checks;
mod config;
mod decode;
mod diff;
mod docker;
mod job;
mod logging;
mod netutil;
mod notify;
mod plan;
mod runner;
mod state;
mod validate;

use std::process::ExitCode;

/// The Nomad version this double claims, baked in at build time.
pub const VERSION: &str = match option_env!("NOMAD_DOUBLE_VERSION") {
    Some(v) => v,
    None => "1.10.5",
};

fn usage() -> String {
    format!(
        "Usage: nomad <command> [args]\n\n\
         This is a test double of Nomad v{VERSION} for pdsup's tests, not HashiCorp Nomad.\n\
         It implements only these commands:\n    \
         agent -config <dir-or-file> [-config ...]   Runs the agent\n    \
         version                                     Prints the version\n"
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("-version") | Some("--version") | Some("-v") => {
            println!("Nomad v{VERSION} (pdsup test double, not HashiCorp Nomad)");
            ExitCode::SUCCESS
        }
        Some("agent") => match parse_agent_args(&args[1..]) {
            Ok(paths) => agent::run(paths),
            Err(e) => {
                eprintln!("==> {e}");
                ExitCode::FAILURE
            }
        },
        Some(other) if !other.starts_with('-') => {
            eprintln!("nomad: command {other:?} is not implemented by this test double\n");
            eprint!("{}", usage());
            ExitCode::from(127)
        }
        _ => {
            eprint!("{}", usage());
            ExitCode::FAILURE
        }
    }
}

/// Parses `-config X`, `-config=X`, `--config X` (repeatable), like Nomad's flag package.
fn parse_agent_args(args: &[String]) -> Result<Vec<String>, String> {
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let flag = a.trim_start_matches('-');
        if let Some(v) = flag.strip_prefix("config=") {
            paths.push(v.to_string());
        } else if flag == "config" && a.starts_with('-') {
            match it.next() {
                Some(v) => paths.push(v.clone()),
                None => return Err("flag needs an argument: -config".into()),
            }
        } else {
            return Err(format!(
                "flag provided but not implemented by the nomad test double: {a}"
            ));
        }
    }
    if paths.is_empty() {
        return Err("the nomad test double needs at least one -config path".into());
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_flags() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_agent_args(&v(&["-config", "/etc/nomad.d", "-config=/x.hcl"])).unwrap(),
            v(&["/etc/nomad.d", "/x.hcl"])
        );
        assert!(parse_agent_args(&v(&["-dev"])).is_err());
        assert!(parse_agent_args(&v(&[])).is_err());
        assert!(parse_agent_args(&v(&["-config"])).is_err());
    }
}
