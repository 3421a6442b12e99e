//! The PDS's admin and listing calls for the day-2 commands (`account`,
//! `invite`, `status`): `com.atproto.sync.listRepos` paged with its cursor,
//! and `com.atproto.admin.*` with the admin password (HTTP basic auth, user
//! `admin`), as pdsadmin makes them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::xrpc::Xrpc;
use crate::error::{Context, Result};
use crate::secret::Secret;

/// One repository `listRepos` lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Repo {
    pub did: String,
    #[serde(default = "yes")]
    pub active: bool,
    /// Why it is not active: `takendown`, `deactivated`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

fn yes() -> bool {
    true
}

/// What `getAccountInfos` says of an account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInfo {
    pub did: String,
    #[serde(default)]
    pub handle: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexed_at: Option<String>,
}

/// A page of `listRepos`: its repositories and the cursor of the next page
/// (none on the last page: an empty page or no cursor).
pub fn parse_repos_page(page: &Value) -> Result<(Vec<Repo>, Option<String>)> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        cursor: Option<String>,
        repos: Vec<Repo>,
    }
    let page: Page = serde_json::from_value(page.clone()).context("reading listRepos' page")?;
    let cursor = page
        .cursor
        .filter(|c| !c.is_empty() && !page.repos.is_empty());
    Ok((page.repos, cursor))
}

/// Page size for `listRepos`: pdsadmin asks for 100 and stops there; pdsup
/// follows the cursor, and small pages keep each answer quick.
pub const PAGE: usize = 100;

/// Every repository hosted, following the cursor page after page;
/// `progress` gets the count so far.
pub async fn all_repos(xrpc: &Xrpc, progress: &mut dyn FnMut(usize)) -> Result<Vec<Repo>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let limit = PAGE.to_string();
    loop {
        let mut params = vec![("limit", limit.as_str())];
        if let Some(c) = &cursor {
            params.push(("cursor", c.as_str()));
        }
        let page = xrpc
            .query_json("com.atproto.sync.listRepos", None, &params)
            .await?;
        let (repos, next) = parse_repos_page(&page)?;
        all.extend(repos);
        progress(all.len());
        match next {
            // A cursor that does not move would loop forever.
            Some(n) if cursor.as_deref() != Some(n.as_str()) => cursor = Some(n),
            _ => return Ok(all),
        }
    }
}

/// `getAccountInfos` for `dids`, a batch at a time (the query string stays short).
pub async fn account_infos(
    xrpc: &Xrpc,
    admin: &Secret,
    dids: &[String],
) -> Result<Vec<AccountInfo>> {
    #[derive(Deserialize)]
    struct Infos {
        infos: Vec<AccountInfo>,
    }
    let mut out = Vec::with_capacity(dids.len());
    for batch in dids.chunks(50) {
        let params: Vec<(&str, &str)> = batch.iter().map(|d| ("dids", d.as_str())).collect();
        let v = xrpc
            .query_json("com.atproto.admin.getAccountInfos", Some(admin), &params)
            .await?;
        let infos: Infos = serde_json::from_value(v).context("reading getAccountInfos")?;
        out.extend(infos.infos);
    }
    Ok(out)
}

pub async fn delete_account(xrpc: &Xrpc, admin: &Secret, did: &str) -> Result<()> {
    xrpc.procedure_json(
        "com.atproto.admin.deleteAccount",
        Some(admin),
        json!({ "did": did }),
    )
    .await?;
    Ok(())
}

pub async fn update_password(
    xrpc: &Xrpc,
    admin: &Secret,
    did: &str,
    password: &Secret,
) -> Result<()> {
    xrpc.procedure_json(
        "com.atproto.admin.updateAccountPassword",
        Some(admin),
        json!({ "did": did, "password": password.expose() }),
    )
    .await?;
    Ok(())
}

/// The body of `updateSubjectStatus` taking a repository down or back up.
pub fn takedown_body(did: &str, applied: bool, reference: &str) -> Value {
    let mut takedown = json!({ "applied": applied });
    if applied {
        takedown["ref"] = json!(reference);
    }
    json!({
        "subject": { "$type": "com.atproto.admin.defs#repoRef", "did": did },
        "takedown": takedown,
    })
}

pub async fn set_takedown(xrpc: &Xrpc, admin: &Secret, did: &str, applied: bool) -> Result<()> {
    let reference = format!("pdsup-{}", unix_now());
    xrpc.procedure_json(
        "com.atproto.admin.updateSubjectStatus",
        Some(admin),
        takedown_body(did, applied, &reference),
    )
    .await?;
    Ok(())
}

/// Whether the repository is taken down, as `getSubjectStatus` says.
pub async fn is_taken_down(xrpc: &Xrpc, admin: &Secret, did: &str) -> Result<bool> {
    let v = xrpc
        .query_json(
            "com.atproto.admin.getSubjectStatus",
            Some(admin),
            &[("did", did)],
        )
        .await?;
    Ok(v["takedown"]["applied"].as_bool().unwrap_or(false))
}

/// Invite codes of `use_count` uses each.
pub async fn create_invite_codes(
    xrpc: &Xrpc,
    admin: &Secret,
    count: u32,
    use_count: u32,
) -> Result<Vec<String>> {
    let mut codes = Vec::new();
    for _ in 0..count {
        let v = xrpc
            .procedure_json(
                "com.atproto.server.createInviteCode",
                Some(admin),
                json!({ "useCount": use_count }),
            )
            .await?;
        let code = v["code"]
            .as_str()
            .ok_or_else(|| crate::err!(Api, "createInviteCode answered without a code: {v}"))?;
        codes.push(code.to_string());
    }
    Ok(codes)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_cursor_until_an_empty_page_or_none() {
        let (repos, next) = parse_repos_page(&json!({
            "cursor": "did:plc:b",
            "repos": [
                {"did": "did:plc:a", "head": "x", "rev": "1", "active": true},
                {"did": "did:plc:b", "active": false, "status": "takendown"},
            ]
        }))
        .unwrap();
        assert_eq!(next.as_deref(), Some("did:plc:b"));
        assert_eq!(repos.len(), 2);
        assert!(repos[0].active);
        assert_eq!(
            (repos[1].active, repos[1].status.as_deref()),
            (false, Some("takendown"))
        );
        let (empty, next) = parse_repos_page(&json!({"cursor": "x", "repos": []})).unwrap();
        assert!(empty.is_empty() && next.is_none());
        let (_, next) = parse_repos_page(&json!({"repos": [{"did": "did:plc:a"}]})).unwrap();
        assert!(next.is_none());
        assert!(parse_repos_page(&json!({"nope": 1})).is_err());
    }

    #[test]
    fn a_takedown_names_the_repo_and_carries_a_reference() {
        let body = takedown_body("did:plc:a", true, "pdsup-1");
        assert_eq!(body["subject"]["$type"], "com.atproto.admin.defs#repoRef");
        assert_eq!(body["subject"]["did"], "did:plc:a");
        assert_eq!(body["takedown"], json!({"applied": true, "ref": "pdsup-1"}));
        assert_eq!(
            takedown_body("did:plc:a", false, "r")["takedown"],
            json!({"applied": false})
        );
    }
}
