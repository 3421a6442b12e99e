//! The PDS's secrets: generated once per site with the OS's CSPRNG, then reused.

use std::collections::BTreeMap;

use crate::error::{bail, Result};
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand::{Rng, RngExt};

use crate::secret::Secret;

pub const JWT_SECRET: &str = "PDS_JWT_SECRET";
pub const ADMIN_PASSWORD: &str = "PDS_ADMIN_PASSWORD";
pub const ROTATION_KEY: &str = "PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdsSecrets {
    pub jwt_secret: Secret,
    pub admin_password: Secret,
    /// The PLC rotation key: a raw 32-byte secp256k1 private key as 64 hex chars.
    pub rotation_key_hex: Secret,
}

impl PdsSecrets {
    /// New secrets, the way the seed makes them: `openssl rand --hex 16` twice,
    /// and a secp256k1 key.
    pub fn generate() -> Self {
        let mut rng = UnwrapErr(SysRng);
        let key = <k256::SecretKey as k256::elliptic_curve::Generate>::generate_from_rng(&mut rng);
        PdsSecrets {
            jwt_secret: Secret::new(random_hex(&mut rng, 16)),
            admin_password: Secret::new(random_hex(&mut rng, 16)),
            rotation_key_hex: Secret::new(hex::encode(key.to_bytes())),
        }
    }

    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Self> {
        let get = |key: &str| -> Result<Secret> {
            match env.get(key) {
                Some(v) if !v.is_empty() => Ok(Secret::new(v.clone())),
                _ => bail!(BadInput, "{key} is missing; restore the file from a backup (pdsup never replaces an existing site's secrets)"),
            }
        };
        let secrets = PdsSecrets {
            jwt_secret: get(JWT_SECRET)?,
            admin_password: get(ADMIN_PASSWORD)?,
            rotation_key_hex: get(ROTATION_KEY)?,
        };
        let key = secrets.rotation_key_hex.expose();
        if key.len() != 64 || hex::decode(key).is_err() {
            bail!(BadInput, "{ROTATION_KEY} is not 64 hex characters");
        }
        Ok(secrets)
    }
}

/// A password for a new account: 24 characters from a 56-letter alphabet without
/// look-alikes (about 139 bits), easy to copy from a terminal.
pub fn account_password() -> Secret {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = UnwrapErr(SysRng);
    let chars: String = (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    Secret::new(chars)
}

fn random_hex(rng: &mut impl Rng, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rng.fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_pds_formats() {
        let a = PdsSecrets::generate();
        let b = PdsSecrets::generate();
        assert_eq!(a.jwt_secret.expose().len(), 32);
        assert_eq!(a.admin_password.expose().len(), 32);
        assert_eq!(a.rotation_key_hex.expose().len(), 64);
        assert!(hex::decode(a.rotation_key_hex.expose()).is_ok());
        // A valid secp256k1 scalar (non-zero, below the order).
        let raw = hex::decode(a.rotation_key_hex.expose()).unwrap();
        assert!(k256::SecretKey::from_slice(&raw).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn from_env_refuses_incomplete_files() {
        let s = PdsSecrets::generate();
        let mut env = BTreeMap::new();
        env.insert(JWT_SECRET.to_string(), s.jwt_secret.expose().to_string());
        env.insert(
            ADMIN_PASSWORD.to_string(),
            s.admin_password.expose().to_string(),
        );
        let err = PdsSecrets::from_env(&env).unwrap_err().to_string();
        assert!(err.contains(ROTATION_KEY), "{err}");
        env.insert(
            ROTATION_KEY.to_string(),
            s.rotation_key_hex.expose().to_string(),
        );
        assert_eq!(PdsSecrets::from_env(&env).unwrap(), s);
    }

    #[test]
    fn account_passwords_are_long_and_distinct() {
        let a = account_password();
        assert_eq!(a.expose().len(), 24);
        assert_ne!(a, account_password());
    }
}
