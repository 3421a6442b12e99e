//! Nomad release downloads: the file names and URLs of a release on
//! releases.hashicorp.com (or a mirror with the same layout), and their
//! verification.
//!
//! Trust chain: the OpenPGP key is shipped inside pdsup (`assets/`) and pinned
//! by fingerprint; it signs `nomad_<v>_SHA256SUMS`; that file names the SHA-256
//! of the zip. So the zip is trusted only after [`verify_sums`] succeeded and its
//! hash equals [`expected_sha256`]. Nothing here touches the network.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::KeyDetails;
use sha2::{Digest, Sha256};

/// Fingerprint of "HashiCorp Security (hashicorp.com/security)", the key that
/// signs every HashiCorp release since the 2021 rotation.
pub const HASHICORP_FINGERPRINT: &str = "C874011F0AB405110D02105534365D9472D7468F";

/// HashiCorp's public key, as published at https://www.hashicorp.com/.well-known/pgp-key.txt.
const HASHICORP_KEY: &str = include_str!("../../assets/hashicorp-release-key.asc");

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "Nomad releases exist for Linux on amd64 (x86_64) and arm64 (aarch64), but the droplet reports `{0}`"
    )]
    UnsupportedArch(String),
    #[error(
        "the Nomad release key could not be read: {0}; give an ASCII-armored OpenPGP public key (`gpg --armor --export KEYID`) with --nomad-release-key"
    )]
    Key(String),
    #[error(
        "the HashiCorp release key built into pdsup has fingerprint {found}, not {HASHICORP_FINGERPRINT}: this pdsup build is damaged; reinstall it from a trusted source"
    )]
    HashicorpKeyMismatch { found: String },
    #[error(
        "the signature file of SHA256SUMS could not be read ({0}): the mirror may serve a wrong or truncated file; check --nomad-release-url"
    )]
    SignatureUnreadable(String),
    #[error(
        "the signature of SHA256SUMS does not match {key}: {reason}. The mirror may be tampered with; check --nomad-release-url (and --nomad-release-key for a private mirror)"
    )]
    BadSignature { key: String, reason: String },
    #[error(
        "SHA256SUMS has no entry for {0}: the version may not exist, or not for this architecture; check the Nomad version"
    )]
    MissingChecksum(String),
    #[error(
        "SHA256SUMS lists {file} twice with different hashes: the mirror serves a broken file; check --nomad-release-url"
    )]
    AmbiguousChecksum { file: String },
    #[error(
        "--nomad-zip {path} is not a zip archive ({reason}): give the release zip as published (nomad_<version>_linux_<arch>.zip)"
    )]
    NotAZip { path: String, reason: String },
    #[error(
        "--nomad-zip {path} is a zip without a `nomad` file at its top: it is not a Nomad release zip"
    )]
    NoNomadInZip { path: String },
    #[error(
        "--nomad-zip {zip} needs {name} beside it, as published with the release ({path} is missing)"
    )]
    MissingBesideZip {
        zip: String,
        name: String,
        path: String,
    },
    #[error(
        "--nomad-zip {path} does not match the signed SHA256SUMS (its SHA-256 {sha256} is not listed for any nomad_{version}_linux_*.zip): the file is corrupt or not the release it claims to be"
    )]
    ZipNotInSums {
        path: String,
        sha256: String,
        version: String,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub use crate::settings::{Arch, LocalZip};

impl Arch {
    /// From `uname -m` (`x86_64`, `aarch64`, ...) or `dpkg --print-architecture` (`amd64`, `arm64`).
    pub fn from_uname(machine: &str) -> Result<Arch, ReleaseError> {
        match machine.trim() {
            "x86_64" | "amd64" | "x64" => Ok(Arch::Amd64),
            "aarch64" | "arm64" | "armv8l" | "armv8b" => Ok(Arch::Arm64),
            other => Err(ReleaseError::UnsupportedArch(other.to_string())),
        }
    }
}

/// `nomad_1.10.5_linux_amd64.zip`. `version` has no leading `v`.
pub fn zip_name(version: &str, arch: Arch) -> String {
    format!("nomad_{version}_linux_{arch}.zip")
}

/// `nomad_1.10.5_SHA256SUMS`.
pub fn sums_name(version: &str) -> String {
    format!("nomad_{version}_SHA256SUMS")
}

/// `nomad_1.10.5_SHA256SUMS.sig`: the detached signature of [`sums_name`].
pub fn sig_name(version: &str) -> String {
    format!("nomad_{version}_SHA256SUMS.sig")
}

/// `<base>/nomad/<version>/<file>`, the layout of releases.hashicorp.com.
pub fn url(base: &str, version: &str, file: &str) -> String {
    format!("{}/nomad/{version}/{file}", base.trim_end_matches('/'))
}

/// The OpenPGP key whose signature on SHA256SUMS pdsup accepts.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    key: SignedPublicKey,
    /// How errors name the key.
    label: String,
}

impl TrustedKey {
    /// HashiCorp's release key built into pdsup, checked against [`HASHICORP_FINGERPRINT`].
    pub fn hashicorp() -> Result<TrustedKey, ReleaseError> {
        let key = parse_key(HASHICORP_KEY)?;
        let found = fingerprint(&key);
        if found != HASHICORP_FINGERPRINT {
            return Err(ReleaseError::HashicorpKeyMismatch { found });
        }
        Ok(TrustedKey {
            key,
            label: format!("HashiCorp's release key {HASHICORP_FINGERPRINT}"),
        })
    }

    /// A key given by the user (`--nomad-release-key FILE`), for a private mirror
    /// that signs its own SHA256SUMS.
    pub fn from_armored(text: &str) -> Result<TrustedKey, ReleaseError> {
        let key = parse_key(text)?;
        let label = format!("the release key {}", fingerprint(&key));
        Ok(TrustedKey { key, label })
    }

    /// The key in `--nomad-release-key FILE`, or HashiCorp's without one.
    pub fn load(path: Option<&Path>) -> Result<TrustedKey, ReleaseError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ReleaseError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                TrustedKey::from_armored(&text)
            }
            None => TrustedKey::hashicorp(),
        }
    }

    /// The primary key's fingerprint, 40 upper-case hex digits.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }
}

impl fmt::Display for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Parses an armored OpenPGP public key, refusing one its own revocation revokes.
/// Shared by every key pdsup trusts (Nomad releases, Docker's apt repository).
pub(crate) fn parse_key(text: &str) -> Result<SignedPublicKey, ReleaseError> {
    let (key, _headers) =
        SignedPublicKey::from_string(text).map_err(|e| ReleaseError::Key(e.to_string()))?;
    // A revoked key must not be trusted, even if the file still carries it.
    for sig in &key.details.revocation_signatures {
        if sig.typ() == Some(SignatureType::KeyRevocation)
            && sig.verify_key(&key.primary_key).is_ok()
        {
            return Err(ReleaseError::Key(format!(
                "the key {} is revoked",
                fingerprint(&key)
            )));
        }
    }
    Ok(key)
}

pub(crate) fn fingerprint(key: &SignedPublicKey) -> String {
    format!("{:X}", key.primary_key.fingerprint())
}

/// Checks a detached OpenPGP signature (binary, like HashiCorp's `.sig`, or
/// ASCII-armored) over the exact bytes of SHA256SUMS. A signature by the primary
/// key counts, and so does one by a signing subkey that the primary key validly
/// binds (with the subkey's back-signature), that is not revoked and was not
/// expired when it signed. HashiCorp signs releases with such a subkey.
pub fn verify_sums(sums: &[u8], signature: &[u8], key: &TrustedKey) -> Result<(), ReleaseError> {
    let signatures = parse_signatures(signature)?;
    let mut reasons = Vec::new();
    for detached in &signatures {
        match check_one(sums, &detached.signature, &key.key) {
            Ok(()) => return Ok(()),
            Err(reason) => reasons.push(reason),
        }
    }
    Err(ReleaseError::BadSignature {
        key: key.label.clone(),
        reason: reasons.join("; "),
    })
}

fn parse_signatures(bytes: &[u8]) -> Result<Vec<DetachedSignature>, ReleaseError> {
    let unreadable = |e: pgp::errors::Error| ReleaseError::SignatureUnreadable(e.to_string());
    let armored = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|start| bytes[start..].starts_with(b"-----BEGIN PGP"));
    let signatures = if armored {
        let (iter, _headers) = DetachedSignature::from_armor_many(bytes).map_err(unreadable)?;
        iter.collect::<Result<Vec<_>, _>>().map_err(unreadable)?
    } else {
        DetachedSignature::from_bytes_many(bytes)
            .map_err(unreadable)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(unreadable)?
    };
    if signatures.is_empty() {
        return Err(ReleaseError::SignatureUnreadable(
            "it holds no signature".into(),
        ));
    }
    Ok(signatures)
}

/// Verifies one signature; on failure says why, in words for the error message.
fn check_one(sums: &[u8], sig: &Signature, key: &SignedPublicKey) -> Result<(), String> {
    if !matches!(sig.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
        return Err(format!("it is not a document signature ({:?})", sig.typ()));
    }
    if issued_by(sig, &key.primary_key) {
        return sig
            .verify(&key.primary_key, sums)
            .map_err(|_| "SHA256SUMS was changed after it was signed".to_string());
    }
    for sub in &key.public_subkeys {
        if !issued_by(sig, &sub.key) {
            continue;
        }
        signing_subkey_valid(key, sub, sig)?;
        return sig
            .verify(&sub.key, sums)
            .map_err(|_| "SHA256SUMS was changed after it was signed".to_string());
    }
    let issuers: Vec<String> = sig
        .issuer_fingerprint()
        .iter()
        .map(|f| format!("{f:X}"))
        .chain(
            sig.issuer_key_id()
                .iter()
                .map(|k| k.to_string().to_uppercase()),
        )
        .collect();
    Err(match issuers.first() {
        Some(issuer) => format!("it was made by another key ({issuer})"),
        None => "it names no issuer key".to_string(),
    })
}

/// Whether the signature names `key` as its issuer (by fingerprint or key ID).
fn issued_by(sig: &Signature, key: &impl KeyDetails) -> bool {
    let fp = key.fingerprint();
    let id = key.legacy_key_id();
    sig.issuer_fingerprint().iter().any(|f| **f == fp)
        || sig.issuer_key_id().iter().any(|k| **k == id)
}

/// A subkey may sign releases when its newest valid binding signature marks it
/// for signing and carries a valid back-signature, no valid revocation exists,
/// and the binding's expiry (if any) is after the data signature was made.
fn signing_subkey_valid(
    key: &SignedPublicKey,
    sub: &SignedPublicSubKey,
    data_sig: &Signature,
) -> Result<(), String> {
    let sub_fp = format!("{:X}", sub.key.fingerprint());
    let primary = &key.primary_key;
    let revoked = sub.signatures.iter().any(|s| {
        s.typ() == Some(SignatureType::SubkeyRevocation)
            && s.verify_subkey_binding(primary, &sub.key).is_ok()
    });
    if revoked {
        return Err(format!(
            "it was made by the subkey {sub_fp}, which is revoked"
        ));
    }
    let binding = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
        .filter(|s| s.verify_subkey_binding(primary, &sub.key).is_ok())
        .filter(|s| s.key_flags().sign())
        .filter(|s| {
            s.embedded_signature()
                .is_some_and(|back| back.verify_primary_key_binding(&sub.key, primary).is_ok())
        })
        .max_by_key(|s| s.created().map(|t| t.as_secs()).unwrap_or(0))
        .ok_or_else(|| {
            format!("it was made by the subkey {sub_fp}, which the key does not validly bind for signing")
        })?;
    if let (Some(expiry), Some(signed_at)) = (binding.key_expiration_time(), data_sig.created()) {
        let secs = u64::from(expiry.as_secs());
        let expires_at = u64::from(sub.key.created_at().as_secs()) + secs;
        // A zero expiration time means "never".
        if secs != 0 && u64::from(signed_at.as_secs()) > expires_at {
            return Err(format!(
                "it was made by the subkey {sub_fp} after the subkey expired; if the mirror's key was renewed, give the renewed key"
            ));
        }
    }
    Ok(())
}

/// The SHA-256 (lower-case hex) that SHA256SUMS (`sha256sum` format:
/// `<hash>  <name>` or `<hash> *<name>`) lists for `file_name`.
pub fn expected_sha256(sums: &str, file_name: &str) -> Result<String, ReleaseError> {
    let mut found: Option<String> = None;
    for line in sums.lines() {
        let Some((hash, rest)) = line.trim_end_matches('\r').split_once(' ') else {
            continue;
        };
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .unwrap_or(rest);
        if name != file_name || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let hash = hash.to_ascii_lowercase();
        match &found {
            Some(other) if *other != hash => {
                return Err(ReleaseError::AmbiguousChecksum {
                    file: file_name.to_string(),
                })
            }
            _ => found = Some(hash),
        }
    }
    found.ok_or_else(|| ReleaseError::MissingChecksum(file_name.to_string()))
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of everything `reader` yields, lower-case hex, without holding it in memory.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks a `--nomad-zip` before anything happens on a droplet: it is a zip
/// with a `nomad` entry, its SHA256SUMS and .sig sit beside it, the signature
/// verifies with `key`, and the zip's SHA-256 is listed there for `version`.
/// The droplet's architecture is not known yet; the caller compares it with
/// [`LocalZip::arches`] once it is.
pub fn check_local_zip(
    path: &Path,
    version: &str,
    key: &TrustedKey,
) -> Result<LocalZip, ReleaseError> {
    check_zip_holds_nomad(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let beside = |name: String| {
        let p = dir.join(&name);
        std::fs::read(&p).map_err(|_| ReleaseError::MissingBesideZip {
            zip: path.display().to_string(),
            name,
            path: p.display().to_string(),
        })
    };
    let sums = beside(sums_name(version))?;
    let sig = beside(sig_name(version))?;
    verify_sums(&sums, &sig, key)?;
    let sha256 = sha256_file(path)?;
    let arches = signed_arches(&String::from_utf8_lossy(&sums), version, &sha256);
    if arches.is_empty() {
        return Err(ReleaseError::ZipNotInSums {
            path: path.display().to_string(),
            sha256,
            version: version.to_string(),
        });
    }
    Ok(LocalZip {
        path: path.to_path_buf(),
        sha256,
        arches,
    })
}

/// The architectures whose release zip SHA256SUMS lists with this SHA-256.
fn signed_arches(sums: &str, version: &str, sha256: &str) -> Vec<Arch> {
    [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .filter(|a| expected_sha256(sums, &zip_name(version, *a)).is_ok_and(|want| want == sha256))
        .collect()
}

/// The file is a zip archive with a `nomad` file at its top level.
fn check_zip_holds_nomad(path: &Path) -> Result<(), ReleaseError> {
    let file = std::fs::File::open(path).map_err(|source| ReleaseError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let archive =
        zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| ReleaseError::NotAZip {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if archive.index_for_name("nomad").is_none() {
        return Err(ReleaseError::NoNomadInZip {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// SHA-256 of a local file (a `--nomad-zip`), lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, ReleaseError> {
    let io_err = |source| ReleaseError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    sha256_reader(io::BufReader::new(file)).map_err(io_err)
}

impl From<ReleaseError> for crate::error::Error {
    fn from(e: ReleaseError) -> Self {
        use crate::error::ErrorKind;
        let kind = match &e {
            // The droplet's CPU: preflight's check, nothing changed.
            ReleaseError::UnsupportedArch(_) => ErrorKind::Blocked,
            // A flag or a file the user gave.
            ReleaseError::Key(_)
            | ReleaseError::NotAZip { .. }
            | ReleaseError::NoNomadInZip { .. }
            | ReleaseError::MissingBesideZip { .. }
            | ReleaseError::ZipNotInSums { .. } => ErrorKind::BadInput,
            ReleaseError::HashicorpKeyMismatch { .. } => ErrorKind::Internal,
            // Reading a given --nomad-zip, its SHA256SUMS or --nomad-release-key.
            ReleaseError::Io { .. } => ErrorKind::BadInput,
            // What the release mirror served.
            ReleaseError::SignatureUnreadable(_)
            | ReleaseError::BadSignature { .. }
            | ReleaseError::MissingChecksum(_)
            | ReleaseError::AmbiguousChecksum { .. } => ErrorKind::Other,
        };
        crate::error::Error::from_source(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/release");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    fn test_key() -> TrustedKey {
        TrustedKey::from_armored(&String::from_utf8(fixture("test-release-key.asc")).unwrap())
            .unwrap()
    }

    const SUMS: &str = "nomad_1.10.5_SHA256SUMS";

    #[test]
    fn names_and_urls() {
        assert_eq!(
            zip_name("1.10.5", Arch::Amd64),
            "nomad_1.10.5_linux_amd64.zip"
        );
        assert_eq!(
            zip_name("1.9.7", Arch::Arm64),
            "nomad_1.9.7_linux_arm64.zip"
        );
        assert_eq!(sums_name("1.10.5"), "nomad_1.10.5_SHA256SUMS");
        assert_eq!(sig_name("1.10.5"), "nomad_1.10.5_SHA256SUMS.sig");
        let want = "https://releases.hashicorp.com/nomad/1.10.5/nomad_1.10.5_SHA256SUMS";
        assert_eq!(
            url(
                "https://releases.hashicorp.com",
                "1.10.5",
                &sums_name("1.10.5")
            ),
            want
        );
        assert_eq!(
            url(
                "https://releases.hashicorp.com/",
                "1.10.5",
                &sums_name("1.10.5")
            ),
            want
        );
        assert_eq!(
            url("http://10.213.0.1:8080/mirror//", "1.10.5", "x.zip"),
            "http://10.213.0.1:8080/mirror/nomad/1.10.5/x.zip"
        );
    }

    #[test]
    fn arch_from_uname() {
        assert_eq!(Arch::from_uname("x86_64\n").unwrap(), Arch::Amd64);
        assert_eq!(Arch::from_uname("amd64").unwrap(), Arch::Amd64);
        assert_eq!(Arch::from_uname("aarch64").unwrap(), Arch::Arm64);
        assert_eq!(Arch::from_uname("arm64").unwrap(), Arch::Arm64);
        for other in ["armv7l", "i686", "riscv64", "s390x", ""] {
            let err = Arch::from_uname(other).unwrap_err().to_string();
            assert!(
                err.contains("amd64") && err.contains(&format!("`{other}`")),
                "{err}"
            );
        }
    }

    #[test]
    fn embedded_hashicorp_key_has_the_pinned_fingerprint() {
        let key = TrustedKey::hashicorp().unwrap();
        assert_eq!(key.fingerprint(), HASHICORP_FINGERPRINT);
        assert!(key.to_string().contains(HASHICORP_FINGERPRINT));
        // The signing subkey HashiCorp uses for releases is bound for signing.
        let sub = key
            .key
            .public_subkeys
            .iter()
            .find(|s| {
                format!("{:X}", s.key.fingerprint()) == "374EC75B485913604A831CC7C820C6D5CD27AB87"
            })
            .expect("signing subkey present");
        assert!(sub.verify_bindings(&key.key.primary_key).is_ok());
    }

    #[test]
    fn good_signature_by_primary_key_verifies() {
        verify_sums(
            &fixture(SUMS),
            &fixture("nomad_1.10.5_SHA256SUMS.sig"),
            &test_key(),
        )
        .unwrap();
    }

    #[test]
    fn good_signature_by_signing_subkey_verifies() {
        verify_sums(
            &fixture(SUMS),
            &fixture("by-subkey_SHA256SUMS.sig"),
            &test_key(),
        )
        .unwrap();
    }

    #[test]
    fn armored_signature_verifies() {
        verify_sums(
            &fixture(SUMS),
            &fixture("nomad_1.10.5_SHA256SUMS.asc"),
            &test_key(),
        )
        .unwrap();
    }

    #[test]
    fn tampered_sums_fail() {
        for sig in [
            "nomad_1.10.5_SHA256SUMS.sig",
            "by-subkey_SHA256SUMS.sig",
            "nomad_1.10.5_SHA256SUMS.asc",
        ] {
            let err = verify_sums(&fixture("tampered_SHA256SUMS"), &fixture(sig), &test_key())
                .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ReleaseError::BadSignature { .. }), "{msg}");
            assert!(msg.contains("changed after it was signed"), "{msg}");
            assert!(msg.contains("--nomad-release-url"), "{msg}");
        }
    }

    #[test]
    fn signature_by_another_key_fails() {
        let err = verify_sums(
            &fixture(SUMS),
            &fixture("other-key_SHA256SUMS.sig"),
            &test_key(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("made by another key (AC118386618152E90ACB28483810E8AAD38EF078)"),
            "{msg}"
        );
        assert!(
            msg.contains("609C4D9BAC99004DBFE2AC2B1708D3C9CC2D490D"),
            "{msg}"
        );
    }

    #[test]
    fn test_signature_does_not_pass_for_hashicorp() {
        let err = verify_sums(
            &fixture(SUMS),
            &fixture("nomad_1.10.5_SHA256SUMS.sig"),
            &TrustedKey::hashicorp().unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("does not match HashiCorp's release key"),
            "{err}"
        );
        assert!(err.contains("mirror may be tampered with"), "{err}");
    }

    #[test]
    fn garbage_signature_and_key_are_reported() {
        let err = verify_sums(&fixture(SUMS), b"not a signature", &test_key()).unwrap_err();
        assert!(matches!(err, ReleaseError::SignatureUnreadable(_)), "{err}");
        let err = verify_sums(&fixture(SUMS), b"", &test_key()).unwrap_err();
        assert!(matches!(err, ReleaseError::SignatureUnreadable(_)), "{err}");
        let err = TrustedKey::from_armored("hello").unwrap_err();
        assert!(err.to_string().contains("--nomad-release-key"), "{err}");
    }

    #[test]
    fn expected_sha256_reads_sha256sum_format() {
        let sums = String::from_utf8(fixture(SUMS)).unwrap();
        assert_eq!(
            expected_sha256(&sums, "nomad_1.10.5_linux_amd64.zip").unwrap(),
            sha256_hex(b"fake nomad 1.10.5 linux_amd64\n")
        );
        assert_eq!(
            expected_sha256(&sums, "nomad_1.10.5_linux_arm64.zip").unwrap(),
            sha256_hex(b"fake nomad 1.10.5 linux_arm64\n")
        );
        let err = expected_sha256(&sums, "nomad_1.10.5_linux_386.zip")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no entry for nomad_1.10.5_linux_386.zip"),
            "{err}"
        );
        // Binary-mode marker, upper-case hex, CRLF; a name that is only a suffix does not match.
        let h = "A".repeat(64);
        let text = format!("{h} *x.zip\r\n{} xx.zip\n", "b".repeat(64));
        assert_eq!(expected_sha256(&text, "x.zip").unwrap(), "a".repeat(64));
        let dup = format!("{h}  x.zip\n{}  x.zip\n", "b".repeat(64));
        assert!(matches!(
            expected_sha256(&dup, "x.zip"),
            Err(ReleaseError::AmbiguousChecksum { .. })
        ));
    }

    /// A zip with these entries (stored, uncompressed).
    fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    /// A release directory with the signed fixture SUMS and .sig, and `zip`.
    fn release_dir(zip: &[(&str, &[u8])]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for name in [SUMS, "nomad_1.10.5_SHA256SUMS.sig"] {
            std::fs::write(dir.path().join(name), fixture(name)).unwrap();
        }
        let path = dir.path().join("nomad_1.10.5_linux_amd64.zip");
        write_zip(&path, zip);
        (dir, path)
    }

    #[test]
    fn local_zip_is_checked_before_any_droplet() {
        let key = test_key();
        // Not a zip at all (a binary, a tarball, a text file).
        let (dir, path) = release_dir(&[]);
        std::fs::write(&path, b"#!/bin/sh\necho not a zip\n").unwrap();
        let err = check_local_zip(&path, "1.10.5", &key).unwrap_err();
        assert!(matches!(err, ReleaseError::NotAZip { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("not a zip archive"),
            "{msg}"
        );
        // A zip, but not Nomad's.
        write_zip(&path, &[("README", b"hello")]);
        let err = check_local_zip(&path, "1.10.5", &key).unwrap_err();
        assert!(matches!(err, ReleaseError::NoNomadInZip { .. }), "{err}");
        // Nomad's layout, but not the signed bytes.
        write_zip(&path, &[("nomad", b"\x7fELF not the release")]);
        let err = check_local_zip(&path, "1.10.5", &key).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("does not match the signed SHA256SUMS"),
            "{msg}"
        );
        // SHA256SUMS missing beside it.
        std::fs::remove_file(dir.path().join(SUMS)).unwrap();
        let err = check_local_zip(&path, "1.10.5", &key)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs nomad_1.10.5_SHA256SUMS beside it"),
            "{err}"
        );
        // A signature by another key.
        std::fs::write(dir.path().join(SUMS), fixture(SUMS)).unwrap();
        std::fs::write(
            dir.path().join("nomad_1.10.5_SHA256SUMS.sig"),
            fixture("other-key_SHA256SUMS.sig"),
        )
        .unwrap();
        let err = check_local_zip(&path, "1.10.5", &key).unwrap_err();
        assert!(matches!(err, ReleaseError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn local_zip_arches_come_from_the_signed_sums() {
        let sums = String::from_utf8(fixture(SUMS)).unwrap();
        let amd64 = sha256_hex(b"fake nomad 1.10.5 linux_amd64\n");
        let arm64 = sha256_hex(b"fake nomad 1.10.5 linux_arm64\n");
        assert_eq!(signed_arches(&sums, "1.10.5", &arm64), [Arch::Arm64]);
        assert_eq!(signed_arches(&sums, "1.10.4", &arm64), []);
        assert_eq!(signed_arches(&sums, "1.10.5", &"0".repeat(64)), []);
        let arches = signed_arches(&sums, "1.10.5", &amd64);
        assert_eq!(arches, [Arch::Amd64]);
        let zip = LocalZip {
            path: "/x.zip".into(),
            sha256: amd64,
            arches,
        };
        assert_eq!(zip.describe_arches(), "the linux_amd64 release");
    }

    #[test]
    fn sha256_helpers_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = vec![7u8; 200_000];
        std::fs::write(&path, &data).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(&data));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let err = sha256_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
