//! `pdsup completions SHELL` and `pdsup man`: generated from the same clap
//! definitions as the parser, so they never drift from the flags.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::error::Result;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in (e.g. `pdsup completions bash > /etc/bash_completion.d/pdsup`)
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = super::Cli::command();
    // Into memory first: clap_complete panics on a write error (`| head`).
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "pdsup", &mut out);
    use std::io::Write;
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// The man page (roff) on stdout: `pdsup man > pdsup.1`.
pub fn man(_args: ManArgs) -> Result<()> {
    let mut out = Vec::new();
    render_man(&mut out)?;
    use std::io::Write;
    std::io::stdout().write_all(&out)?;
    Ok(())
}

pub fn render_man(out: &mut Vec<u8>) -> Result<()> {
    clap_mangen::Man::new(super::Cli::command()).render(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_the_man_page_name_every_subcommand() {
        let mut bash = Vec::new();
        clap_complete::generate(
            Shell::Bash,
            &mut super::super::Cli::command(),
            "pdsup",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        let mut man = Vec::new();
        render_man(&mut man).unwrap();
        // roff escapes hyphens.
        let man = String::from_utf8(man).unwrap().replace("\\-", "-");
        assert!(man.starts_with(".ie"), "{}", &man[..200.min(man.len())]);
        for sub in [
            "up",
            "status",
            "account",
            "invite",
            "logs",
            "request-crawl",
            "completions",
        ] {
            assert!(bash.contains(sub), "bash completion lacks {sub}");
            assert!(man.contains(sub), "the man page lacks {sub}");
        }
        assert!(bash.contains("reset-password"));
    }
}
