//! The connection before login: TCP with a timeout, russh's client settings and
//! the handler that checks the server's host key against the site's pins.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::PublicKeyOrCertificate;
use tokio::net::TcpStream;

use crate::host::dest::Target;
use crate::host::error::SshError;
use crate::host::known_hosts::{self, PinPolicy};

pub(super) fn client_config() -> client::Config {
    client::Config {
        // A dead link is noticed after about a minute of silence; an idle but live
        // one (a long apt-get) is kept: there is no inactivity timeout.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    }
}

pub(super) async fn tcp_connect(target: &Target, timeout: Duration) -> Result<TcpStream, SshError> {
    let addr = target.address();
    let unreachable = |source| SshError::Unreachable {
        addr: addr.clone(),
        source,
    };
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", timeout.as_secs()),
        )
    };
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| unreachable(timed_out()))?
    .map_err(unreachable)?
    .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    for sockaddr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(sockaddr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = timed_out(),
        }
        log::debug!("{sockaddr}: {last}");
    }
    Err(unreachable(last))
}

/// The russh event handler: only the host key check matters to us.
pub(super) struct Client {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) policy: PinPolicy,
    /// The first verdict, for `connect` to read: the fingerprint, or why not.
    pub(super) verdict: Arc<Mutex<Option<Result<String, SshError>>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = key.public_key();
        let result = known_hosts::verify(&self.host, self.port, &key, &self.policy)
            .map(|_| known_hosts::fingerprint(&key));
        let accepted = result.is_ok();
        let mut verdict = self.verdict.lock().expect("verdict lock");
        // Re-keying checks the key again; keep the first answer for `connect`.
        if verdict.is_none() {
            *verdict = Some(result);
        }
        Ok(accepted)
    }
}
