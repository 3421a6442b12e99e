//! The first account: an admin invite code, then `createAccount` with a password
//! generated here and shown once. Re-runs find the handle and change nothing.
//! `--confirm-email` marks the address confirmed with the seed's sqlite update,
//! for small PDSes that send no mail.

use anyhow::{bail, Result};

use super::docker::APT;
use super::{AccountOutcome, Action, Ctx, StepId, StepPlan};
use crate::host::{quote, Cmd};
use crate::settings::{Settings, PDS_VOLUME_PATH};
use crate::state::secrets::account_password;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The DID the handle resolves to on this PDS, when the account exists.
    pub did: Option<String>,
    pub email_confirmed: bool,
    /// The DID this site's first account had on an earlier run (`site.toml`).
    pub recorded_did: Option<String>,
}

impl Facts {
    pub fn fresh() -> Self {
        Facts::default()
    }
}

pub async fn gather(ctx: &mut Ctx<'_>) -> Result<Facts> {
    let handle = ctx.settings.handle.initial().to_string();
    let did = match ctx.pds().await {
        Ok(pds) => pds.resolve_handle(&handle).await.unwrap_or(None),
        Err(_) => None,
    };
    let mut email_confirmed = false;
    if let Some(did) = &did {
        ctx.outcome.account = Some(AccountOutcome {
            did: did.clone(),
            handle: handle.clone(),
            password: None,
        });
        if ctx.settings.confirm_email {
            email_confirmed = email_confirmed_on_droplet(ctx, did).await?;
        }
    }
    Ok(Facts {
        did,
        email_confirmed,
        recorded_did: ctx.record.account_did.clone(),
    })
}

pub fn plan(facts: &Facts, settings: &Settings) -> StepPlan {
    let mut plan = StepPlan::new(StepId::Account);
    let handle = settings.handle.initial().to_string();
    if let (None, Some(recorded)) = (&facts.did, &facts.recorded_did) {
        // A rebuilt droplet without its data: creating the account again would
        // give the handle a new DID and orphan the old identity.
        plan.blockers.push(format!(
            "this site's account {handle} ({recorded}) is not on this droplet: its data in {PDS_VOLUME_PATH} is missing. \
             Restore {PDS_VOLUME_PATH} from a backup and run again; or, to start over with a new account and a new DID, \
             delete the account_did line from site.toml"
        ));
        return plan;
    }
    if facts.did.is_none() {
        plan.change(
            format!(
                "create the account {handle} <{}> (password generated, shown once)",
                settings.email.as_str()
            ),
            Action::CreateAccount {
                handle: handle.clone(),
                email: settings.email.as_str().to_string(),
            },
        );
    }
    if settings.confirm_email && !facts.email_confirmed {
        plan.change(
            format!("mark {}'s email as confirmed", handle),
            Action::ConfirmEmail { handle },
        );
    }
    plan
}

pub async fn create(ctx: &mut Ctx<'_>, handle: &str, email: &str) -> Result<()> {
    let admin = ctx.secrets()?.admin_password.clone();
    let password = account_password();
    let pds = ctx.pds().await?;
    let invite = pds.create_invite_code(&admin).await?;
    let created = pds
        .create_account(email, handle, &password, &invite)
        .await?;
    ctx.record.account_did = Some(created.did.clone());
    ctx.site.save_record(&ctx.record)?;
    ctx.outcome.account = Some(AccountOutcome {
        did: created.did,
        handle: created.handle,
        password: Some(password),
    });
    Ok(())
}

fn checked_did(ctx: &Ctx<'_>) -> Result<String> {
    let Some(account) = &ctx.outcome.account else {
        bail!("no account to confirm");
    };
    // The DID goes into an SQL statement: accept only did:plc/did:web characters.
    let did = &account.did;
    if !did.starts_with("did:")
        || !did
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":._-%".contains(c))
    {
        bail!("unexpected DID {did:?}");
    }
    Ok(did.clone())
}

async fn email_confirmed_on_droplet(ctx: &Ctx<'_>, did: &str) -> Result<bool> {
    let sql = format!("select emailConfirmedAt is not null and emailConfirmedAt != '' from account where did = '{did}';");
    let out = ctx
        .probe(&format!(
            "command -v sqlite3 >/dev/null && sqlite3 {} {}",
            quote(&format!("{PDS_VOLUME_PATH}/account.sqlite")),
            quote(&sql)
        ))
        .await?;
    Ok(out.success() && out.stdout_str().trim() == "1")
}

pub async fn confirm_email(ctx: &mut Ctx<'_>, _handle: &str) -> Result<()> {
    let did = checked_did(ctx)?;
    let sql = format!(
        "update account set emailConfirmedAt = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') where did = '{did}' and (emailConfirmedAt is null or emailConfirmedAt = '');"
    );
    ctx.host
        .run(&Cmd::sh(format!(
            "set -e; command -v sqlite3 >/dev/null || {{ {APT} update && {APT} install sqlite3; }}; sqlite3 {} {}",
            quote(&format!("{PDS_VOLUME_PATH}/account.sqlite")),
            quote(&sql)
        )))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_confirms_when_asked() {
        let mut settings = Settings::example();
        let p = plan(&Facts::fresh(), &settings);
        assert_eq!(p.changes.len(), 1);
        assert!(p.changes[0].summary.contains("alice.pds.example.com"));
        let exists = Facts {
            did: Some("did:plc:x".into()),
            email_confirmed: false,
            recorded_did: Some("did:plc:x".into()),
        };
        assert!(plan(&exists, &settings).is_unchanged());
        settings.confirm_email = true;
        assert_eq!(plan(&exists, &settings).changes.len(), 1);
        let confirmed = Facts {
            email_confirmed: true,
            ..exists
        };
        assert!(plan(&confirmed, &settings).is_unchanged());
    }

    #[test]
    fn a_recorded_account_missing_from_the_droplet_blocks_instead_of_recreating() {
        let lost = Facts {
            did: None,
            email_confirmed: false,
            recorded_did: Some("did:plc:old".into()),
        };
        let p = plan(&lost, &Settings::example());
        assert!(p.is_unchanged());
        assert!(p.blockers[0].contains("did:plc:old"), "{:?}", p.blockers);
        assert!(p.blockers[0].contains("Restore /srv/nomad/pds"));
    }
}
