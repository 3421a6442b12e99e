//! `pdsup account ...` and `pdsup invite`: flags, handed to `ops::account`.

use clap::{Args, Subcommand};

use super::site::SiteRef;
use super::up::Global;
use crate::error::Result;
use crate::inputs::{Email, Handle};
use crate::ops::account::{self, AccountRef, Change, NewAccount, Reach};

#[derive(Debug, Args)]
pub struct AccountArgs {
    #[command(subcommand)]
    pub command: AccountCommand,
}

#[derive(Debug, Args)]
pub struct Target {
    /// The account: its DID, or its handle (a bare name is under the site's hostname)
    #[arg(value_name = "DID|HANDLE")]
    pub account: String,

    /// Do it without asking
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Show what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub site: SiteRef,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Every account on the PDS (all pages), with its handle, email and status
    List {
        #[command(flatten)]
        site: SiteRef,
    },
    /// A new account; its password is printed once
    Create {
        /// The handle: a name under the site's hostname (alice) or a full handle
        #[arg(value_name = "HANDLE")]
        handle: String,
        /// The account's email address
        #[arg(long)]
        email: String,
        /// Check and show, change nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        site: SiteRef,
    },
    /// Delete an account and its repository (asks first unless --yes)
    Delete(Target),
    /// Give an account a new password, printed once (asks first unless --yes)
    ResetPassword(Target),
    /// Take an account's repository down (asks first unless --yes)
    Takedown(Target),
    /// Undo a takedown
    Untakedown(Target),
}

#[derive(Debug, Args)]
pub struct InviteArgs {
    /// How many codes
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// How many accounts each code may create
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub site: SiteRef,
}

pub async fn account(args: AccountArgs, global: &Global) -> Result<()> {
    let out = global.output();
    let (site_ref, what, target) = match args.command {
        AccountCommand::List { site } => {
            let s = site.open(global)?;
            let options = site.ssh_options(&s)?;
            return account::list(
                Reach {
                    site: s,
                    dest: site.dest.as_deref(),
                    options,
                },
                out,
            )
            .await;
        }
        AccountCommand::Create {
            handle,
            email,
            dry_run,
            site,
        } => {
            let s = site.open(global)?;
            let new = NewAccount {
                handle: Handle::parse(&handle, &s.settings.hostname)?,
                email: email.parse::<Email>()?,
            };
            let options = site.ssh_options(&s)?;
            return account::create(
                Reach {
                    site: s,
                    dest: site.dest.as_deref(),
                    options,
                },
                new,
                dry_run,
                out,
            )
            .await;
        }
        AccountCommand::Delete(t) => (t.site.clone(), Change::Delete, t),
        AccountCommand::ResetPassword(t) => (t.site.clone(), Change::ResetPassword, t),
        AccountCommand::Takedown(t) => (t.site.clone(), Change::Takedown, t),
        AccountCommand::Untakedown(t) => (t.site.clone(), Change::Untakedown, t),
    };
    let s = site_ref.open(global)?;
    let who = AccountRef::parse(&target.account, &s.settings.hostname)?;
    let options = site_ref.ssh_options(&s)?;
    account::change(
        Reach {
            site: s,
            dest: site_ref.dest.as_deref(),
            options,
        },
        &who,
        what,
        target.yes,
        target.dry_run,
        out,
    )
    .await
}

pub async fn invite(args: InviteArgs, global: &Global) -> Result<()> {
    let s = args.site.open(global)?;
    let options = args.site.ssh_options(&s)?;
    account::invite(
        Reach {
            site: s,
            dest: args.site.dest.as_deref(),
            options,
        },
        args.count,
        args.uses,
        args.dry_run,
        global.output(),
    )
    .await
}
