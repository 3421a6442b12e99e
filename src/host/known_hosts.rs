//! Host key pinning: trust on first use, then the key is pinned per site.
//!
//! The pin file (`known_hosts` in the site's state dir, OpenSSH format, mode
//! 0600) is the authority, and it belongs to the site, not to an address: a
//! site has one host key whatever address it is reached at. So the same key at
//! a new address is accepted (the address is added to the file), and a
//! different key at *any* address, known or new, stops the run until
//! `--accept-new-host-key`. The rules are stricter than OpenSSH's: any other
//! key is a change, whatever its algorithm, because pdsup wrote the entries
//! itself with the algorithm it negotiates. The user's own
//! `~/.ssh/known_hosts` is consulted only while nothing is pinned, and there
//! only a key of the same algorithm counts as a conflict (OpenSSH may have
//! recorded, say, the ECDSA key while we negotiate Ed25519).
//!
//! Entries for a port other than 22 are written as `[host]:port`, as OpenSSH
//! does. russh's `known_hosts` functions do the parsing (hashed names too); note
//! that its `check_known_hosts_path` answers `Ok(false)` for "no entry of this
//! algorithm", which is why the lookups here list every entry instead.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::known_hosts::{known_host_keys_path, learn_known_hosts_path};
use russh::keys::{HashAlg, PublicKey};

use super::error::SshError;

/// Where to look and what to allow.
#[derive(Clone, Debug)]
pub struct PinPolicy {
    /// The site's pin file (created on first use).
    pub pin_file: PathBuf,
    /// The user's `~/.ssh/known_hosts`, consulted while nothing is pinned.
    pub user_known_hosts: Option<PathBuf>,
    /// `--accept-new-host-key`: replace a pinned key that changed.
    pub accept_new: bool,
    /// `--dry-run`: decide as usual, but write nothing to the pin file.
    pub read_only: bool,
}

/// Why a key was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The pin file already holds this key for this address.
    Pinned,
    /// The site's pinned key, reached at an address not seen before; the
    /// address is now noted beside it.
    NewAddress,
    /// First connection: the key is now pinned.
    Learned,
    /// `--accept-new-host-key` replaced these pinned keys (fingerprints).
    Replaced { previous: Vec<String> },
}

/// The name a known_hosts line uses: `host`, or `[host]:port` off port 22.
pub fn entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:…`, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Decides whether `offered` is the site's key, reached at `host:port`: pins it
/// on the site's first contact, notes a new address of the same key, and
/// refuses any other key unless `accept_new` (with `read_only`, writes nothing).
pub fn verify(
    host: &str,
    port: u16,
    offered: &PublicKey,
    policy: &PinPolicy,
) -> Result<Trust, SshError> {
    let name = entry_name(host, port);
    let offered_fp = fingerprint(offered);
    let pin_error = |reason: String| SshError::PinFile {
        path: policy.pin_file.clone(),
        reason,
    };

    let site_keys = read_pins(&policy.pin_file).map_err(pin_error)?;
    if site_keys.iter().any(|k| same_key(k, offered)) {
        let here = known_host_keys_path(host, port, &policy.pin_file)
            .map_err(|e| pin_error(e.to_string()))?;
        if here.iter().any(|(_, k)| same_key(k, offered)) {
            log::debug!("{name}: host key {offered_fp} matches the site's pinned key");
            return Ok(Trust::Pinned);
        }
        if !policy.read_only {
            learn(host, port, offered, &policy.pin_file).map_err(|e| pin_error(e.to_string()))?;
        }
        log::info!(
            "{name}: host key {offered_fp} is the site's pinned key{}",
            if policy.read_only {
                " (a new address; dry run: not noted)".to_string()
            } else {
                format!("; noted this address in {}", policy.pin_file.display())
            }
        );
        return Ok(Trust::NewAddress);
    }
    if !site_keys.is_empty() {
        let previous = fingerprints(site_keys.iter());
        if !policy.accept_new {
            return Err(SshError::HostKeyChanged {
                host: name,
                known_fingerprint: previous.join(", "),
                offered_fingerprint: offered_fp,
                pin_file: policy.pin_file.clone(),
            });
        }
        if !policy.read_only {
            replace(host, port, offered, &policy.pin_file).map_err(|e| pin_error(e.to_string()))?;
        }
        log::warn!(
            "{name}: host key changed from {} to {offered_fp}; accepted (--accept-new-host-key){}",
            previous.join(", "),
            if policy.read_only {
                " for this dry run; not pinned".to_string()
            } else {
                format!(" and pinned in {}", policy.pin_file.display())
            }
        );
        return Ok(Trust::Replaced { previous });
    }

    if let Some(user_file) = &policy.user_known_hosts {
        match known_host_keys_path(host, port, user_file) {
            Ok(entries) => {
                let same_algorithm: Vec<&PublicKey> = entries
                    .iter()
                    .map(|(_, k)| k)
                    .filter(|k| k.algorithm() == offered.algorithm())
                    .collect();
                if same_algorithm.iter().any(|k| same_key(k, offered)) {
                    log::info!(
                        "{name}: host key {offered_fp} matches {}; pinning it",
                        user_file.display()
                    );
                } else if !same_algorithm.is_empty() {
                    let known = fingerprints(same_algorithm.into_iter());
                    if !policy.accept_new {
                        return Err(SshError::HostKeyChanged {
                            host: name,
                            known_fingerprint: known.join(", "),
                            offered_fingerprint: offered_fp,
                            pin_file: user_file.clone(),
                        });
                    }
                    log::warn!(
                        "{name}: host key {offered_fp} differs from {} in {}; accepted \
                         (--accept-new-host-key)",
                        known.join(", "),
                        user_file.display()
                    );
                }
            }
            // One odd line must not block a run; the pin file stays the authority.
            Err(e) => log::warn!("ignoring {}: {e}", user_file.display()),
        }
    }

    if policy.read_only {
        log::info!("{name}: trusting host key {offered_fp} on first use (dry run: not pinned)");
        return Ok(Trust::Learned);
    }
    learn(host, port, offered, &policy.pin_file).map_err(|e| pin_error(e.to_string()))?;
    log::info!(
        "{name}: trusting host key {offered_fp} on first use; pinned in {}",
        policy.pin_file.display()
    );
    Ok(Trust::Learned)
}

/// Every key in the pin file, whatever address it is listed for (hashed names
/// included: the key, not the name, is what the site pins). A missing file
/// pins nothing; a line that is not `[marker] names keytype base64 [comment]`
/// is an error naming the line.
fn read_pins(pin_file: &Path) -> Result<Vec<PublicKey>, String> {
    let text = match std::fs::read_to_string(pin_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        if line.starts_with('@') {
            // @cert-authority / @revoked: never written by pdsup, pins no host key.
            continue;
        }
        let (_names, kind, data) = (fields.next(), fields.next(), fields.next());
        let key = match (kind, data) {
            (Some(kind), Some(data)) => PublicKey::from_openssh(&format!("{kind} {data}"))
                .map_err(|e| format!("line {}: not a host key ({e})", i + 1))?,
            _ => return Err(format!("line {}: expected `host keytype key`", i + 1)),
        };
        keys.push(key);
    }
    Ok(keys)
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    // Compare the key material only: a known_hosts line may carry a comment.
    a.key_data() == b.key_data()
}

fn fingerprints<'a>(keys: impl Iterator<Item = &'a PublicKey>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for fp in keys.map(fingerprint) {
        if !out.contains(&fp) {
            out.push(fp);
        }
    }
    out
}

/// Appends the key, creating the file (0600) and its directory (0700).
fn learn(host: &str, port: u16, key: &PublicKey, pin_file: &Path) -> std::io::Result<()> {
    prepare(pin_file)?;
    learn_known_hosts_path(host, port, key, pin_file).map_err(std::io::Error::other)?;
    std::fs::set_permissions(pin_file, std::fs::Permissions::from_mode(0o600))
}

/// Drops every pinned key (the site has one key, whatever its addresses) and
/// pins `key` for `host:port`. Comments are kept. The file is rewritten beside
/// and renamed: a crash leaves the old pins, never a half-written file.
fn replace(host: &str, port: u16, key: &PublicKey, pin_file: &Path) -> std::io::Result<()> {
    let old = std::fs::read_to_string(pin_file)?;
    let kept: String = old
        .lines()
        .filter(|line| line.trim_start().starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    let tmp = pin_file.with_extension("pdsup-tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(kept.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, pin_file)?;
    learn(host, port, key, pin_file)
}

/// The first line of a new pin file. It also keeps russh from starting the file
/// with a blank line (it adds a newline when the file does not end with one).
const HEADER: &str = "# SSH host keys pinned by pdsup for this site (OpenSSH known_hosts format)\n";

fn prepare(pin_file: &Path) -> std::io::Result<()> {
    if let Some(dir) = pin_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(pin_file)?;
    if file.metadata()?.len() == 0 {
        file.write_all(HEADER.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC+zZN1qi34nFtvRABhKnViDjEKx2+qas2xHoUXwhwJ6";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID7ASMvnJHnJkmsor5fQDNbCRuyhvbz7smOV1yqaZW+M";
    const KEY_EC: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPus2D4GAVA5cCfwlo7tFhXY74ajiI/QSROWB+T8q81r15GOukEsOYqlyW/ZtRlpgnSxY6n9rUPu43G3+7/helI=";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    fn policy(dir: &Path) -> PinPolicy {
        PinPolicy {
            pin_file: dir.join("state/site/known_hosts"),
            user_known_hosts: Some(dir.join("user_known_hosts")),
            accept_new: false,
            read_only: false,
        }
    }

    #[test]
    fn entry_names_follow_openssh() {
        assert_eq!(entry_name("203.0.113.7", 22), "203.0.113.7");
        assert_eq!(entry_name("203.0.113.7", 2222), "[203.0.113.7]:2222");
        assert_eq!(entry_name("2001:db8::7", 2222), "[2001:db8::7]:2222");
    }

    #[test]
    fn fingerprint_is_openssh_sha256() {
        // What `ssh-keygen -lf` prints for KEY_A.
        assert_eq!(
            fingerprint(&key(KEY_A)),
            "SHA256:WlBitH1mvVym8FP+Chacq5BUb1PZOkrLcp0g4iM/qQU"
        );
        assert_ne!(fingerprint(&key(KEY_A)), fingerprint(&key(KEY_B)));
    }

    #[test]
    fn first_use_pins_with_private_mode_then_matches() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        assert_eq!(verify("h", 2222, &key(KEY_A), &p).unwrap(), Trust::Learned);
        let text = std::fs::read_to_string(&p.pin_file).unwrap();
        assert_eq!(text, format!("{HEADER}[h]:2222 {KEY_A}\n"));
        let mode = std::fs::metadata(&p.pin_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(p.pin_file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(verify("h", 2222, &key(KEY_A), &p).unwrap(), Trust::Pinned);
    }

    #[test]
    fn the_pin_is_per_site_not_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        verify("h", 2222, &key(KEY_A), &p).unwrap();
        // The site's key at a new address (or port): accepted, the address noted.
        assert_eq!(
            verify("h2", 22, &key(KEY_A), &p).unwrap(),
            Trust::NewAddress
        );
        assert_eq!(verify("h", 22, &key(KEY_A), &p).unwrap(), Trust::NewAddress);
        assert_eq!(verify("h2", 22, &key(KEY_A), &p).unwrap(), Trust::Pinned);
        let text = std::fs::read_to_string(&p.pin_file).unwrap();
        assert_eq!(
            text,
            format!("{HEADER}[h]:2222 {KEY_A}\nh2 {KEY_A}\nh {KEY_A}\n")
        );
        // Another key at a new address is a changed site key, not a first contact.
        for (host, port) in [("h3", 22), ("h", 2222)] {
            match verify(host, port, &key(KEY_B), &p).unwrap_err() {
                SshError::HostKeyChanged {
                    known_fingerprint,
                    offered_fingerprint,
                    ..
                } => {
                    assert_eq!(known_fingerprint, fingerprint(&key(KEY_A)));
                    assert_eq!(offered_fingerprint, fingerprint(&key(KEY_B)));
                }
                e => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(std::fs::read_to_string(&p.pin_file).unwrap(), text);
    }

    #[test]
    fn the_pin_file_stays_valid_for_openssh() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        verify("h", 2222, &key(KEY_A), &p).unwrap();
        verify("10.0.0.9", 22, &key(KEY_A), &p).unwrap();
        // ssh-keygen -F finds each address in the file, with the site's key.
        for name in ["[h]:2222", "10.0.0.9"] {
            let out = std::process::Command::new("ssh-keygen")
                .arg("-F")
                .arg(name)
                .arg("-f")
                .arg(&p.pin_file)
                .output()
                .expect("ssh-keygen");
            let found = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{name}: {found}");
            assert!(found.contains(KEY_A), "{name}: {found}");
        }
    }

    #[test]
    fn read_only_decides_the_same_but_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = policy(dir.path());
        p.read_only = true;
        assert_eq!(verify("h", 22, &key(KEY_A), &p).unwrap(), Trust::Learned);
        assert!(!p.pin_file.exists(), "a read-only first contact pinned");
        assert!(
            !p.pin_file.parent().unwrap().exists(),
            "the site dir was created"
        );
        p.read_only = false;
        verify("h", 22, &key(KEY_A), &p).unwrap();
        let before = std::fs::read(&p.pin_file).unwrap();
        p.read_only = true;
        assert_eq!(
            verify("h2", 22, &key(KEY_A), &p).unwrap(),
            Trust::NewAddress
        );
        assert!(verify("h", 22, &key(KEY_B), &p).is_err());
        p.accept_new = true;
        assert!(matches!(
            verify("h", 22, &key(KEY_B), &p).unwrap(),
            Trust::Replaced { .. }
        ));
        assert_eq!(std::fs::read(&p.pin_file).unwrap(), before);
    }

    #[test]
    fn changed_key_of_any_algorithm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        verify("h", 22, &key(KEY_A), &p).unwrap();
        for other in [KEY_B, KEY_EC] {
            match verify("h", 22, &key(other), &p).unwrap_err() {
                SshError::HostKeyChanged {
                    host,
                    known_fingerprint,
                    offered_fingerprint,
                    pin_file,
                } => {
                    assert_eq!(host, "h");
                    assert_eq!(known_fingerprint, fingerprint(&key(KEY_A)));
                    assert_eq!(offered_fingerprint, fingerprint(&key(other)));
                    assert_eq!(pin_file, p.pin_file);
                }
                e => panic!("unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn accept_new_replaces_the_sites_key_at_every_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = policy(dir.path());
        verify("h", 22, &key(KEY_A), &p).unwrap();
        verify("old-address", 22, &key(KEY_A), &p).unwrap();
        p.accept_new = true;
        assert_eq!(
            verify("h", 22, &key(KEY_B), &p).unwrap(),
            Trust::Replaced {
                previous: vec![fingerprint(&key(KEY_A))]
            }
        );
        p.accept_new = false;
        assert_eq!(verify("h", 22, &key(KEY_B), &p).unwrap(), Trust::Pinned);
        // The old key is no longer the site's, at any address.
        assert!(verify("old-address", 22, &key(KEY_A), &p).is_err());
        let text = std::fs::read_to_string(&p.pin_file).unwrap();
        assert_eq!(text, format!("{HEADER}h {KEY_B}\n"));
        let mode = std::fs::metadata(&p.pin_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn user_known_hosts_conflict_of_same_algorithm_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        let user_file = p.user_known_hosts.clone().unwrap();
        std::fs::write(&user_file, format!("# mine\n[h]:2222 {KEY_B}\n")).unwrap();
        match verify("h", 2222, &key(KEY_A), &p).unwrap_err() {
            SshError::HostKeyChanged { pin_file, .. } => assert_eq!(pin_file, user_file),
            e => panic!("unexpected {e:?}"),
        }
        assert!(!p.pin_file.exists(), "nothing is pinned after a refusal");
    }

    #[test]
    fn user_known_hosts_other_algorithm_or_match_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        let user_file = p.user_known_hosts.clone().unwrap();
        std::fs::write(&user_file, format!("h {KEY_EC}\nh,10.0.0.1 {KEY_A}\n")).unwrap();
        assert_eq!(verify("h", 22, &key(KEY_A), &p).unwrap(), Trust::Learned);
        std::fs::remove_file(&p.pin_file).unwrap();
        std::fs::write(&user_file, format!("h2 {KEY_EC}\n")).unwrap();
        assert_eq!(verify("h2", 22, &key(KEY_A), &p).unwrap(), Trust::Learned);
    }

    #[test]
    fn unreadable_pin_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        std::fs::create_dir_all(p.pin_file.parent().unwrap()).unwrap();
        std::fs::write(&p.pin_file, "h ssh-ed25519 not-base64!!\n").unwrap();
        match verify("h", 22, &key(KEY_A), &p).unwrap_err() {
            SshError::PinFile { path, .. } => assert_eq!(path, p.pin_file),
            e => panic!("unexpected {e:?}"),
        }
    }
}
