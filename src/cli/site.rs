//! The flags every day-2 command shares: which site, and how to reach its
//! droplet. Resolved here into an [`ops::site::Site`], checked before any
//! connection.

use std::time::Duration;

use clap::Args;

use super::args::{self, SiteArgs, SshArgs};
use super::up::Global;
use crate::error::{bail, Context, ErrorKind, Result};
use crate::host::ssh::SshOptions;
use crate::inputs::Hostname;
use crate::ops::site::Site;
use crate::state::SiteDir;

#[derive(Debug, Clone, Args)]
pub struct SiteRef {
    /// The site: the PDS's hostname [default: the only site in the state directory]
    #[arg(long = "hostname", env = "PDSUP_HOSTNAME", value_name = "HOSTNAME")]
    pub hostname: Option<String>,

    /// The droplet: [user@]host[:port] or a ~/.ssh/config alias [default: the DEST of the last `pdsup up`]
    #[arg(long, value_name = "DEST", env = "PDSUP_DEST")]
    pub dest: Option<String>,

    #[command(flatten)]
    pub ssh: SshArgs,
}

impl SiteRef {
    /// The site as its state directory holds it; an error (before any
    /// connection) when there is none or its state is broken.
    pub fn open(&self, global: &Global) -> Result<Site> {
        let state_dir = global.state_dir()?;
        let hostname: Hostname = match &self.hostname {
            Some(h) => h.parse()?,
            None => {
                let sites = SiteDir::list(&state_dir)?;
                match sites.as_slice() {
                    [only] => only.parse()?,
                    [] => bail!(
                        BadInput,
                        "no site in {}: run `pdsup up` first, or pass --state-dir",
                        state_dir.display()
                    ),
                    many => bail!(
                        BadInput,
                        "{} holds several sites ({}); say which with --hostname",
                        state_dir.display(),
                        many.join(", ")
                    ),
                }
            }
        };
        let dir = SiteDir::new(&state_dir, &hostname);
        let Some(record) = dir.load_record()? else {
            bail!(
                BadInput,
                "no site {hostname} in {} (no site.toml): run `pdsup up` for it first",
                state_dir.display()
            );
        };
        let settings = args::settings_at(
            &SiteArgs::for_hostname(&hostname),
            Some(&record),
            Some(&dir.site_file()),
        )
        .kind(ErrorKind::BadInput)?;
        Ok(Site {
            dir,
            record,
            settings,
        })
    }

    /// SSH options for the site's droplet (its pinned host key).
    pub fn ssh_options(&self, site: &Site) -> Result<SshOptions> {
        if let Some(identity) = &self.ssh.identity {
            if let Err(e) = std::fs::File::open(identity) {
                bail!(
                    BadInput,
                    "-i {}: cannot read the key file: {e}",
                    identity.display()
                );
            }
        }
        Ok(SshOptions {
            identity_file: self.ssh.identity.clone(),
            passphrase: None,
            known_hosts: site.dir.known_hosts(),
            accept_new_host_key: self.ssh.accept_new_host_key,
            pin_read_only: false,
            ssh_config: self.ssh.ssh_config.clone(),
            connect_timeout: Duration::from_secs(20),
        })
    }
}
