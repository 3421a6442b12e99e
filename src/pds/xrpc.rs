//! A small XRPC client for the calls pdsup makes to the PDS (REFERENCE.md's table).
//!
//! pdsup reaches the PDS through the SSH tunnel to its loopback port, so the first
//! account can be created before DNS or TLS are in place.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Context, Result};
use serde::Deserialize;
use serde_json::json;

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
#[error("the PDS refused {method}: {status} {error}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
pub struct XrpcError {
    pub method: String,
    pub status: u16,
    /// The XRPC error name, e.g. `HandleNotAvailable`.
    pub error: String,
    pub message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedAccount {
    pub did: String,
    pub handle: String,
}

pub struct Xrpc {
    base: String,
    client: reqwest::Client,
}

/// How long one call may take (creating an account writes to the PLC directory).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// `_health` answers at once or the PDS is not up; callers poll it.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

impl Xrpc {
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_base(format!("http://{addr}"))
    }

    /// A client over an HTTP client the run shares (one that never uses a
    /// proxy: the address is a tunnel's local end).
    pub fn with_client(addr: SocketAddr, client: reqwest::Client) -> Self {
        Xrpc {
            base: format!("http://{addr}"),
            client,
        }
    }

    pub fn with_base(base: impl Into<String>) -> Self {
        Xrpc {
            base: base.into(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    /// The version `/xrpc/_health` reports, or an error when the PDS is not healthy.
    pub async fn health(&self) -> Result<String> {
        #[derive(Deserialize)]
        struct Health {
            version: Option<String>,
        }
        let resp = self
            .client
            .get(format!("{}/xrpc/_health", self.base))
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .context("asking the PDS for /xrpc/_health")?;
        let status = resp.status();
        crate::ensure!(status.is_success(), Api, "/xrpc/_health answered {status}");
        let health: Health = resp.json().await?;
        Ok(health.version.unwrap_or_else(|| "unknown".into()))
    }

    pub async fn create_invite_code(&self, admin_password: &Secret) -> Result<String> {
        #[derive(Deserialize)]
        struct Invite {
            code: String,
        }
        let invite: Invite = self
            .post(
                "com.atproto.server.createInviteCode",
                Some(admin_password),
                json!({"useCount": 1}),
            )
            .await?;
        Ok(invite.code)
    }

    pub async fn create_account(
        &self,
        email: &str,
        handle: &str,
        password: &Secret,
        invite_code: &str,
    ) -> Result<CreatedAccount> {
        #[derive(Deserialize)]
        struct Created {
            did: String,
            handle: String,
        }
        let created: Created = self
            .post(
                "com.atproto.server.createAccount",
                None,
                json!({
                    "email": email,
                    "handle": handle,
                    "password": password.expose(),
                    "inviteCode": invite_code,
                }),
            )
            .await?;
        Ok(CreatedAccount {
            did: created.did,
            handle: created.handle,
        })
    }

    /// The DID of a handle hosted here, or `None` when no account has it.
    pub async fn resolve_handle(&self, handle: &str) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Resolved {
            did: String,
        }
        let method = "com.atproto.identity.resolveHandle";
        let resp = self
            .client
            .get(self.url(method))
            .timeout(CALL_TIMEOUT)
            .query(&[("handle", handle)])
            .send()
            .await
            .with_context(|| format!("calling {method}"))?;
        if resp.status().is_success() {
            return Ok(Some(resp.json::<Resolved>().await?.did));
        }
        let err = xrpc_error(method, resp).await;
        // The PDS answers 400 for a handle it cannot resolve.
        if err.status == 400 {
            return Ok(None);
        }
        Err(err.into())
    }

    /// DIDs of the repositories hosted here (first page, enough for pdsup's checks).
    pub async fn list_repos(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Repo {
            did: String,
        }
        #[derive(Deserialize)]
        struct Repos {
            repos: Vec<Repo>,
        }
        let method = "com.atproto.sync.listRepos";
        let req = self
            .client
            .get(self.url(method))
            .timeout(CALL_TIMEOUT)
            .query(&[("limit", "1000")]);
        Ok(self
            .send(method, req, None)
            .await?
            .json::<Repos>()
            .await?
            .repos
            .into_iter()
            .map(|r| r.did)
            .collect())
    }

    /// Sends a call to `method` (as admin when `admin_password` is given); a
    /// refusal becomes an [`XrpcError`].
    async fn send(
        &self,
        method: &str,
        req: reqwest::RequestBuilder,
        admin_password: Option<&Secret>,
    ) -> Result<reqwest::Response> {
        let req = match admin_password {
            Some(password) => req.basic_auth("admin", Some(password.expose())),
            None => req,
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {method}"))?;
        if !resp.status().is_success() {
            return Err(xrpc_error(method, resp).await.into());
        }
        Ok(resp)
    }

    fn url(&self, method: &str) -> String {
        format!("{}/xrpc/{method}", self.base)
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        admin_password: Option<&Secret>,
        body: serde_json::Value,
    ) -> Result<T> {
        let req = self
            .client
            .post(self.url(method))
            .timeout(CALL_TIMEOUT)
            .json(&body);
        self.send(method, req, admin_password)
            .await?
            .json()
            .await
            .with_context(|| format!("reading the answer to {method}"))
    }

    /// A query (GET) with `params`, as admin when `admin_password` is given;
    /// the answer as JSON (`pds::admin` builds its calls on this).
    pub async fn query_json(
        &self,
        method: &str,
        admin_password: Option<&Secret>,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value> {
        let req = self.client.get(self.url(method)).query(params);
        self.send(method, req, admin_password)
            .await?
            .json()
            .await
            .with_context(|| format!("reading the answer to {method}"))
    }

    /// A procedure (POST of `body`); its answer as JSON, `null` when it has none.
    pub async fn procedure_json(
        &self,
        method: &str,
        admin_password: Option<&Secret>,
        body: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let req = self.client.post(self.url(method)).json(&body);
        let text = self
            .send(method, req, admin_password)
            .await?
            .text()
            .await
            .with_context(|| format!("reading the answer to {method}"))?;
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("reading the answer to {method}"))
    }

    /// Logs in as an account (`createSession`): its DID and an access token.
    pub async fn create_session(&self, identifier: &str, password: &Secret) -> Result<Session> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            did: String,
            access_jwt: String,
        }
        let created: Created = self
            .post(
                "com.atproto.server.createSession",
                None,
                json!({"identifier": identifier, "password": password.expose()}),
            )
            .await?;
        Ok(Session {
            did: created.did,
            access_jwt: Secret::new(created.access_jwt),
        })
    }

    /// Sets the display name of the session's account (its `app.bsky.actor.profile`).
    pub async fn put_display_name(&self, session: &Session, display_name: &str) -> Result<()> {
        let method = "com.atproto.repo.putRecord";
        let req = self
            .client
            .post(self.url(method))
            .bearer_auth(session.access_jwt.expose())
            .json(&json!({
                "repo": session.did,
                "collection": "app.bsky.actor.profile",
                "rkey": "self",
                "record": {"$type": "app.bsky.actor.profile", "displayName": display_name},
            }));
        self.send(method, req, None).await?;
        Ok(())
    }

    /// The CID and rev of `did`'s latest commit (`com.atproto.sync.getLatestCommit`).
    pub async fn latest_commit(&self, did: &str) -> Result<(String, String)> {
        #[derive(Deserialize)]
        struct Latest {
            cid: String,
            rev: String,
        }
        let method = "com.atproto.sync.getLatestCommit";
        let req = self.client.get(self.url(method)).query(&[("did", did)]);
        let latest: Latest = self.send(method, req, None).await?.json().await?;
        Ok((latest.cid, latest.rev))
    }

    /// A relay's last event sequence number for the PDS at `hostname`
    /// (`com.atproto.sync.getHostStatus`, which relays answer and PDSes do not).
    pub async fn host_seq(&self, hostname: &str) -> Result<u64> {
        #[derive(Deserialize)]
        struct HostStatus {
            seq: u64,
        }
        let method = "com.atproto.sync.getHostStatus";
        let req = self
            .client
            .get(self.url(method))
            .timeout(CALL_TIMEOUT)
            .query(&[("hostname", hostname)]);
        let status: HostStatus = self.send(method, req, None).await?.json().await?;
        Ok(status.seq)
    }

    /// Asks a relay (this client's base) to crawl `hostname`
    /// (`com.atproto.sync.requestCrawl`).
    pub async fn request_crawl(&self, hostname: &str) -> Result<()> {
        let _: serde_json::Value = self
            .post(
                "com.atproto.sync.requestCrawl",
                None,
                json!({ "hostname": hostname }),
            )
            .await
            .or_else(|e| {
                // Relays answer an empty body on success.
                if e.chain().any(|c| c.contains("reading the answer")) {
                    Ok(serde_json::Value::Null)
                } else {
                    Err(e)
                }
            })?;
        Ok(())
    }
}

/// A logged-in account (`createSession`).
pub struct Session {
    pub did: String,
    pub access_jwt: Secret,
}

async fn xrpc_error(method: &str, resp: reqwest::Response) -> XrpcError {
    #[derive(Deserialize, Default)]
    struct Body {
        error: Option<String>,
        message: Option<String>,
    }
    let status = resp.status().as_u16();
    let body: Body = resp.json().await.unwrap_or_default();
    XrpcError {
        method: method.to_string(),
        status,
        error: body.error.unwrap_or_else(|| "UnknownError".into()),
        message: body.message,
    }
}

impl From<XrpcError> for crate::error::Error {
    fn from(e: XrpcError) -> Self {
        crate::error::Error::from_source(crate::error::ErrorKind::Api, e)
    }
}
