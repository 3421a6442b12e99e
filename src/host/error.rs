//! `SshError`: why connecting or logging in to the droplet failed, each saying
//! what to do next. Shared by the SSH client (`ssh`) and the host key pins
//! (`known_hosts`), which both produce them.

use std::path::PathBuf;

/// The environment variable that holds the passphrase of an encrypted key.
pub const PASSPHRASE_ENV: &str = "PDSUP_SSH_PASSPHRASE";

/// Connection and login failures, each saying what to do next. They reach the
/// caller inside `crate::error::Error`; `err.downcast_ref::<SshError>()` finds them.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "cannot reach {addr} over SSH: check the address and port, that the droplet is running, \
         and that no firewall (the provider's or the droplet's) blocks that port"
    )]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },

    #[error(
        "connected to {addr}, but the SSH handshake failed ({reason}); is an SSH server \
         listening on that port?"
    )]
    Handshake { addr: String, reason: String },

    #[error(
        "the SSH host key of {host} is not the key pinned for this site (it changed)\n  \
         pinned:  {known_fingerprint} (in {})\n  \
         offered: {offered_fingerprint}\n\
         This is expected if the droplet was rebuilt or reinstalled, or if this address now \
         belongs to another machine, but it can also mean that \
         someone is intercepting the connection (a man-in-the-middle attack). Compare the offered \
         fingerprint with the droplet's own (in the provider's web console: \
         `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`); if they match, run again with \
         --accept-new-host-key to pin the new key deliberately",
        pin_file.display()
    )]
    HostKeyChanged {
        host: String,
        known_fingerprint: String,
        offered_fingerprint: String,
        pin_file: PathBuf,
    },

    #[error(
        "cannot use the host key pin file {}: {reason}; correct that line, or restore the file \
         from your backup (it is an OpenSSH known_hosts file holding the site's host key)",
        path.display()
    )]
    PinFile { path: PathBuf, reason: String },

    #[error(
        "{user}@{host} accepted none of the keys tried ({}); add your public key to \
         ~{user}/.ssh/authorized_keys on the droplet, choose the key with -i FILE or IdentityFile \
         in ~/.ssh/config, or load it into ssh-agent",
        tried_list(tried)
    )]
    AuthFailed {
        user: String,
        host: String,
        tried: Vec<String>,
    },

    #[error("cannot use the key {}: {reason}", path.display())]
    KeyUnreadable { path: PathBuf, reason: String },

    #[error(
        "wrong passphrase for the key {}; give the right one in {PASSPHRASE_ENV} (or at the \
         prompt), or load the key into ssh-agent",
        path.display()
    )]
    WrongPassphrase { path: PathBuf },

    #[error(
        "{user} cannot use sudo without a password, and pdsup runs sudo non-interactively \
         (sudo -n). Log in as root instead, or allow {user} passwordless sudo on the droplet: \
         `echo '{user} ALL=(ALL) NOPASSWD:ALL' | sudo tee /etc/sudoers.d/90-pdsup && \
         sudo chmod 0440 /etc/sudoers.d/90-pdsup`"
    )]
    SudoNeedsPassword { user: String },

    #[error(
        "{user} is not root and cannot use sudo (it is missing, or {user} is not in the sudoers); \
         log in as root, or install sudo and give {user} passwordless sudo (NOPASSWD)"
    )]
    NoSudo { user: String },
}

fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "none found: no ssh-agent (SSH_AUTH_SOCK), no -i, no IdentityFile, no ~/.ssh/id_ed25519, \
         id_ecdsa or id_rsa"
            .to_string()
    } else {
        tried.join("; ")
    }
}

impl From<SshError> for crate::error::Error {
    fn from(e: SshError) -> Self {
        use crate::error::ErrorKind;
        let kind = match &e {
            SshError::HostKeyChanged { .. } => ErrorKind::HostKeyChanged,
            // A broken state file of the site, not a connection problem.
            SshError::PinFile { .. } => ErrorKind::Local,
            SshError::Unreachable { .. }
            | SshError::Handshake { .. }
            | SshError::AuthFailed { .. }
            | SshError::KeyUnreadable { .. }
            | SshError::WrongPassphrase { .. }
            | SshError::SudoNeedsPassword { .. }
            | SshError::NoSudo { .. } => ErrorKind::Ssh,
        };
        crate::error::Error::from_source(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let changed = SshError::HostKeyChanged {
            host: "203.0.113.7".into(),
            known_fingerprint: "SHA256:old".into(),
            offered_fingerprint: "SHA256:new".into(),
            pin_file: PathBuf::from("/state/site/known_hosts"),
        }
        .to_string();
        for part in [
            "SHA256:old",
            "SHA256:new",
            "/state/site/known_hosts",
            "rebuilt",
            "man-in-the-middle",
            "--accept-new-host-key",
        ] {
            assert!(changed.contains(part), "{part}: {changed}");
        }
        let auth = SshError::AuthFailed {
            user: "admin".into(),
            host: "203.0.113.7:22".into(),
            tried: vec!["agent key SHA256:a".into(), "/k/id (SHA256:b)".into()],
        }
        .to_string();
        assert!(
            auth.contains("agent key SHA256:a; /k/id (SHA256:b)"),
            "{auth}"
        );
        assert!(auth.contains("~admin/.ssh/authorized_keys"), "{auth}");
        let sudo = SshError::SudoNeedsPassword { user: "bob".into() }.to_string();
        assert!(sudo.contains("bob ALL=(ALL) NOPASSWD:ALL"), "{sudo}");
        assert!(sudo.contains("as root"), "{sudo}");
        let no_sudo = SshError::NoSudo { user: "bob".into() }.to_string();
        assert!(no_sudo.contains("log in as root"), "{no_sudo}");
    }
}
