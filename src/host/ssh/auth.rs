//! Public key authentication: the ssh-agent's keys, then key files, an
//! encrypted key probed by its public half before its passphrase is asked for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::{self, AuthResult};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};

use super::connect::Client;
use super::{LocalEnv, SshOptions};
use crate::host::dest::Target;
use crate::host::error::{SshError, PASSPHRASE_ENV};
use crate::host::known_hosts;
use crate::secret::Secret;

/// Where a key file came from: errors in files the user named are fatal,
/// problems with the default files only skip them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Named,
    Default,
}

enum KeyMaterial {
    Plain(Arc<PrivateKey>),
    /// Still locked. `public` comes from the OpenSSH file itself or `<file>.pub`.
    Encrypted {
        public: Option<PublicKey>,
        text: String,
    },
}

pub(super) struct KeyCandidate {
    path: PathBuf,
    origin: Origin,
    material: KeyMaterial,
}

pub(super) fn key_candidates(
    opts: &SshOptions,
    target: &Target,
    env: &LocalEnv,
) -> Result<Vec<KeyCandidate>, SshError> {
    let mut paths: Vec<(PathBuf, Origin)> = Vec::new();
    match &opts.identity_file {
        Some(file) => paths.push((file.clone(), Origin::Named)),
        None => {
            for file in &target.identity_files {
                // Like OpenSSH, a configured IdentityFile that does not exist is skipped.
                if file.exists() {
                    paths.push((file.clone(), Origin::Named));
                } else {
                    log::debug!("IdentityFile {} does not exist; skipped", file.display());
                }
            }
        }
    }
    if let Some(home) = &env.home {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let file = home.join(".ssh").join(name);
            if file.exists() {
                paths.push((file, Origin::Default));
            }
        }
    }
    let mut out: Vec<KeyCandidate> = Vec::new();
    for (path, origin) in paths {
        if out.iter().any(|k| k.path == path) {
            continue;
        }
        match load_key(&path) {
            Ok(material) => out.push(KeyCandidate {
                path,
                origin,
                material,
            }),
            Err(reason) if origin == Origin::Named => {
                return Err(SshError::KeyUnreadable { path, reason })
            }
            Err(reason) => log::warn!("skipping the key {}: {reason}", path.display()),
        }
    }
    Ok(out)
}

/// Reads a private key without decrypting it.
fn load_key(path: &Path) -> Result<KeyMaterial, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    if PublicKey::from_openssh(text.trim()).is_ok() {
        return Err("this is a public key; give the private key (the file without .pub)".into());
    }
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let key = PrivateKey::from_openssh(&text)
            .map_err(|e| format!("not a valid OpenSSH private key ({e})"))?;
        return Ok(if key.is_encrypted() {
            KeyMaterial::Encrypted {
                public: Some(key.public_key().clone()),
                text,
            }
        } else {
            KeyMaterial::Plain(Arc::new(key))
        });
    }
    if text.contains("ENCRYPTED") {
        // PEM (PKCS#1/PKCS#8) with a passphrase: the public half is only in `.pub`.
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let public = PublicKey::read_openssh_file(Path::new(&pub_path)).ok();
        return Ok(KeyMaterial::Encrypted { public, text });
    }
    russh::keys::decode_secret_key(&text, None)
        .map(|k| KeyMaterial::Plain(Arc::new(k)))
        .map_err(|e| format!("not a private key pdsup can read ({e})"))
}

/// A signer that never signs: asking it to sign means the server accepted the
/// public key (SSH_MSG_USERAUTH_PK_OK), which is all a probe wants to know.
struct Probe;

#[derive(Debug)]
enum ProbeAnswer {
    Accepted,
    Disconnected,
}

impl From<russh::SendError> for ProbeAnswer {
    fn from(_: russh::SendError) -> Self {
        ProbeAnswer::Disconnected
    }
}

impl russh::Signer for Probe {
    type Error = ProbeAnswer;

    #[allow(clippy::manual_async_fn)]
    fn auth_sign(
        &mut self,
        _key: &AgentIdentity,
        _hash_alg: Option<HashAlg>,
        _to_sign: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, Self::Error>> + Send {
        async { Err(ProbeAnswer::Accepted) }
    }
}

/// Public key authentication, one key after another.
pub(super) struct Login<'a> {
    pub(super) handle: &'a mut client::Handle<Client>,
    pub(super) target: &'a Target,
    pub(super) opts: &'a SshOptions,
    pub(super) env: &'a LocalEnv,
    pub(super) rsa_hash: Option<Option<HashAlg>>,
    /// For the error message: what was offered and what happened.
    pub(super) tried: Vec<String>,
    /// Keys already offered (the agent often holds the default key files).
    pub(super) offered: Vec<PublicKey>,
}

impl Login<'_> {
    pub(super) async fn run(mut self, keys: Vec<KeyCandidate>) -> Result<(), SshError> {
        if self.try_agent().await? {
            return Ok(());
        }
        for key in keys {
            if self.try_key(key).await? {
                return Ok(());
            }
        }
        Err(SshError::AuthFailed {
            user: self.target.user.clone(),
            host: self.target.address(),
            tried: self.tried,
        })
    }

    fn user(&self) -> String {
        self.target.user.clone()
    }

    fn lost(&self) -> SshError {
        let mut tried = self.tried.clone();
        tried.push("then the server closed the connection".to_string());
        SshError::AuthFailed {
            user: self.target.user.clone(),
            host: self.target.address(),
            tried,
        }
    }

    /// RSA signs with rsa-sha2-512/256, never SHA-1 `ssh-rsa` (OpenSSH >= 8.8 refuses it).
    async fn hash_for(&mut self, key: &PublicKey) -> Option<HashAlg> {
        if !key.algorithm().is_rsa() {
            return None;
        }
        if self.rsa_hash.is_none() {
            let best = self
                .handle
                .best_supported_rsa_hash()
                .await
                .ok()
                .flatten()
                .flatten();
            self.rsa_hash = Some(best.or(Some(HashAlg::Sha256)));
        }
        self.rsa_hash.flatten()
    }

    fn already_offered(&mut self, key: &PublicKey) -> bool {
        if self.offered.iter().any(|k| k.key_data() == key.key_data()) {
            return true;
        }
        self.offered.push(key.clone());
        false
    }

    async fn try_agent(&mut self) -> Result<bool, SshError> {
        let Some(socket) = self.env.agent_socket.clone() else {
            return Ok(false);
        };
        let mut agent = match AgentClient::connect_uds(&socket).await {
            Ok(agent) => agent,
            Err(e) => {
                log::warn!("cannot reach ssh-agent at {}: {e}", socket.display());
                return Ok(false);
            }
        };
        let identities = match agent.request_identities().await {
            Ok(ids) => ids,
            Err(e) => {
                log::warn!("ssh-agent at {}: cannot list keys: {e}", socket.display());
                return Ok(false);
            }
        };
        for identity in identities {
            let key = identity.public_key().into_owned();
            if self.already_offered(&key) {
                continue;
            }
            let label = format!(
                "agent key {} {}",
                known_hosts::fingerprint(&key),
                identity.comment()
            );
            let hash = self.hash_for(&key).await;
            match self
                .handle
                .authenticate_publickey_with(self.user(), key, hash, &mut agent)
                .await
            {
                Ok(AuthResult::Success) => {
                    log::debug!("logged in with {label}");
                    return Ok(true);
                }
                Ok(AuthResult::Failure { .. }) => self.tried.push(label.trim_end().to_string()),
                Err(e) => {
                    log::debug!("{label}: {e}");
                    self.tried.push(format!(
                        "{} (the agent did not sign: {e})",
                        label.trim_end()
                    ));
                }
            }
            if self.handle.is_closed() {
                return Err(self.lost());
            }
        }
        Ok(false)
    }

    async fn try_key(&mut self, key: KeyCandidate) -> Result<bool, SshError> {
        let path = key.path.clone();
        let public_was_known = !matches!(key.material, KeyMaterial::Encrypted { public: None, .. });
        let private = match key.material {
            KeyMaterial::Plain(private) => {
                if self.already_offered(private.public_key()) {
                    return Ok(false);
                }
                private
            }
            KeyMaterial::Encrypted { public, text } => {
                if let Some(public) = &public {
                    if self.already_offered(public) {
                        return Ok(false);
                    }
                    if !self.probe(public).await? {
                        self.tried.push(format!(
                            "{} ({})",
                            path.display(),
                            known_hosts::fingerprint(public)
                        ));
                        return Ok(false);
                    }
                }
                match self.unlock(&path, text).await? {
                    Some(private) => private,
                    None if key.origin == Origin::Named || public.is_some() => {
                        return Err(SshError::KeyUnreadable {
                            path,
                            reason: format!(
                                "it is encrypted and no passphrase is available: set \
                                 {PASSPHRASE_ENV}, run pdsup in a terminal to be asked, or load \
                                 the key into ssh-agent"
                            ),
                        });
                    }
                    None => {
                        self.tried
                            .push(format!("{} (encrypted, no passphrase)", path.display()));
                        return Ok(false);
                    }
                }
            }
        };
        let public = private.public_key().clone();
        // An encrypted PEM key without `.pub` shows its public half only now.
        if !public_was_known && self.already_offered(&public) {
            return Ok(false);
        }
        let hash = self.hash_for(&public).await;
        let label = format!("{} ({})", path.display(), known_hosts::fingerprint(&public));
        match self
            .handle
            .authenticate_publickey(self.user(), PrivateKeyWithHashAlg::new(private, hash))
            .await
        {
            Ok(AuthResult::Success) => {
                log::debug!("logged in with {label}");
                Ok(true)
            }
            Ok(AuthResult::Failure { .. }) if !self.handle.is_closed() => {
                self.tried.push(label);
                Ok(false)
            }
            Ok(AuthResult::Failure { .. }) | Err(_) => {
                self.tried.push(label);
                Err(self.lost())
            }
        }
    }

    /// Would the server accept this public key? Asks without a signature.
    async fn probe(&mut self, public: &PublicKey) -> Result<bool, SshError> {
        let hash = self.hash_for(public).await;
        match self
            .handle
            .authenticate_publickey_with(self.user(), public.clone(), hash, &mut Probe)
            .await
        {
            Err(ProbeAnswer::Accepted) => Ok(true),
            Ok(_) if !self.handle.is_closed() => Ok(false),
            Ok(_) | Err(ProbeAnswer::Disconnected) => Err(self.lost()),
        }
    }

    /// Decrypts a key; `None` when no passphrase can be had.
    async fn unlock(
        &mut self,
        path: &Path,
        text: String,
    ) -> Result<Option<Arc<PrivateKey>>, SshError> {
        let passphrase = match self.opts.passphrase.clone().or(self.env.passphrase.clone()) {
            Some(p) => p,
            None if self.env.interactive => {
                let prompt = format!("Passphrase for {}: ", path.display());
                match tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt)).await
                {
                    Ok(Ok(p)) => Secret::new(p),
                    _ => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        let decrypted = tokio::task::spawn_blocking(move || {
            russh::keys::decode_secret_key(&text, Some(passphrase.expose()))
        })
        .await;
        match decrypted {
            Ok(Ok(key)) => Ok(Some(Arc::new(key))),
            _ => Err(SshError::WrongPassphrase {
                path: path.to_path_buf(),
            }),
        }
    }
}
