//! Operations: one per subcommand, each a list of steps on the common runner
//! plus what comes before (connecting, the site's state) and after (the
//! summary). The command line resolves flags into values and calls these.

pub mod account;
pub mod backup;
pub mod crawl;
pub mod dns;
pub mod down;
pub mod fleet;
pub mod logs;
pub mod plan;
pub mod restore;
pub mod schedule;
pub mod site;
pub mod status;
pub mod up;
pub mod upgrade;

use crate::error::{bail, Error, Result};

use crate::state::{SiteDir, SiteRecord};

/// An operation that printed its own result (with `--json`, the one JSON
/// document, saying what is wrong) and still fails, for the exit code: the
/// error is shown on stderr only, never as a second document on stdout.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(String);

impl Reported {
    /// The same error (kind, message, hint), marked as already reported.
    pub fn wrap(err: Error) -> Error {
        let hint = err.hint().map(str::to_string);
        let marked = Error::from_source(err.kind(), Reported(format!("{err:#}")));
        match hint {
            Some(hint) => marked.with_hint(hint),
            None => marked,
        }
    }
}

/// How results are shown.
#[derive(Clone, Copy, Debug, Default)]
pub struct Output {
    /// One JSON document on stdout, no progress output.
    pub json: bool,
    /// Only errors and the final summary.
    pub quiet: bool,
}

/// Prints a result: `value` as one JSON document with `--json`, else `text`.
pub fn print(output: Output, value: impl serde::Serialize, text: &str) -> Result<()> {
    if output.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// `pds.env` must be readable exactly, and must exist once the site has an
/// account: new secrets would mean a new PLC rotation key for an existing DID.
pub fn check_secrets(site: &SiteDir, record: Option<&SiteRecord>) -> Result<()> {
    if site.load_secrets()?.is_none() {
        if let Some(did) = record.and_then(|r| r.account_did.as_deref()) {
            bail!(
                BadInput,
                "{} is missing, but {} records the account {did}: its secrets and PLC rotation \
                 key are in that file. Restore it from your backup (`pdsup restore ARCHIVE DEST` \
                 takes it from an archive of `pdsup backup`); pdsup will not generate new \
                 secrets for a site that already has an identity",
                site.env_file().display(),
                site.site_file().display()
            );
        }
    }
    Ok(())
}
