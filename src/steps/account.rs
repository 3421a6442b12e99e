//! The first account: an admin invite code, then `createAccount` with a password
//! generated here and shown once. `--confirm-email` marks the address confirmed
//! with the seed's sqlite update, for small PDSes that send no mail.
//!
//! # Never a second identity
//!
//! The account's DID is the site's identity, and a password shown once is the
//! only way in. Two records make account creation survive a run cut off at any
//! point, and a droplet that lost its data never mint a new DID:
//!
//! - **The intent** (`account_intent` in `site.toml`: handle and email) is saved
//!   before `createAccount` is sent and replaced by `account_did` once the PDS
//!   answers. A run that finds an intent looks the handle up on the PDS: there,
//!   the account was made but its password never shown, so its DID is recorded
//!   and the user is told how to set a new password; absent, the request never
//!   reached the PDS, or the PDS's data is gone, which the site id tells apart.
//! - **The site id** (`site_id` in `site.toml`, and the file
//!   `/srv/nomad/pds/.pdsup-site-id` on the droplet) is a random id written into
//!   the empty data dir before the PDS first starts there, by a site that has no
//!   account yet ([`claim_data_dir`], run by the pds job step). Data carrying the
//!   site's id is the data the site's account would be in. An empty data dir for
//!   a site with an account (or an intent) is data lost: never claimed, so the
//!   PDS is not even started on it. Another id is another site's data.
//!
//! The rebuild guard asks the PDS (`listRepos`) whether the recorded DID is
//! hosted, instead of trusting `site.toml`, and the handle lookup covers an
//! account whose DID was never recorded. The cases, in [`plan`]:
//!
//! | recorded DID       | intent | on the PDS         | data id | plan                  |
//! |--------------------|--------|--------------------|---------|-----------------------|
//! | hosted             | any    | -                  | any     | nothing (intent cleared) |
//! | not hosted         | any    | -                  | any     | block: restore the data |
//! | none               | any    | handle has DID D   | any     | record D, say the password was never shown (when an intent says so) |
//! | none               | none   | handle absent      | any     | create                |
//! | none               | yes    | handle absent      | ours    | create (the request never reached the PDS) |
//! | none               | yes    | handle absent      | other/none | block: restore the data |
//!
//! Sites made before the site id existed have data without an id and a recorded
//! DID: they are checked by `listRepos` alone and never need one.

use crate::error::{bail, Result};

use super::docker::apt_get;
use super::{AccountOutcome, Action, Ctx, StepId, StepPlan};
use crate::host::{FileMode, Host, Script};
use crate::pds::xrpc::XrpcError;
use crate::settings::{Settings, PDS_VOLUME_PATH};
use crate::state::secrets::account_password;
use crate::state::{AccountIntent, SiteRecord};

pub const ID: StepId = StepId::new("account", "account");

/// The file in the PDS data dir that names the site the data belongs to.
pub const DATA_ID_PATH: &str = "/srv/nomad/pds/.pdsup-site-id";

/// What `site.toml` says about the site's account and data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteFacts {
    /// The DID this site's first account had on an earlier run.
    pub recorded_did: Option<String>,
    /// An account creation a run started and may not have finished.
    pub intent: Option<AccountIntent>,
    pub site_id: Option<String>,
}

impl SiteFacts {
    pub fn of(record: &SiteRecord) -> Self {
        SiteFacts {
            recorded_did: record.account_did.clone(),
            intent: record.account_intent.clone(),
            site_id: record.site_id.clone(),
        }
    }

    /// Whether the site has (or may have) an account somewhere.
    fn has_account(&self) -> bool {
        self.recorded_did.is_some() || self.intent.is_some()
    }
}

/// The PDS data dir on the droplet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataDir {
    /// The contents of `.pdsup-site-id`, when there is one.
    pub site_id: Option<String>,
    /// Nothing but pdsup's own files in it (or no dir at all).
    pub empty: bool,
}

impl DataDir {
    pub fn fresh() -> Self {
        DataDir {
            site_id: None,
            empty: true,
        }
    }
}

pub async fn gather_data_dir(ctx: &Ctx<'_>) -> Result<DataDir> {
    ctx.read(&data_dir_fact()).await
}

pub fn data_dir_fact() -> crate::host::facts::Fact<DataDir> {
    super::facts::data_dir(DATA_ID_PATH, PDS_VOLUME_PATH)
}

/// A new random site id (128 bits, hex).
pub fn new_site_id() -> String {
    use rand::rand_core::UnwrapErr;
    use rand::rngs::SysRng;
    use rand::Rng;
    let mut bytes = [0u8; 16];
    UnwrapErr(SysRng).fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The pds job step's part: before the PDS first starts on a data dir, mark it
/// as this site's, or stop when it is not the data this site's account is in.
/// `new_id` is the id to use when the site has none yet.
pub fn claim_data_dir(
    plan: &mut StepPlan,
    data: &DataDir,
    site: &SiteFacts,
    new_id: &str,
    settings: &Settings,
) {
    let handle = settings.handle.initial();
    match (&data.site_id, &site.site_id) {
        (Some(found), Some(ours)) if found == ours => {}
        (Some(found), ours) => plan.blockers.push(format!(
            "the PDS data in {PDS_VOLUME_PATH} belongs to another site (site id {found} in {DATA_ID_PATH}; this site's is {}). \
             Point pdsup at this site's droplet, or restore {PDS_VOLUME_PATH} from this site's backup \
             (`pdsup restore ARCHIVE DEST --force`). \
             If this is this site's data and site.toml was lost, add `site_id = \"{found}\"` to site.toml",
            ours.as_deref().unwrap_or("not recorded")
        )),
        (None, _) if !data.empty => {
            // Data from before site ids: its account is checked against the
            // PDS by the account step; there is nothing to claim.
        }
        (None, _) if site.has_account() => {
            let which = match (&site.recorded_did, &site.intent) {
                (Some(did), _) => format!("{handle} ({did})"),
                (None, Some(intent)) => format!(
                    "{} (its creation was interrupted, so the PDS may have made it)",
                    intent.handle
                ),
                (None, None) => handle.to_string(),
            };
            plan.blockers.push(format!(
                "this site's account {which} is not on this droplet: {PDS_VOLUME_PATH} is empty. \
                 Restore {PDS_VOLUME_PATH} from a backup and run again: `pdsup restore ARCHIVE DEST` puts \
                 an archive from `pdsup backup` in place and converges the droplet. Starting the PDS here would \
                 give the handle a new DID and orphan the old identity; to do that deliberately, \
                 delete the account_did and account_intent entries from site.toml"
            ));
        }
        (None, _) => {
            let id = site.site_id.clone().unwrap_or_else(|| new_id.to_string());
            plan.change(
                format!("mark {PDS_VOLUME_PATH} as this site's PDS data (its site id in {DATA_ID_PATH})"),
                Action::ClaimDataDir { site_id: id },
            );
        }
    }
}

/// Records the site id locally first, then on the droplet: a run cut off in
/// between leaves an id in `site.toml` that the next run writes again.
pub async fn apply_claim(ctx: &mut Ctx<'_>, site_id: &str) -> Result<()> {
    if ctx.record.site_id.as_deref() != Some(site_id) {
        ctx.record.site_id = Some(site_id.to_string());
        ctx.site.save_record(&ctx.record)?;
    }
    ctx.host
        .write_file(
            DATA_ID_PATH,
            format!("{site_id}\n").as_bytes(),
            &FileMode::root(0o600),
        )
        .await
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `listRepos` answered: the DIDs this PDS hosts. `None` when it did not answer.
    pub hosted: Option<Vec<String>>,
    /// The DID the handle (the intent's, else the site's) has on this PDS.
    pub handle_did: Option<String>,
    pub email_confirmed: bool,
    pub site: SiteFacts,
    /// Whether the PDS data dir carries this site's id.
    pub data_is_ours: bool,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts {
            hosted: Some(Vec::new()),
            ..Facts::default()
        }
    }

    /// The account's DID, when it is on this PDS.
    fn did(&self) -> Option<&str> {
        match (&self.site.recorded_did, &self.hosted) {
            (Some(did), Some(hosted)) if hosted.contains(did) => Some(did),
            (Some(_), _) => None,
            (None, _) => self.handle_did.as_deref(),
        }
    }
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let site = SiteFacts::of(&ctx.record);
    let handle = match &site.intent {
        Some(intent) => intent.handle.clone(),
        None => ctx.settings.handle.initial().to_string(),
    };
    let (hosted, handle_did) = match ctx.pds().await {
        Ok(pds) => match pds.list_repos().await {
            Ok(hosted) => (Some(hosted), pds.resolve_handle(&handle).await?),
            Err(_) => (None, None),
        },
        Err(_) => (None, None),
    };
    let data_is_ours = match &site.site_id {
        Some(ours) => gather_data_dir(ctx).await?.site_id.as_ref() == Some(ours),
        None => false,
    };
    let mut facts = Facts {
        hosted,
        handle_did,
        email_confirmed: false,
        site,
        data_is_ours,
    };
    if let Some(did) = facts.did().map(str::to_string) {
        // Checking again after this run created the account keeps the
        // password it made: it is shown once, in the summary.
        let password = ctx
            .outcome
            .account
            .take()
            .filter(|a| a.did == did)
            .and_then(|a| a.password);
        ctx.outcome.account = Some(AccountOutcome {
            did: did.clone(),
            handle: ctx.settings.handle.initial().to_string(),
            password,
        });
        if ctx.settings.confirm_email {
            facts.email_confirmed = email_confirmed_on_droplet(ctx, &did).await?;
        }
    }
    Ok(facts)
}

/// How to give an account whose password was never shown a new one: the admin
/// API's `updateAccountPassword`, with the admin password from the site's
/// `pds.env` (a shell-sourceable file), as pdsadmin's `account reset-password` does.
pub fn reset_password_hint(did: &str, env_file: &str) -> String {
    // The admin password goes to curl on stdin (`-K -`), never in its arguments,
    // and the new one is typed at a prompt, not kept in the shell's history.
    const ADMIN_API: &str = r#"( . ENV && read -rsp 'new password: ' pw && echo && printf 'user = "admin:%s"\ndata = "{\\"did\\":\\"DID\\",\\"password\\":\\"%s\\"}"\n' "$PDS_ADMIN_PASSWORD" "$pw" | curl -fsS -K - -H 'Content-Type: application/json' "https://$PDS_HOSTNAME/xrpc/com.atproto.admin.updateAccountPassword" )"#;
    let env = crate::host::quote(env_file);
    format!(
        "set a new password with the PDS admin API (once https://<hostname> answers): `{}`, \
         or with the official pdsadmin: `PDS_ENV_FILE={env} pdsadmin account reset-password {did}`",
        ADMIN_API.replace("DID", did).replace("ENV", &env),
    )
}

pub fn plan(facts: &Facts, settings: &Settings, env_file: &str) -> StepPlan {
    let mut plan = StepPlan::new(ID);
    let handle = settings.handle.initial().to_string();
    let site = &facts.site;
    let Some(hosted) = &facts.hosted else {
        if site.has_account() {
            plan.blockers.push(format!(
                "the PDS does not answer com.atproto.sync.listRepos, so whether this site's account {handle} \
                 is on it cannot be checked: make sure the pds job is healthy and run again"
            ));
            return plan;
        }
        create(&mut plan, settings);
        confirm(&mut plan, facts, settings);
        return plan;
    };
    match (&site.recorded_did, &facts.handle_did) {
        (Some(recorded), _) if !hosted.contains(recorded) => {
            // A rebuilt droplet without its data: creating the account again would
            // give the handle a new DID and orphan the old identity.
            plan.blockers.push(format!(
                "this site's account {handle} ({recorded}) is not on this droplet's PDS: its data in {PDS_VOLUME_PATH} is missing. \
                 Restore {PDS_VOLUME_PATH} from a backup and run again (`pdsup restore ARCHIVE DEST` does both, from \
                 an archive `pdsup backup` made); or, to start over with a new account and a new DID, \
                 delete the account_did line from site.toml"
            ));
            return plan;
        }
        (Some(recorded), _) => {
            if site.intent.is_some() {
                plan.change(
                    format!("record {handle}'s account {recorded} in site.toml (an interrupted creation is cleared)"),
                    Action::RecordAccount {
                        did: recorded.clone(),
                    },
                );
            }
        }
        (None, Some(found)) => {
            let why = if site.intent.is_some() {
                "a run was cut off while creating it, after the PDS made it: its password was never shown"
            } else {
                "pdsup did not record it before, so it may not have shown its password"
            };
            plan.notes.push(format!(
                "the account {handle} ({found}) is on the PDS; {why}. To log in, {}",
                reset_password_hint(found, env_file)
            ));
            plan.change(
                format!("record {handle}'s account {found} in site.toml"),
                Action::RecordAccount { did: found.clone() },
            );
        }
        (None, None) => match &site.intent {
            None => create(&mut plan, settings),
            Some(_) if facts.data_is_ours => {
                plan.notes.push(format!(
                    "a run was cut off before the PDS created the account {handle}: creating it now"
                ));
                create(&mut plan, settings);
            }
            Some(intent) => {
                plan.blockers.push(format!(
                    "this site's account {} may have been created by a run that was cut off, but it is not on this droplet's PDS, \
                     and {PDS_VOLUME_PATH} is not this site's data. Restore {PDS_VOLUME_PATH} from a backup and run again; \
                     or, to start over with a new account and a new DID, delete the account_intent entry from site.toml",
                    intent.handle
                ));
                return plan;
            }
        },
    }
    confirm(&mut plan, facts, settings);
    plan
}

fn create(plan: &mut StepPlan, settings: &Settings) {
    let handle = settings.handle.initial().to_string();
    plan.change(
        format!(
            "create the account {handle} <{}> (password generated, shown once)",
            settings.email.as_str()
        ),
        Action::CreateAccount {
            handle,
            email: settings.email.as_str().to_string(),
        },
    );
}

fn confirm(plan: &mut StepPlan, facts: &Facts, settings: &Settings) {
    if settings.confirm_email && !facts.email_confirmed {
        let handle = settings.handle.initial().to_string();
        plan.change(
            format!("mark {handle}'s email as confirmed"),
            Action::ConfirmEmail { handle },
        );
    }
}

/// Journaled: the intent is in `site.toml` before the request leaves, the DID
/// right after the answer arrives.
pub async fn create_account(ctx: &mut Ctx<'_>, handle: &str, email: &str) -> Result<()> {
    let admin = ctx.secrets()?.admin_password.clone();
    let password = account_password();
    let resumed = ctx
        .record
        .account_intent
        .as_ref()
        .is_some_and(|intent| intent.handle == handle);
    ctx.record.account_intent = Some(AccountIntent {
        handle: handle.to_string(),
        email: email.to_string(),
    });
    ctx.site.save_record(&ctx.record)?;
    let pds = ctx.pds().await?;
    let invite = pds.create_invite_code(&admin).await?;
    let created = match pds.create_account(email, handle, &password, &invite).await {
        Ok(created) => created,
        Err(e) if resumed && (handle_taken(&e) || server_error(&e)) => {
            // The cut-off run's request went on on the PDS after the connection
            // dropped, and may still be finishing: that account is this site's.
            // While it is, a second request for the same handle and email may
            // also fail inside the PDS (a 500 from its database) rather than
            // with "handle taken".
            let did = match wait_for_handle(ctx, handle).await {
                Ok(did) => did,
                Err(_) if !handle_taken(&e) => {
                    return Err(e.with_hint(
                        "the PDS failed while a cut-off run's request for the same account may                          still have been under way; run the same command again in a minute",
                    ))
                }
                Err(wait) => return Err(wait),
            };
            record_account(ctx, &did)?;
            let hint = reset_password_hint(&did, &ctx.site.env_file().display().to_string());
            ctx.progress.note(&format!(
                "the account {handle} ({did}) was made by the run that was cut off; its password \
                 was never shown. To log in, {hint}"
            ));
            ctx.outcome.account = Some(AccountOutcome {
                did,
                handle: handle.to_string(),
                password: None,
            });
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    record_account(ctx, &created.did)?;
    ctx.outcome.account = Some(AccountOutcome {
        did: created.did,
        handle: created.handle,
        password: Some(password),
    });
    Ok(())
}

/// The PDS refused `createAccount` because the handle exists already.
fn handle_taken(e: &crate::error::Error) -> bool {
    e.downcast_ref::<XrpcError>().is_some_and(|x| {
        x.error == "HandleNotAvailable"
            || x.message
                .as_deref()
                .is_some_and(|m| m.contains("Handle already taken"))
    })
}

/// The PDS failed on its side (5xx).
fn server_error(e: &crate::error::Error) -> bool {
    e.downcast_ref::<XrpcError>()
        .is_some_and(|x| (500..600).contains(&x.status))
}

/// Waits for the PDS to resolve `handle`: an account whose creation is still
/// under way holds its handle before it resolves.
async fn wait_for_handle(ctx: &mut Ctx<'_>, handle: &str) -> Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(did) = ctx.pds().await?.resolve_handle(handle).await? {
            return Ok(did);
        }
        if std::time::Instant::now() >= deadline {
            crate::bail!(
                TimedOut,
                "the PDS says the handle {handle} is taken (by the account a cut-off run asked it to \
                 create) but has not resolved it for 60 s; run the same command again in a minute"
            );
        }
        ctx.progress
            .waiting(&format!("waiting for the PDS to finish creating {handle}"));
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The DID goes into `site.toml`, and the intent that led to it is cleared.
pub fn record_account(ctx: &mut Ctx<'_>, did: &str) -> Result<()> {
    ctx.record.account_did = Some(did.to_string());
    ctx.record.account_intent = None;
    ctx.site.save_record(&ctx.record)
}

fn checked_did(ctx: &Ctx<'_>) -> Result<String> {
    let Some(account) = &ctx.outcome.account else {
        bail!(Internal, "no account to confirm");
    };
    sql_safe_did(&account.did).map(str::to_string)
}

/// A DID that may go into an SQL statement: did:plc/did:web characters only.
fn sql_safe_did(did: &str) -> Result<&str> {
    if !did.starts_with("did:")
        || !did
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":._-%".contains(c))
    {
        bail!(Api, "unexpected DID {did:?}");
    }
    Ok(did)
}

async fn email_confirmed_on_droplet(ctx: &Ctx<'_>, did: &str) -> Result<bool> {
    let sql = format!("select emailConfirmedAt is not null and emailConfirmedAt != '' from account where did = '{did}';");
    super::facts::sqlite_says_yes(&format!("{PDS_VOLUME_PATH}/account.sqlite"), &sql)
        .read(ctx.host)
        .await
}

pub async fn confirm_email(ctx: &mut Ctx<'_>, _handle: &str) -> Result<()> {
    let did = checked_did(ctx)?;
    confirm_emails(ctx.host, &[did.as_str()]).await
}

/// Marks the email addresses of the accounts `dids` confirmed (the seed's
/// sqlite update), for PDSes that send no mail; one already confirmed keeps
/// its time.
pub async fn confirm_emails(host: &dyn Host, dids: &[&str]) -> Result<()> {
    if dids.is_empty() {
        return Ok(());
    }
    let list = dids
        .iter()
        .map(|d| sql_safe_did(d).map(|d| format!("'{d}'")))
        .collect::<Result<Vec<_>>>()?
        .join(", ");
    let sql = format!(
        "update account set emailConfirmedAt = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where did in ({list}) and (emailConfirmedAt is null or emailConfirmedAt = '');"
    );
    host.run(
        &Script::of(
            concat!(
                "set -e; command -v sqlite3 >/dev/null || { ",
                apt_get!(),
                " update && ",
                apt_get!(),
                " install sqlite3; }; sqlite3 {} {}"
            ),
            &[&format!("{PDS_VOLUME_PATH}/account.sqlite"), &sql],
        )
        .cmd(),
    )
    .await?;
    Ok(())
}

/// The first account, created once and journaled in site.toml.
pub struct AccountStep;

#[async_trait::async_trait(?Send)]
impl super::Step for AccountStep {
    type Facts = Facts;

    fn id(&self) -> StepId {
        ID
    }

    fn fresh(&self) -> Facts {
        Facts::fresh()
    }

    fn probes(&self, _settings: &Settings) -> Vec<crate::host::Cmd> {
        vec![data_dir_fact().cmd]
    }

    async fn gather(&self, ctx: &mut Ctx<'_>) -> Result<Facts> {
        gather(ctx).await
    }

    fn plan(&self, facts: &Facts, input: &super::PlanInput<'_>) -> Result<StepPlan> {
        Ok(plan(facts, input.settings, input.env_file))
    }

    async fn apply(&self, ctx: &mut Ctx<'_>, action: &Action) -> Result<()> {
        match action {
            Action::CreateAccount { handle, email } => create_account(ctx, handle, email).await,
            Action::RecordAccount { did } => record_account(ctx, did),
            Action::ConfirmEmail { handle } => confirm_email(ctx, handle).await,
            other => ctx.apply(other).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_handle_is_told_from_other_refusals() {
        let refusal = |error: &str, message: &str| {
            crate::error::Error::from(XrpcError {
                method: "com.atproto.server.createAccount".into(),
                status: 400,
                error: error.into(),
                message: Some(message.into()),
            })
        };
        assert!(handle_taken(&refusal(
            "InvalidRequest",
            "Handle already taken: alice.pds.test"
        )));
        assert!(handle_taken(&refusal("HandleNotAvailable", "")));
        assert!(!handle_taken(&refusal("InvalidInviteCode", "bad invite")));
        assert!(!handle_taken(&crate::error::Error::msg(
            "Handle already taken"
        )));
        let failed = |status: u16| {
            crate::error::Error::from(XrpcError {
                method: "com.atproto.server.createAccount".into(),
                status,
                error: "InternalServerError".into(),
                message: None,
            })
        };
        assert!(server_error(&failed(500)));
        assert!(server_error(&failed(503)));
        assert!(!server_error(&failed(400)));
        assert!(!server_error(&crate::error::Error::msg("500")));
    }

    const ENV: &str = "/home/me/.local/share/pdsup/sites/pds.example.com/pds.env";

    fn intent() -> Option<AccountIntent> {
        Some(AccountIntent {
            handle: "alice.pds.example.com".into(),
            email: "alice@example.com".into(),
        })
    }

    fn site(did: Option<&str>, intent: Option<AccountIntent>) -> SiteFacts {
        SiteFacts {
            recorded_did: did.map(str::to_string),
            intent,
            site_id: Some("s1".into()),
        }
    }

    /// Facts of a PDS hosting `hosted`, where the handle has `handle_did`.
    fn on_pds(site: SiteFacts, hosted: &[&str], handle_did: Option<&str>) -> Facts {
        Facts {
            hosted: Some(hosted.iter().map(|d| d.to_string()).collect()),
            handle_did: handle_did.map(str::to_string),
            email_confirmed: false,
            site,
            data_is_ours: true,
        }
    }

    fn plan_of(facts: &Facts) -> StepPlan {
        plan(facts, &Settings::example(), ENV)
    }

    fn actions(p: &StepPlan) -> Vec<String> {
        p.changes
            .iter()
            .map(|c| format!("{:?}", c.action))
            .collect()
    }

    #[test]
    fn creates_once_and_confirms_when_asked() {
        let mut settings = Settings::example();
        let p = plan(&Facts::fresh(), &settings, ENV);
        assert_eq!(p.changes.len(), 1);
        assert!(p.changes[0].summary.contains("alice.pds.example.com"));
        assert!(matches!(p.changes[0].action, Action::CreateAccount { .. }));
        let exists = on_pds(
            site(Some("did:plc:x"), None),
            &["did:plc:x"],
            Some("did:plc:x"),
        );
        assert!(plan(&exists, &settings, ENV).is_unchanged());
        settings.confirm_email = true;
        assert_eq!(plan(&exists, &settings, ENV).changes.len(), 1);
        let confirmed = Facts {
            email_confirmed: true,
            ..exists
        };
        assert!(plan(&confirmed, &settings, ENV).is_unchanged());
    }

    #[test]
    fn neither_did_nor_intent_creates_unless_the_pds_has_the_handle() {
        let fresh = on_pds(site(None, None), &[], None);
        assert!(matches!(
            plan_of(&fresh).changes[0].action,
            Action::CreateAccount { .. }
        ));
        // Data that is not ours does not matter to a site with no account.
        let foreign = Facts {
            data_is_ours: false,
            ..fresh
        };
        assert_eq!(plan_of(&foreign).changes.len(), 1);
        // An account pdsup never recorded: recorded now, never made again.
        let unrecorded = on_pds(site(None, None), &["did:plc:x"], Some("did:plc:x"));
        let p = plan_of(&unrecorded);
        assert_eq!(actions(&p), ["RecordAccount { did: \"did:plc:x\" }"]);
        assert!(
            p.notes[0].contains("reset-password did:plc:x"),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn a_recorded_did_is_checked_against_the_pds() {
        let hosted = on_pds(site(Some("did:plc:old"), None), &["did:plc:old"], None);
        // The handle may have moved to a custom domain: the DID is what counts.
        assert!(plan_of(&hosted).is_unchanged());
        assert!(plan_of(&hosted).blockers.is_empty());
        for handle_did in [None, Some("did:plc:new")] {
            let lost = on_pds(
                site(Some("did:plc:old"), None),
                &["did:plc:new"],
                handle_did,
            );
            let p = plan_of(&lost);
            assert!(p.is_unchanged(), "{:?}", p.changes);
            assert!(p.blockers[0].contains("did:plc:old"), "{:?}", p.blockers);
            assert!(p.blockers[0].contains("Restore /srv/nomad/pds"));
        }
    }

    #[test]
    fn did_and_intent_clear_the_intent_or_block() {
        let both = on_pds(site(Some("did:plc:x"), intent()), &["did:plc:x"], None);
        assert_eq!(
            actions(&plan_of(&both)),
            ["RecordAccount { did: \"did:plc:x\" }"]
        );
        let lost = on_pds(site(Some("did:plc:x"), intent()), &[], None);
        let p = plan_of(&lost);
        assert!(p.is_unchanged() && p.blockers[0].contains("did:plc:x"));
    }

    #[test]
    fn an_interrupted_creation_the_pds_finished_is_recorded_and_its_password_reset_explained() {
        for data_is_ours in [true, false] {
            let made = Facts {
                data_is_ours,
                ..on_pds(site(None, intent()), &["did:plc:x"], Some("did:plc:x"))
            };
            let p = plan_of(&made);
            assert_eq!(actions(&p), ["RecordAccount { did: \"did:plc:x\" }"]);
            let note = &p.notes[0];
            for needle in [
                "password was never shown",
                "did:plc:x",
                "pdsadmin account reset-password did:plc:x",
                r#"\\"did\\":\\"did:plc:x\\""#,
                ENV,
                "com.atproto.admin.updateAccountPassword",
                "curl -fsS -K -",
            ] {
                assert!(note.contains(needle), "{needle:?} not in {note}");
            }
            // The admin password reaches curl on stdin, not in its arguments.
            assert!(!note.contains("-u "), "{note}");
        }
    }

    #[test]
    fn an_interrupted_creation_the_pds_never_saw_is_retried_only_on_this_sites_data() {
        let never_sent = on_pds(site(None, intent()), &[], None);
        let p = plan_of(&never_sent);
        assert!(matches!(p.changes[0].action, Action::CreateAccount { .. }));
        assert!(p.notes[0].contains("creating it now"));
        let lost = Facts {
            data_is_ours: false,
            ..never_sent
        };
        let p = plan_of(&lost);
        assert!(p.is_unchanged(), "{:?}", p.changes);
        assert!(p.blockers[0].contains("Restore /srv/nomad/pds"));
        assert!(p.blockers[0].contains("account_intent"));
    }

    #[test]
    fn a_silent_pds_blocks_a_site_with_an_account_and_never_creates_a_second() {
        for s in [
            site(Some("did:plc:x"), None),
            site(None, intent()),
            site(Some("did:plc:x"), intent()),
        ] {
            let silent = Facts {
                hosted: None,
                ..on_pds(s, &[], None)
            };
            let p = plan_of(&silent);
            assert!(p.is_unchanged(), "{:?}", p.changes);
            assert!(p.blockers[0].contains("listRepos"));
        }
        let new_site = Facts {
            hosted: None,
            ..on_pds(site(None, None), &[], None)
        };
        assert_eq!(plan_of(&new_site).changes.len(), 1);
    }

    fn claim(data: DataDir, site: &SiteFacts) -> StepPlan {
        let mut p = StepPlan::new(crate::steps::pds_job::ID);
        claim_data_dir(&mut p, &data, site, "new", &Settings::example());
        p
    }

    fn data(id: Option<&str>, empty: bool) -> DataDir {
        DataDir {
            site_id: id.map(str::to_string),
            empty,
        }
    }

    #[test]
    fn empty_data_is_claimed_only_by_a_site_without_an_account() {
        let new_site = SiteFacts::default();
        let p = claim(DataDir::fresh(), &new_site);
        assert_eq!(actions(&p), ["ClaimDataDir { site_id: \"new\" }"]);
        // A site id from a run cut off before it reached the droplet is reused.
        let p = claim(DataDir::fresh(), &site(None, None));
        assert_eq!(actions(&p), ["ClaimDataDir { site_id: \"s1\" }"]);
        for s in [
            site(Some("did:plc:x"), None),
            site(None, intent()),
            site(Some("did:plc:x"), intent()),
        ] {
            let p = claim(DataDir::fresh(), &s);
            assert!(p.is_unchanged(), "{:?}", p.changes);
            assert!(
                p.blockers[0].contains("is empty")
                    && p.blockers[0].contains("Restore /srv/nomad/pds"),
                "{:?}",
                p.blockers
            );
        }
    }

    #[test]
    fn data_ids_must_match() {
        let ours = site(Some("did:plc:x"), None);
        let p = claim(data(Some("s1"), false), &ours);
        assert!(p.is_unchanged() && p.blockers.is_empty());
        // Claimed but the PDS never started on it yet.
        let p = claim(data(Some("s1"), true), &site(None, intent()));
        assert!(p.is_unchanged() && p.blockers.is_empty());
        for s in [ours.clone(), SiteFacts::default()] {
            let p = claim(data(Some("s2"), false), &s);
            assert!(p.is_unchanged());
            assert!(p.blockers[0].contains("another site"), "{:?}", p.blockers);
            assert!(p.blockers[0].contains("site_id = \"s2\""));
        }
        // Data from before site ids: left to the account step's listRepos check.
        let p = claim(data(None, false), &ours);
        assert!(p.is_unchanged() && p.blockers.is_empty());
    }
}
