//! `pdsup request-crawl`: flags, handed to `ops::crawl`.

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::Result;
use crate::inputs::HttpUrl;

#[derive(Debug, Args)]
pub struct CrawlArgs {
    /// Relays to ask (URLs) [default: the site's PDS_CRAWLERS]
    #[arg(value_name = "RELAY")]
    pub relays: Vec<String>,

    /// Show which relays would be asked, send nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub site: SiteRef,
}

pub async fn request_crawl(args: CrawlArgs, global: &Global) -> Result<()> {
    let relays = args
        .relays
        .iter()
        .map(|r| Ok(r.parse::<HttpUrl>()?))
        .collect::<Result<Vec<_>>>()?;
    let site = args.site.open(global)?;
    crate::ops::crawl::request_crawl(site, relays, args.dry_run, global.output()).await
}
