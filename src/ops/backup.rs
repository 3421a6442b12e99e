//! `pdsup backup`: a consistent snapshot of the PDS's data while it serves,
//! streamed to the laptop as one archive in the site's state directory.
//!
//! The droplet stages the snapshot in a root-only temp dir
//! ([`data::snapshot_script`]: SQLite's online backup for every database, then
//! the other files, checksums and the repo heads of the copied stores). The
//! laptop fetches it in chunks, checks every file against the droplet's
//! checksums, and writes the archive under a `.partial` name, renamed only once
//! it has been read back and verified: an archive without that suffix is
//! complete. The site's own state (`pds.env`, `site.toml`) goes in encrypted
//! with a passphrase (the `age` format), so the archive alone rebuilds the site.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::site::{Session, Site};
use super::Output;
use crate::error::{bail, ensure, err, Context, Result};
use crate::host::dest::Destination;
use crate::host::ssh::SshOptions;
use crate::host::{Cmd, Host, Script};
use crate::pds::data::{self, FileSum, Manifest, RepoHead};
use crate::plan::{Progress, StepId};
use crate::secret::Secret;
use crate::settings::PDS_VOLUME_PATH;
use crate::steps::docker::apt_get;
use crate::ui::Ui;

/// The phases of a backup, for progress.
const SNAPSHOT: StepId = StepId::new("backup_snapshot", "snapshot on the droplet");
const FETCH: StepId = StepId::new("backup_fetch", "fetch");
const ARCHIVE: StepId = StepId::new("backup_archive", "verify and write the archive");

/// Bytes fetched from the droplet per round trip (bounded memory on large sites).
const CHUNK_MIB: u64 = 32;

/// The site's own state, as the archive carries it (encrypted).
#[derive(Debug, Serialize, Deserialize)]
pub struct SiteState {
    pub pds_env: String,
    pub site_toml: String,
}

/// The result of a backup, for the summary.
#[derive(Debug, Serialize)]
pub struct BackupDone {
    pub archive: PathBuf,
    pub bytes: u64,
    pub taken_at: String,
    pub accounts: Vec<RepoHead>,
    pub files: usize,
}

/// Where a site's archives go.
pub fn backups_dir(site: &Site) -> PathBuf {
    site.dir.path().join("backups")
}

/// scrypt's work factor (N = 2^18: 256 MiB and about half a second) for the
/// archive's passphrase: the reference age implementation's. Fixed, not age's
/// per-machine calibration to one second, which took 512 MiB on the test
/// machine (more on a faster laptop), less under load, and sets the most a
/// restore accepts at four steps above its own machine's: an archive made on
/// a fast laptop could be refused by a slower one.
const SCRYPT_LOG_N: u8 = 18;

/// The most a restore accepts (the reference implementation's bound): any
/// archive pdsup made, and not the hours and gigabytes a hostile one could ask.
const SCRYPT_MAX_LOG_N: u8 = 22;

/// Encrypts the site's state with `passphrase` (age, scrypt).
pub fn seal_site_state(state: &SiteState, passphrase: &Secret) -> Result<Vec<u8>> {
    let plain = serde_json::to_vec(state)?;
    let mut recipient = age::scrypt::Recipient::new(age::secrecy::SecretString::from(
        passphrase.expose().to_string(),
    ));
    recipient.set_work_factor(SCRYPT_LOG_N);
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&recipient as _))
        .map_err(|e| err!(Internal, "encrypting the site's state: {e}"))?;
    let mut sealed = Vec::new();
    let mut writer = encryptor
        .wrap_output(&mut sealed)
        .map_err(|e| err!(Internal, "encrypting the site's state: {e}"))?;
    writer.write_all(&plain)?;
    writer.finish()?;
    Ok(sealed)
}

/// Decrypts what [`seal_site_state`] made; a wrong passphrase is bad input.
pub fn open_site_state(sealed: &[u8], passphrase: &Secret) -> Result<SiteState> {
    let decryptor = age::Decryptor::new(sealed)
        .map_err(|e| err!(BadInput, "the archive's site state is not age data: {e}"))?;
    let mut identity = age::scrypt::Identity::new(age::secrecy::SecretString::from(
        passphrase.expose().to_string(),
    ));
    identity.set_max_work_factor(SCRYPT_MAX_LOG_N);
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| {
            err!(
                BadInput,
                "cannot decrypt the archive's site state ({e}): is it the passphrase the backup was made with?"
            )
        })?;
    let mut plain = Vec::new();
    reader.read_to_end(&mut plain)?;
    serde_json::from_slice(&plain).context("reading the archive's site state")
}

/// Takes a backup of `site`'s PDS on `destination`.
pub async fn backup(
    site: Site,
    destination: Destination,
    options: &SshOptions,
    passphrase: &Secret,
    output: Output,
) -> Result<BackupDone> {
    let ui = Ui::new(output.json, output.quiet);
    let sealed = sealed_site_state(&site, passphrase)?;
    let session = site.connect(destination, options).await?;
    let done = backup_session(&session, &sealed, &ui).await;
    ui.clear();
    done
}

/// The site's own state (`pds.env`, `site.toml`), sealed with `passphrase`
/// for the archive; read before the droplet is contacted.
pub fn sealed_site_state(site: &Site, passphrase: &Secret) -> Result<Vec<u8>> {
    let state = SiteState {
        pds_env: fs::read_to_string(site.dir.env_file()).with_context(|| {
            format!(
                "reading {} (a site `pdsup up` finished has one)",
                site.dir.env_file().display()
            )
        })?,
        site_toml: fs::read_to_string(site.dir.site_file())
            .with_context(|| format!("reading {}", site.dir.site_file().display()))?,
    };
    seal_site_state(&state, passphrase)
}

/// A backup over an open session, into the site's own `backups` directory
/// (as `pdsup backup` makes it), its progress reported to `progress`: the
/// terminal's, or a fleet's line for the site.
pub async fn backup_session(
    session: &Session,
    sealed: &[u8],
    progress: &dyn Progress,
) -> Result<BackupDone> {
    let site = &session.site;
    let out_dir = backups_dir(site);
    let hostname = site.dir.hostname().to_string();
    let pds_image = site.settings.pds_image.clone();
    let mut ctx = session.ctx(progress);
    let pds_version = match ctx.pds().await {
        Ok(pds) => pds.health().await.ok(),
        Err(_) => None,
    };
    let host = session.host.as_ref();
    progress.step_started(1, 3, SNAPSHOT);
    progress.progress("copying the PDS's databases with SQLite's online backup, then its files");
    host.run(&Cmd::sh(concat!(
        "command -v sqlite3 >/dev/null || { ",
        apt_get!(),
        " update && ",
        apt_get!(),
        " install sqlite3; }"
    )))
    .await
    .context("installing sqlite3 on the droplet (for SQLite's online backup)")?;
    let stage = host.run(&data::make_stage_script()).await?.stdout_str();
    let stage = stage.trim().to_string();
    ensure!(
        stage.starts_with("/var/tmp/pdsup-backup."),
        RemoteCommand,
        "mktemp on the droplet answered {stage:?}"
    );
    let result = fetch_and_pack(
        host,
        progress,
        &stage,
        &out_dir,
        &hostname,
        |taken_at, files, accounts| Manifest {
            format: data::FORMAT,
            hostname: hostname.clone(),
            taken_at: taken_at.to_string(),
            pds_version: pds_version.clone(),
            pds_image: pds_image.clone(),
            accounts,
            files,
        },
        sealed,
    )
    .await;
    // The stage holds signing keys: never left behind, whatever happened.
    let cleanup = host.run(&Script::of("rm -rf {}", &[&stage]).cmd()).await;
    let done = result?;
    cleanup.context("removing the backup's staging directory on the droplet")?;
    Ok(done)
}

async fn fetch_and_pack(
    host: &dyn Host,
    ui: &dyn Progress,
    stage: &str,
    out_dir: &Path,
    hostname: &str,
    manifest: impl FnOnce(&str, BTreeMap<String, FileSum>, Vec<RepoHead>) -> Manifest,
    sealed_state: &[u8],
) -> Result<BackupDone> {
    let out = host
        .run(&data::snapshot_script(PDS_VOLUME_PATH, stage).cmd())
        .await
        .context("taking the snapshot on the droplet")?
        .stdout_str();
    let mut lines = out.lines();
    let taken_at = lines.next().unwrap_or_default().trim().to_string();
    let size: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| err!(RemoteCommand, "the snapshot script answered {out:?}"))?;
    ensure!(
        !taken_at.is_empty() && taken_at.bytes().all(|b| b.is_ascii_alphanumeric()),
        RemoteCommand,
        "the snapshot script answered {out:?}"
    );
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    set_private_dir(out_dir)?;
    let fetched = out_dir.join(format!(".{taken_at}.droplet.partial"));
    let partial = out_dir.join(format!("{hostname}-{taken_at}.tar.gz.partial"));
    let archive = out_dir.join(format!("{hostname}-{taken_at}.tar.gz"));
    let result = async {
        ui.step_started(2, 3, FETCH);
        download(host, ui, &format!("{stage}/archive.tar.gz"), size, &fetched).await?;
        ui.step_started(3, 3, ARCHIVE);
        ui.progress("checking every file against the droplet's checksums, writing the archive");
        let (files, heads) = check_droplet_archive(&fetched)?;
        let manifest = manifest(&taken_at, files, heads);
        write_archive(&fetched, &partial, &manifest, sealed_state)?;
        let (read_back, _) = read_archive(&partial, true)?;
        ensure!(
            read_back == manifest,
            Internal,
            "the archive read back differs from the one written"
        );
        fs::rename(&partial, &archive)
            .with_context(|| format!("renaming {} into place", partial.display()))?;
        let bytes = fs::metadata(&archive)?.len();
        Ok(BackupDone {
            archive: archive.clone(),
            bytes,
            taken_at: taken_at.clone(),
            files: manifest.files.len(),
            accounts: manifest.accounts,
        })
    }
    .await;
    let _ = fs::remove_file(&fetched);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn set_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

fn create_private(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Copies `remote` (of `size` bytes) to `local`, `CHUNK_MIB` at a time.
async fn download(
    host: &dyn Host,
    ui: &dyn Progress,
    remote: &str,
    size: u64,
    local: &Path,
) -> Result<()> {
    let mut file = create_private(local)?;
    let mut got: u64 = 0;
    let mut chunk: u64 = 0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    while got < size {
        let (skip, count) = ((chunk * CHUNK_MIB).to_string(), CHUNK_MIB.to_string());
        let out = host
            .run(
                &Script::of(
                    "dd if={} bs=1M skip={} count={} status=none",
                    &[remote, &skip, &count],
                )
                .cmd(),
            )
            .await
            .with_context(|| format!("fetching the snapshot from the droplet (at {got} bytes)"))?;
        ensure!(
            !out.stdout.is_empty(),
            RemoteCommand,
            "the snapshot on the droplet ended at {got} of {size} bytes"
        );
        file.write_all(&out.stdout)?;
        got += out.stdout.len() as u64;
        chunk += 1;
        ui.progress(&format!("fetched {:.1} of {:.1} MiB", mib(got), mib(size)));
    }
    ensure!(
        got == size,
        RemoteCommand,
        "fetched {got} bytes of a {size}-byte snapshot"
    );
    file.sync_all()?;
    Ok(())
}

/// Reads the droplet's archive: every file under `data/` hashed and checked
/// against its `SHA256SUMS`; returns the files and the repo heads.
fn check_droplet_archive(path: &Path) -> Result<(BTreeMap<String, FileSum>, Vec<RepoHead>)> {
    let mut sums_text = None;
    let mut heads_text = None;
    let mut files = BTreeMap::new();
    let mut found = BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(path)?));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if name == data::SUMS_NAME {
            sums_text = Some(read_text(&mut entry)?);
        } else if name == data::HEADS_NAME {
            heads_text = Some(read_text(&mut entry)?);
        } else if let Some(rel) = name.strip_prefix(data::DATA_PREFIX) {
            if entry.header().entry_type().is_file() {
                let (sha256, size) = hash(&mut entry)?;
                found.insert(rel.to_string(), sha256.clone());
                files.insert(rel.to_string(), FileSum { sha256, size });
            }
        }
    }
    let sums = data::parse_sums(
        &sums_text.ok_or_else(|| err!(RemoteCommand, "the snapshot has no SHA256SUMS"))?,
    )
    .map_err(|e| err!(RemoteCommand, "the snapshot's {e}"))?;
    let recorded: BTreeMap<String, FileSum> = sums
        .into_iter()
        .map(|(p, sha256)| {
            let size = files.get(&p).map_or(0, |f: &FileSum| f.size);
            (p, FileSum { sha256, size })
        })
        .collect();
    let problems = data::compare_sums(&recorded, &found);
    if !problems.is_empty() {
        bail!(
            RemoteCommand,
            "the snapshot changed on its way from the droplet: {}",
            problems.join("; ")
        );
    }
    let heads = data::parse_heads(&heads_text.unwrap_or_default())
        .map_err(|e| err!(RemoteCommand, "the snapshot's {e}"))?;
    Ok((files, heads))
}

fn read_text(entry: &mut impl Read) -> Result<String> {
    let mut text = String::new();
    entry.read_to_string(&mut text)?;
    Ok(text)
}

fn hash(reader: &mut impl Read) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The archive: the manifest, the sealed site state and the checksums first,
/// then the droplet's `data/` entries as they came (owners and modes kept).
fn write_archive(fetched: &Path, out: &Path, manifest: &Manifest, sealed: &[u8]) -> Result<()> {
    let file = create_private(out)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, bytes)?;
        Ok(())
    };
    add(data::MANIFEST_NAME, &serde_json::to_vec_pretty(manifest)?)?;
    add(data::STATE_NAME, sealed)?;
    add(data::SUMS_NAME, manifest.sums_text().as_bytes())?;
    let mut source = tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(fetched)?));
    for entry in source.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if !name.starts_with(data::DATA_PREFIX) && name != "data" {
            continue;
        }
        let mut header = entry.header().clone();
        builder.append_data(&mut header, &name, &mut entry)?;
    }
    let gz = builder.into_inner()?;
    let file = gz.finish()?;
    file.sync_all()?;
    Ok(())
}

/// Reads an archive: its manifest, its sealed site state, and (with `verify`)
/// every data file checked against the manifest. An archive whose files do
/// not match is refused, naming them.
pub fn read_archive(path: &Path, verify: bool) -> Result<(Manifest, Vec<u8>)> {
    let open = || -> Result<_> {
        let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(tar::Archive::new(flate2::read::GzDecoder::new(file)))
    };
    let mut manifest: Option<Manifest> = None;
    let mut sealed = None;
    let mut found = BTreeMap::new();
    let mut archive = open()?;
    let read = (|| -> Result<()> {
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.to_string_lossy().into_owned();
            if name == data::MANIFEST_NAME {
                let text = read_text(&mut entry)?;
                manifest = Some(serde_json::from_str(&text).context("reading manifest.json")?);
            } else if name == data::STATE_NAME {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                sealed = Some(bytes);
            } else if let Some(rel) = name.strip_prefix(data::DATA_PREFIX) {
                if !verify {
                    break;
                }
                if entry.header().entry_type().is_file() {
                    found.insert(rel.to_string(), hash(&mut entry)?.0);
                }
            }
        }
        Ok(())
    })();
    read.kind(crate::error::ErrorKind::BadInput)
        .with_context(|| {
            format!(
                "{} is not a readable pdsup backup (cut short, or not one)",
                path.display()
            )
        })?;
    let manifest = manifest.ok_or_else(|| {
        err!(
            BadInput,
            "{} has no manifest.json: not a pdsup backup",
            path.display()
        )
    })?;
    ensure!(
        manifest.format == data::FORMAT,
        BadInput,
        "{} is a backup of format {}; this pdsup reads format {}",
        path.display(),
        manifest.format,
        data::FORMAT
    );
    let sealed = sealed.ok_or_else(|| {
        err!(
            BadInput,
            "{} has no {}: not a pdsup backup",
            path.display(),
            data::STATE_NAME
        )
    })?;
    if verify {
        let problems = data::compare_sums(&manifest.files, &found);
        if !problems.is_empty() {
            bail!(
                BadInput,
                "{} does not match its manifest: {}",
                path.display(),
                problems.join("; ")
            );
        }
    }
    Ok((manifest, sealed))
}

/// The passphrase that protects the site's state in an archive:
/// `--passphrase-file`, else `PDSUP_BACKUP_PASSPHRASE`, else a prompt on a
/// terminal (twice when `confirm`).
pub fn passphrase(file: Option<&Path>, confirm: bool) -> Result<Secret> {
    if let Some(path) = file {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading the passphrase file {}", path.display()))
            .kind(crate::error::ErrorKind::BadInput)?;
        let pass = text.trim_end_matches(['\n', '\r']).to_string();
        ensure!(!pass.is_empty(), BadInput, "{} is empty", path.display());
        return Ok(Secret::new(pass));
    }
    if let Ok(pass) = std::env::var("PDSUP_BACKUP_PASSPHRASE") {
        ensure!(
            !pass.is_empty(),
            BadInput,
            "PDSUP_BACKUP_PASSPHRASE is empty"
        );
        return Ok(Secret::new(pass));
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!(
            BadInput,
            "the backup's passphrase is needed (it encrypts the site's secrets in the archive): \
             pass --passphrase-file FILE or set PDSUP_BACKUP_PASSPHRASE"
        );
    }
    let pass = rpassword::prompt_password("Backup passphrase: ")?;
    ensure!(!pass.is_empty(), BadInput, "the passphrase is empty");
    if confirm {
        let again = rpassword::prompt_password("Again: ")?;
        ensure!(again == pass, BadInput, "the passphrases differ");
    }
    Ok(Secret::new(pass))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_state_round_trips_through_age_and_a_wrong_passphrase_is_refused() {
        let state = SiteState {
            pds_env: "PDS_JWT_SECRET=abc\n".into(),
            site_toml: "hostname = \"pds.example.com\"\n".into(),
        };
        let sealed = seal_site_state(&state, &Secret::new("correct horse")).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("PDS_JWT_SECRET"));
        let opened = open_site_state(&sealed, &Secret::new("correct horse")).unwrap();
        assert_eq!(opened.pds_env, state.pds_env);
        assert_eq!(opened.site_toml, state.site_toml);
        let err = open_site_state(&sealed, &Secret::new("wrong")).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::BadInput);
    }

    #[test]
    fn the_passphrase_work_factor_is_fixed_and_a_higher_one_is_refused() {
        let state = SiteState {
            pds_env: String::new(),
            site_toml: String::new(),
        };
        let sealed = seal_site_state(&state, &Secret::new("correct horse")).unwrap();
        let header = String::from_utf8_lossy(&sealed[..120]).into_owned();
        let stanza = header.lines().nth(1).unwrap();
        assert!(
            stanza.starts_with("-> scrypt ") && stanza.ends_with(" 18"),
            "{header}"
        );
        // The same stanza asking for 2^23 is refused before any work is done.
        let (line_start, line) = (header.find(stanza).unwrap(), stanza.len());
        let mut hostile = sealed.clone();
        hostile[line_start + line - 2..line_start + line].copy_from_slice(b"23");
        let err = open_site_state(&hostile, &Secret::new("correct horse")).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::BadInput);
        assert!(format!("{err:#}").contains("work"), "{err:#}");
    }

    fn droplet_archive(dir: &Path, files: &[(&str, &[u8])], sums: &str) -> PathBuf {
        let path = dir.join("droplet.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, name, bytes).unwrap();
        };
        add("SHA256SUMS", sums.as_bytes());
        add("HEADS", b"did:plc:a bafyhead 3krev\n");
        for (name, bytes) in files {
            add(&format!("data/{name}"), bytes);
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn an_archive_is_written_read_back_and_a_changed_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files: [(&str, &[u8]); 2] = [("account.sqlite", b"db"), ("blocks/did/bafy", b"blob")];
        let sums: String = files
            .iter()
            .map(|(n, b)| format!("{}  data/{n}\n", sha(b)))
            .collect();
        let fetched = droplet_archive(dir.path(), &files, &sums);
        let (found, heads) = check_droplet_archive(&fetched).unwrap();
        assert_eq!(found["blocks/did/bafy"].size, 4);
        assert_eq!(heads[0].head, "bafyhead");
        let manifest = Manifest {
            format: data::FORMAT,
            hostname: "pds.example.com".into(),
            taken_at: "20261203T140000Z".into(),
            pds_version: None,
            pds_image: "img".into(),
            accounts: heads,
            files: found,
        };
        let out = dir.path().join("out.tar.gz");
        write_archive(&fetched, &out, &manifest, b"sealed").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (read, sealed) = read_archive(&out, true).unwrap();
        assert_eq!(read, manifest);
        assert_eq!(sealed, b"sealed");

        // A file that does not match the droplet's checksums stops the backup.
        let bad_sums = sums.replace(&sha(b"blob"), &"0".repeat(64));
        let bad = droplet_archive(dir.path(), &files, &bad_sums);
        let err = check_droplet_archive(&bad).unwrap_err();
        assert!(
            format!("{err:#}").contains("blocks/did/bafy does not match"),
            "{err:#}"
        );

        // An archive whose data differs from its manifest is refused.
        let mut other = manifest.clone();
        other.files.get_mut("account.sqlite").unwrap().sha256 = "1".repeat(64);
        write_archive(&fetched, &out, &other, b"sealed").unwrap();
        let err = read_archive(&out, true).unwrap_err();
        assert!(
            format!("{err:#}").contains("account.sqlite does not match"),
            "{err:#}"
        );
        assert!(read_archive(&out, false).is_ok());

        // A cut archive is not a readable one.
        let bytes = fs::read(&out).unwrap();
        fs::write(&out, &bytes[..bytes.len() / 2]).unwrap();
        assert!(read_archive(&out, true).is_err());
    }
}
