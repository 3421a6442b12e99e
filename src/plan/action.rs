//! What carries out a change. Primitive host actions (a command, a package
//! transaction, a file) are run by the runner itself; the others name an API
//! call or a local change that the step which planned them carries out.

use std::path::PathBuf;

use crate::host::config_file;
use crate::host::{Cmd, FileMode};
use crate::nomad::job::Job;

#[derive(Debug)]
pub enum Action {
    /// Run a shell command on the droplet as root.
    Run(Cmd),
    /// Run an apt or dpkg command once the dpkg lock is free (saying who holds it).
    Apt(Cmd),
    /// Write a file on the droplet (atomically, contents on stdin).
    Write {
        path: String,
        contents: Contents,
        mode: FileMode,
    },
    /// Stream a local file to the droplet.
    Upload {
        local: PathBuf,
        path: String,
        mode: FileMode,
    },
    /// Carry out these actions at the same time, over the one connection; done
    /// when all are (only the droplet's own actions: commands, package work,
    /// files, uploads). Work that does not depend on apt overlaps with it.
    Together(Vec<Action>),
    /// Install a file a service reads and restart the service, putting the
    /// previous file back when the service does not come up on the new one.
    InstallConfig(config_file::Install),
    /// Download (or upload), verify and install the pinned Nomad release.
    InstallNomad(crate::nomad::install::Install),
    /// Generate the site's secrets, or rewrite `pds.env` around the existing ones.
    SaveEnvFile,
    /// Copy the site's `pds.env` to the droplet's PDS volume (root, 0600), where
    /// the PDS task, pdsadmin and goat read it. Its text holds the secrets, so it
    /// is rendered at apply time by the step that owns it.
    WriteDropletEnvFile,
    /// Write a file that holds a secret (root only): its text is rendered at
    /// apply time by the step that owns it, never carried in the plan.
    WriteSecretFile { path: String, mode: FileMode },
    /// Wait until the Nomad node is ready with these host volumes.
    WaitNomadReady { volumes: Vec<String> },
    /// Register a job with Nomad.
    SubmitJob(Box<Job>),
    /// Wait until the job's allocation runs and is healthy.
    WaitJobHealthy { job: String, image: String },
    /// Record the digest of the IO image the droplet runs for `image` in
    /// site.toml, and run IO by that digest from then on.
    PinIoImage { image: String },
    /// Wait until the PDS answers `/xrpc/_health`.
    WaitPdsHealthy,
    /// Mark the PDS data dir as this site's (`site_id` in site.toml first).
    ClaimDataDir { site_id: String },
    /// Invite code + createAccount; the password is generated at apply time.
    CreateAccount { handle: String, email: String },
    /// Record an account found on the PDS in site.toml.
    RecordAccount { did: String },
    /// The seed's sqlite update marking the account's email confirmed.
    ConfirmEmail { handle: String },
}

/// A written file's contents. Secrets never travel in a plan: files that hold
/// them are written by the step that owns them, at apply time.
#[derive(Debug)]
pub enum Contents {
    Text(String),
}

impl Contents {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Contents::Text(t) => t.as_bytes(),
        }
    }
}
