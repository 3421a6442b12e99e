//! `pdsup account ...` and `pdsup invite`: the PDS's accounts through the
//! tunnel to its loopback port, with the admin password from the site's
//! secrets. A password pdsup makes is printed once, on stdout, and never
//! logged; destructive operations are confirmed first (`--yes` skips that,
//! and without a terminal nothing is asked: `--yes` is then required).

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use crate::error::{bail, Result};
use crate::inputs::{Email, Handle, Hostname};
use crate::pds::admin::{self, AccountInfo, Repo};
use crate::pds::xrpc::Xrpc;
use crate::plan::Progress;
use crate::secret::Secret;
use crate::settings::PDS_PORT;
use crate::state::secrets::account_password;
use crate::ui::Ui;

use super::print;
use super::site::{Session, Site};
use super::Output;

/// What to do to one account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Delete,
    ResetPassword,
    Takedown,
    Untakedown,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Change::Delete => "delete",
            Change::ResetPassword => "set a new password for",
            Change::Takedown => "take down",
            Change::Untakedown => "restore (undo the takedown of)",
        }
    }

    /// Changes that lose something (the account, its password, its
    /// visibility) are confirmed first.
    fn needs_confirmation(self) -> bool {
        !matches!(self, Change::Untakedown)
    }
}

/// An account as the user names it: a DID, or a handle (a bare name is
/// under the site's hostname).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountRef {
    Did(String),
    Handle(String),
}

impl AccountRef {
    pub fn parse(raw: &str, hostname: &Hostname) -> Result<Self> {
        let raw = raw.trim();
        if raw.starts_with("did:") {
            crate::ensure!(
                raw.len() > 8 && !raw.contains(char::is_whitespace),
                BadInput,
                "{raw:?} is not a DID (e.g. did:plc:abc...)"
            );
            return Ok(AccountRef::Did(raw.to_string()));
        }
        let lower = raw.trim_start_matches('@').to_ascii_lowercase();
        let handle = if lower.contains('.') {
            lower
        } else {
            format!("{lower}.{hostname}")
        };
        crate::ensure!(
            handle.parse::<Hostname>().is_ok(),
            BadInput,
            "{raw:?} is neither a DID nor a handle (e.g. alice, alice.{hostname}, did:plc:...)"
        );
        Ok(AccountRef::Handle(handle))
    }
}

/// The account's DID. A handle is resolved by the PDS; one it does not
/// resolve (a taken-down account's) is looked up among all accounts.
async fn resolve(xrpc: &Xrpc, admin_password: &Secret, account: &AccountRef) -> Result<String> {
    let handle = match account {
        AccountRef::Did(did) => return Ok(did.clone()),
        AccountRef::Handle(handle) => handle,
    };
    if let Some(did) = xrpc.resolve_handle(handle).await? {
        return Ok(did);
    }
    let dids: Vec<String> = admin::all_repos(xrpc, &mut |_| {})
        .await?
        .into_iter()
        .map(|r| r.did)
        .collect();
    let infos = admin::account_infos(xrpc, admin_password, &dids).await?;
    match infos
        .into_iter()
        .find(|i| i.handle.eq_ignore_ascii_case(handle))
    {
        Some(info) => Ok(info.did),
        None => bail!(
            BadInput,
            "no account has the handle {handle} on this PDS (`pdsup account list` shows them)"
        ),
    }
}

/// Asks before a destructive change. `yes` answers for the user; without a
/// terminal to ask on, the change is refused (exit code of `BadInput`).
pub fn confirm(question: &str, yes: bool) -> Result<()> {
    let stdin = std::io::stdin();
    confirm_with(question, yes, stdin.is_terminal(), || {
        eprint!("{question}? [y/N] ");
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer).ok();
        answer
    })
}

fn confirm_with(
    question: &str,
    yes: bool,
    terminal: bool,
    ask: impl FnOnce() -> String,
) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !terminal {
        bail!(
            BadInput,
            "{question}: not confirmed (no terminal to ask on); add --yes to do it without asking"
        );
    }
    match ask().trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => bail!(BadInput, "{question}: not confirmed; nothing changed"),
    }
}

/// A site and how to reach its droplet, as the command line resolved them.
pub struct Reach<'a> {
    pub site: Site,
    pub dest: Option<&'a str>,
    pub options: crate::host::ssh::SshOptions,
}

async fn open(reach: Reach<'_>) -> Result<(Session, Xrpc, Secret)> {
    let admin = reach.site.secrets()?.admin_password;
    let destination = reach.site.destination(reach.dest)?;
    let session = reach.site.connect(destination, &reach.options).await?;
    let addr = session.host.forward(PDS_PORT).await?;
    Ok((session, Xrpc::new(addr), admin))
}

/// One line of `account list`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub did: String,
    pub handle: String,
    pub email: Option<String>,
    pub active: bool,
    pub status: Option<String>,
}

/// Joins `listRepos` (every repository, paged) with `getAccountInfos`.
pub fn join(repos: &[Repo], infos: &[AccountInfo]) -> Vec<Listed> {
    repos
        .iter()
        .map(|r| {
            let info = infos.iter().find(|i| i.did == r.did);
            Listed {
                did: r.did.clone(),
                handle: info.map(|i| i.handle.clone()).unwrap_or_default(),
                email: info.and_then(|i| i.email.clone()),
                active: r.active,
                status: r.status.clone(),
            }
        })
        .collect()
}

pub fn list_text(accounts: &[Listed]) -> String {
    let handle_w = accounts
        .iter()
        .map(|a| a.handle.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let did_w = accounts
        .iter()
        .map(|a| a.did.len())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut out = format!(
        "{:handle_w$}  {:did_w$}  {:10}  EMAIL\n",
        "HANDLE", "DID", "STATUS"
    );
    for a in accounts {
        let status = if a.active {
            "active"
        } else {
            a.status.as_deref().unwrap_or("inactive")
        };
        out.push_str(&format!(
            "{:handle_w$}  {:did_w$}  {:10}  {}\n",
            a.handle,
            a.did,
            status,
            a.email.as_deref().unwrap_or("")
        ));
    }
    out.push_str(&format!("{} accounts\n", accounts.len()));
    out
}

pub async fn list(reach: Reach<'_>, output: Output) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let (_session, xrpc, admin) = open(reach).await?;
    let repos = admin::all_repos(&xrpc, &mut |n| {
        ui.progress(&format!("listed {n} repositories"))
    })
    .await?;
    ui.progress("asking for handles and emails");
    let dids: Vec<String> = repos.iter().map(|r| r.did.clone()).collect();
    let infos = admin::account_infos(&xrpc, &admin, &dids).await?;
    ui.clear();
    let accounts = join(&repos, &infos);
    if output.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"count": accounts.len(), "accounts": accounts}))?
        );
    } else {
        print!("{}", list_text(&accounts));
    }
    Ok(())
}

pub struct NewAccount {
    pub handle: Handle,
    pub email: Email,
}

pub async fn create(
    reach: Reach<'_>,
    new: NewAccount,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let handle = new.handle.initial().to_string();
    let (_session, xrpc, admin) = open(reach).await?;
    if let Some(did) = xrpc.resolve_handle(&handle).await? {
        bail!(
            BadInput,
            "{handle} is taken: it is {did}'s handle on this PDS"
        );
    }
    if dry_run {
        return print(
            output,
            json!({"dry_run": true, "would_create": {"handle": handle, "email": new.email.as_str()}}),
            &format!(
                "would create {handle} ({}); nothing changed\n",
                new.email.as_str()
            ),
        );
    }
    ui.progress(&format!("creating {handle}"));
    let invite = xrpc.create_invite_code(&admin).await?;
    let password = account_password();
    let created = xrpc
        .create_account(new.email.as_str(), &handle, &password, &invite)
        .await?;
    ui.clear();
    // The one place the password leaves pdsup: shown once, never stored.
    print(
        output,
        json!({"did": created.did, "handle": created.handle, "password": password.expose()}),
        &format!(
            "created {} ({})\npassword: {}\n(shown once: keep it in your password manager)\n",
            created.handle,
            created.did,
            password.expose()
        ),
    )
}

pub async fn change(
    reach: Reach<'_>,
    account: &AccountRef,
    what: Change,
    yes: bool,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let (_session, xrpc, admin) = open(reach).await?;
    let did = resolve(&xrpc, &admin, account).await?;
    let named = match account {
        AccountRef::Handle(h) => format!("{h} ({did})"),
        AccountRef::Did(_) => did.clone(),
    };
    let question = format!("{} {named}", what.verb());
    if dry_run {
        return print(
            output,
            json!({"dry_run": true, "did": did, "would": format!("{what:?}").to_lowercase()}),
            &format!("would {question}; nothing changed\n"),
        );
    }
    if what.needs_confirmation() {
        ui.clear();
        confirm(&capitalized(&question), yes)?;
    }
    let mut result = json!({"did": did});
    let mut text = String::new();
    match what {
        Change::Delete => {
            admin::delete_account(&xrpc, &admin, &did).await?;
            result["deleted"] = json!(true);
            text = format!("deleted {named}\n");
        }
        Change::ResetPassword => {
            let password = account_password();
            admin::update_password(&xrpc, &admin, &did, &password).await?;
            result["password"] = json!(password.expose());
            text = format!(
                "new password for {named}: {}\n(shown once: keep it in your password manager)\n",
                password.expose()
            );
        }
        Change::Takedown | Change::Untakedown => {
            let applied = what == Change::Takedown;
            admin::set_takedown(&xrpc, &admin, &did, applied).await?;
            let now = admin::is_taken_down(&xrpc, &admin, &did).await?;
            crate::ensure!(
                now == applied,
                Api,
                "the PDS accepted the change but still reports {did} as {}taken down",
                if now { "" } else { "not " }
            );
            result["taken_down"] = json!(now);
            text.push_str(&format!(
                "{named} is {}\n",
                if now { "taken down" } else { "restored" }
            ));
        }
    }
    print(output, result, &text)
}

pub async fn invite(
    reach: Reach<'_>,
    count: u32,
    uses: u32,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    crate::ensure!(
        count >= 1 && uses >= 1,
        BadInput,
        "--count and --uses must be at least 1"
    );
    if dry_run {
        return print(
            output,
            json!({"dry_run": true, "would_create": count, "uses": uses}),
            &format!("would make {count} invite code(s) of {uses} use(s); nothing changed\n"),
        );
    }
    let (_session, xrpc, admin) = open(reach).await?;
    let codes = admin::create_invite_codes(&xrpc, &admin, count, uses).await?;
    let text: String = codes.iter().map(|c| format!("{c}\n")).collect();
    print(output, json!({"codes": codes, "uses": uses}), &text)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Hostname {
        "pds.example.com".parse().unwrap()
    }

    #[test]
    fn accounts_are_named_by_did_or_handle() {
        assert_eq!(
            AccountRef::parse("did:plc:abcdefgh", &host()).unwrap(),
            AccountRef::Did("did:plc:abcdefgh".into())
        );
        assert_eq!(
            AccountRef::parse("Alice", &host()).unwrap(),
            AccountRef::Handle("alice.pds.example.com".into())
        );
        assert_eq!(
            AccountRef::parse("@bob.example.org", &host()).unwrap(),
            AccountRef::Handle("bob.example.org".into())
        );
        assert!(AccountRef::parse("did:", &host()).is_err());
        let bad = AccountRef::parse("not a handle!", &host()).unwrap_err();
        assert_eq!(bad.kind(), crate::error::ErrorKind::BadInput);
    }

    #[test]
    fn the_list_joins_repos_with_their_handles() {
        let repos = vec![
            Repo {
                did: "did:plc:a".into(),
                active: true,
                status: None,
            },
            Repo {
                did: "did:plc:b".into(),
                active: false,
                status: Some("takendown".into()),
            },
        ];
        let infos = vec![AccountInfo {
            did: "did:plc:b".into(),
            handle: "bob.pds.test".into(),
            email: Some("b@example.com".into()),
            indexed_at: None,
        }];
        let listed = join(&repos, &infos);
        assert_eq!(listed[0].handle, "");
        assert_eq!(listed[1].handle, "bob.pds.test");
        let text = list_text(&listed);
        assert!(
            text.contains("bob.pds.test  did:plc:b  takendown   b@example.com"),
            "{text}"
        );
        assert!(text.ends_with("2 accounts\n"), "{text}");
    }

    #[test]
    fn without_a_terminal_or_yes_nothing_is_confirmed() {
        let never = || -> String { panic!("must not ask") };
        assert!(confirm_with("Delete x", true, false, never).is_ok());
        let err = confirm_with("Delete x", false, false, never).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::BadInput);
        assert!(err.to_string().contains("--yes"), "{err}");
        assert!(confirm_with("Delete x", false, true, || "y\n".into()).is_ok());
        assert!(confirm_with("Delete x", false, true, || "YES\n".into()).is_ok());
        let no = confirm_with("Delete x", false, true, || "\n".into()).unwrap_err();
        assert!(no.to_string().contains("nothing changed"), "{no}");
    }

    #[test]
    fn only_untakedown_goes_without_asking() {
        assert!(Change::Delete.needs_confirmation());
        assert!(Change::ResetPassword.needs_confirmation());
        assert!(Change::Takedown.needs_confirmation());
        assert!(!Change::Untakedown.needs_confirmation());
    }
}
