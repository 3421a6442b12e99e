//! `NomadApi`: the few calls of Nomad's HTTP API that pdsup makes, through the
//! SSH tunnel to the droplet's 127.0.0.1:4646.
//!
//! Field names follow NOMAD-API.md exactly (responses use Go field names; the
//! agent's `health` and `self` use lowercase top-level keys). Invariants:
//! - errors name the method, path, HTTP status and an excerpt of the *response*
//!   body, never the request body (a job body holds the PDS's secrets), and any
//!   secret of the job being sent is masked in the excerpt as well;
//! - no proxy from the environment: the address is a local tunnel end;
//! - every request has a short timeout, and the `wait_*` helpers poll with a
//!   deadline, report progress through a callback, and say on timeout which
//!   condition was not met.
//!
//! `client`: the client and its one-request calls; `types`: what Nomad answers;
//! `wait`: the polling helpers built on them.

mod client;
mod types;
mod wait;

use reqwest::Method;

pub use client::{plain_http_client, NomadApi};
pub use types::*;
pub use wait::{JobFailed, JobHealth, Readiness, StartFailure, Until};

/// An error from one API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Nomad API {method} {path}: {source}")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Nomad API {method} {path}: HTTP {status}: {excerpt}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        excerpt: String,
    },
    #[error("Nomad API {method} {path}: unexpected response ({detail}): {excerpt}")]
    Decode {
        method: Method,
        path: String,
        detail: String,
        excerpt: String,
    },
}

impl ApiError {
    /// The HTTP status of an answered request.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl From<ApiError> for crate::error::Error {
    fn from(e: ApiError) -> Self {
        let kind = match &e {
            ApiError::Transport { source, .. } if source.is_timeout() => {
                crate::error::ErrorKind::TimedOut
            }
            _ => crate::error::ErrorKind::Api,
        };
        crate::error::Error::from_source(kind, e)
    }
}
