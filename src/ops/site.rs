//! An existing site, for the commands that come after `up` (status, accounts,
//! logs, backup, upgrade, ...): its saved state, its settings as `site.toml`
//! remembers them, and a connection to its droplet. A day-2 operation opens a
//! [`Site`], connects, and builds a [`Ctx`] on it: the same tunnels to Nomad
//! and the PDS, the same secrets and the same steps as `up`.

use crate::error::{bail, Result};

use crate::host::dest::Destination;
use crate::host::ssh::{SshHost, SshOptions};
use crate::host::Host;
use crate::plan::Progress;
use crate::settings::Settings;
use crate::state::{PdsSecrets, SiteDir, SiteRecord};
use crate::steps::Ctx;

/// A site that `up` has made: its state directory, what `site.toml` holds,
/// and the settings resolved from it (flags of the day-2 command on top).
pub struct Site {
    pub dir: SiteDir,
    pub record: SiteRecord,
    pub settings: Settings,
}

/// A site with a live connection to its droplet.
pub struct Session {
    pub site: Site,
    pub host: Box<dyn Host>,
    /// The DEST as the user gave it (or as `site.toml` remembered it).
    pub destination: Destination,
}

impl Site {
    /// The DEST to use: the one given, else the one the last `up` used.
    pub fn destination(&self, given: Option<&str>) -> Result<Destination> {
        let text = match (given, self.record.destination.as_deref()) {
            (Some(d), _) => d,
            (None, Some(d)) => d,
            (None, None) => bail!(
                BadInput,
                "{} does not record the droplet's address (it was made by an older pdsup, \
                 or never connected); pass --dest root@ADDRESS",
                self.dir.site_file().display()
            ),
        };
        Ok(text.parse()?)
    }

    /// The site's secrets; a site without them is not one `up` finished.
    pub fn secrets(&self) -> Result<PdsSecrets> {
        match self.dir.load_secrets()? {
            Some(s) => Ok(s),
            None => bail!(
                BadInput,
                "{} is missing: the site has no secrets (run `pdsup up` first, or restore \
                 the file from your backup)",
                self.dir.env_file().display()
            ),
        }
    }

    /// Connects to the droplet over SSH with the site's pinned host key.
    pub async fn connect(self, destination: Destination, options: &SshOptions) -> Result<Session> {
        let host = SshHost::connect(&destination, options).await?;
        Ok(Session {
            site: self,
            host: Box::new(host),
            destination,
        })
    }
}

impl Session {
    /// A step context on this site: tunnels to Nomad and the PDS on first
    /// use, the site's secrets, progress reported to `progress`.
    pub fn ctx<'a>(&'a self, progress: &'a dyn Progress) -> Ctx<'a> {
        let mut ctx = Ctx::new(
            self.host.as_ref(),
            &self.site.settings,
            &self.site.dir,
            self.site.record.clone(),
            progress,
        );
        ctx.destination_host = Some(self.destination.host.clone());
        ctx
    }
}
