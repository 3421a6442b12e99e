//! `pdsup logs`: flags, handed to `ops::logs`.

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::Result;
use crate::ops::account::Reach;
use crate::ops::logs::{self, parse_since, Request, Source};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Whose log
    #[arg(value_enum, default_value_t = Source::Pds)]
    pub source: Source,

    /// Keep printing new lines until interrupted
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// Only lines newer than this long ago: 30s, 10m, 2h, 3d
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,

    /// How many lines at most (before following)
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,

    #[command(flatten)]
    pub site: SiteRef,
}

pub async fn logs(args: LogsArgs, global: &Global) -> Result<()> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let site = args.site.open(global)?;
    let options = args.site.ssh_options(&site)?;
    logs::logs(
        Reach {
            site,
            dest: args.site.dest.as_deref(),
            options,
        },
        Request {
            source: args.source,
            follow: args.follow,
            since,
            lines: args.lines,
        },
        global.output(),
    )
    .await
}
