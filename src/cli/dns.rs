//! `pdsup dns [--check] [--resolver ADDR]`: the records to add, and whether
//! they resolve as they should.

use clap::Args;

use super::site::SiteRef;
use super::up::Global;
use crate::error::Result;
use crate::ops;

#[derive(Debug, Args)]
pub struct DnsArgs {
    /// Ask DNS whether each record resolves as it should (exit code 9 when one does not)
    #[arg(long)]
    pub check: bool,

    /// The DNS server to ask, IP[:PORT] [default: this machine's resolvers]
    #[arg(long, value_name = "ADDR", requires = "check")]
    pub resolver: Option<String>,

    #[command(flatten)]
    pub site: SiteRef,
}

pub async fn dns(args: DnsArgs, global: &Global) -> Result<()> {
    // Every flag and the site's state are checked before any lookup or connection.
    let server = args
        .resolver
        .as_deref()
        .map(ops::dns::parse_resolver)
        .transpose()?;
    let site = args.site.open(global)?;
    let records = ops::dns::site_records(&site, args.site.dest.as_deref(), || {
        args.site.ssh_options(&site)
    })
    .await?;
    let check = args.check.then_some(server);
    ops::dns::show(records, check, global.output()).await
}
