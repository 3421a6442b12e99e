//! What a PDS's data is, and the backup archive that carries it.
//!
//! The PDS keeps everything under its data dir (bluesky-social/atproto's
//! `actor-store` and the PDS README): `account.sqlite`, `sequencer.sqlite`,
//! `did_cache.sqlite`, one `actors/<xx>/<did>/store.sqlite` per account with the
//! repo signing `key` beside it, `reserved_keys/`, and blobs under `blocks/`
//! (immutable once written). The databases run in WAL mode, so a plain copy of a
//! live one can be torn: they are copied with SQLite's online backup
//! (`sqlite3 DB ".backup COPY"`), and everything else as files, after the
//! databases, so that every blob a copied database refers to is already there.
//!
//! An archive (`.tar.gz`) holds, in this order: `manifest.json` (the
//! [`Manifest`]), `site-state.age` (the site's `pds.env` and `site.toml`,
//! encrypted with a passphrase), `SHA256SUMS`, and the data under `data/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::host::{Cmd, Script};

/// The archive's format version, bumped when a reader of an older one could
/// misread a newer one.
pub const FORMAT: u32 = 1;

pub const MANIFEST_NAME: &str = "manifest.json";
pub const STATE_NAME: &str = "site-state.age";
pub const SUMS_NAME: &str = "SHA256SUMS";
/// Heads read from the copied actor stores, one `did cid rev` line each.
pub const HEADS_NAME: &str = "HEADS";
/// The data dir's files inside an archive.
pub const DATA_PREFIX: &str = "data/";
/// Written into a data dir once a restore has put the archive's data there:
/// the archive's id, so a second run of the same restore knows it is done.
pub const RESTORED_MARKER: &str = ".pdsup-restored";

/// One account's repository as the backup holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoHead {
    pub did: String,
    /// The CID of the repo's latest commit.
    pub head: String,
    pub rev: String,
}

/// One file of the data dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub sha256: String,
    pub size: u64,
}

/// What a backup holds, readable without the passphrase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub hostname: String,
    /// When the snapshot was taken on the droplet (UTC, `YYYYMMDDTHHMMSSZ`).
    pub taken_at: String,
    /// What the PDS's `/xrpc/_health` reported.
    pub pds_version: Option<String>,
    /// The image the PDS ran.
    pub pds_image: String,
    /// Every account's repo head, read from the copied databases themselves.
    pub accounts: Vec<RepoHead>,
    /// Every file under `data/`, by its path relative to the data dir.
    pub files: BTreeMap<String, FileSum>,
}

impl Manifest {
    /// An id for the archive's data: the SHA-256 of its checksum list.
    pub fn data_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for (path, sum) in &self.files {
            hash.update(format!("{} {} {path}\n", sum.sha256, sum.size));
        }
        hex::encode(hash.finalize())
    }

    /// The `SHA256SUMS` text for the data (paths under `data/`), as
    /// `sha256sum -c` reads it.
    pub fn sums_text(&self) -> String {
        self.files
            .iter()
            .map(|(path, sum)| format!("{}  {DATA_PREFIX}{path}\n", sum.sha256))
            .collect()
    }
}

/// Whether a data dir file is a database the PDS writes through SQLite.
pub fn is_database(path: &str) -> bool {
    path.ends_with(".sqlite")
}

/// The part of SQLite's state that lives beside a database only while it is
/// open (never copied: the online backup folds it into the copy).
pub fn is_sqlite_sidecar(path: &str) -> bool {
    ["-wal", "-shm", "-journal"]
        .iter()
        .any(|s| path.ends_with(&format!(".sqlite{s}")))
}

/// Parses `sha256sum` output (`HASH  data/PATH`) into paths relative to the
/// data dir. Lines for files outside `data/` are an error: they are not the
/// PDS's.
pub fn parse_sums(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut sums = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let bad = || format!("{SUMS_NAME} line {}: {line:?}", n + 1);
        let (hash, path) = line.split_once("  ").ok_or_else(bad)?;
        let path = path.strip_prefix(DATA_PREFIX).ok_or_else(bad)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || path.is_empty() {
            return Err(bad());
        }
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(bad());
        }
        sums.insert(path.to_string(), hash.to_ascii_lowercase());
    }
    Ok(sums)
}

/// Parses the `did cid rev` lines the staging script reads from each copied
/// actor store.
pub fn parse_heads(text: &str) -> Result<Vec<RepoHead>, String> {
    let mut heads = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [did, head, rev] if did.starts_with("did:") => heads.push(RepoHead {
                did: did.to_string(),
                head: head.to_string(),
                rev: rev.to_string(),
            }),
            _ => return Err(format!("{HEADS_NAME}: cannot read {line:?}")),
        }
    }
    heads.sort_by(|a, b| a.did.cmp(&b.did));
    Ok(heads)
}

/// What differs between the checksums a manifest records and those found:
/// one line per file missing, extra or changed. Empty when they agree.
pub fn compare_sums(
    recorded: &BTreeMap<String, FileSum>,
    found: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, sum) in recorded {
        match found.get(path) {
            None => problems.push(format!("{path} is missing")),
            Some(hash) if *hash != sum.sha256 => {
                problems.push(format!("{path} does not match its checksum"))
            }
            Some(_) => {}
        }
    }
    for path in found.keys().filter(|p| !recorded.contains_key(*p)) {
        problems.push(format!("{path} is not in the manifest"));
    }
    problems
}

/// A new directory on the droplet for one backup, root-only; stale ones from
/// backups that were cut off are removed first. Prints the directory.
pub fn make_stage_script() -> Cmd {
    Cmd::sh(
        "set -eu; find /var/tmp -maxdepth 1 -name 'pdsup-backup.*' -mmin +360 -exec rm -rf {} +; \
         umask 077; mktemp -d /var/tmp/pdsup-backup.XXXXXX",
    )
}

/// The droplet's half of a backup, in `stage` (made by [`make_stage_script`]):
/// every database copied with SQLite's online backup and checked, then every
/// other file of `data_dir` (blobs, keys, reserved keys, the site id; not the
/// droplet's `pds.env`, which holds the site's secrets and travels encrypted),
/// the checksums, the repo heads of the copied stores, and one `archive.tar.gz`
/// of them. Prints the UTC time the snapshot started.
pub fn snapshot_script(data_dir: &str, stage: &str) -> Script {
    stage_script(data_dir, stage).push(
        r#"
tar --numeric-owner -czf archive.tar.gz SHA256SUMS HEADS data
rm -rf data databases
wc -c < archive.tar.gz"#,
        &[],
    )
}

/// The first half of [`snapshot_script`], also what the scheduled backup runs
/// (`pdsup backup --schedule`): `stage` ends up holding `data/`, `SHA256SUMS`,
/// `HEADS` and the list `databases`, and the script's working directory is
/// `stage`. Prints the UTC time the snapshot started.
pub fn stage_script(data_dir: &str, stage: &str) -> Script {
    Script::of(
        r#"set -eu; umask 077; src={}; stage={}
date -u +%Y%m%dT%H%M%SZ
[ -d "$src" ] || { echo "$src does not exist: there is no PDS data on this droplet" >&2; exit 1; }
mkdir -p "$stage/data"; cd "$src"
chown --reference=. "$stage/data"; chmod --reference=. "$stage/data"
find . -type f -name '*.sqlite' | sort > "$stage/databases"
while IFS= read -r db; do
  dst="$stage/data/${db#./}"; mkdir -p "$(dirname "$dst")"
  sqlite3 -cmd '.timeout 30000' "$db" ".backup '$dst'"
  ok=$(sqlite3 "$dst" 'PRAGMA quick_check;')
  [ "$ok" = ok ] || { echo "the copy of $db fails SQLite's check: $ok" >&2; exit 1; }
  chown --reference="$db" "$dst"; chmod --reference="$db" "$dst"
done < "$stage/databases"
find . -mindepth 1 \( -type f -o -type d \) ! -name '*.sqlite' ! -name '*.sqlite-wal' ! -name '*.sqlite-shm' \
  ! -name '*.sqlite-journal' ! -path ./pds.env ! -name '.pdsup.*' ! -name .pdsup-restored -print0 \
  | tar --null --no-recursion -T - --numeric-owner -cf - | tar -C "$stage/data" --numeric-owner -xpf -
cd "$stage"
for store in data/actors/*/*/store.sqlite; do
  [ -f "$store" ] || continue
  sqlite3 -separator ' ' "$store" 'select did, cid, rev from repo_root;'
done > HEADS
find data -type f -print0 | sort -z | xargs -0 -r sha256sum > SHA256SUMS"#,
        &[data_dir, stage],
    )
}

/// The droplet's half of a restore: unpack the uploaded `archive` into a stage
/// beside `data_dir`, check every file against `SHA256SUMS`, set the data dir
/// there now aside whole (as `aside.<UTC time>`, WAL and SHM files included) or, when it holds
/// only pdsup's files, keep its `pds.env` and drop it, then move the stage into
/// place with `marker` naming the archive. Each run starts from the archive,
/// so a run cut off anywhere can be run again.
pub fn restore_script(archive: &str, data_dir: &str, aside: &str, data_id: &str) -> Script {
    let stage = format!("{data_dir}.pdsup-restore");
    Script::of(
        r#"set -eu; umask 077; archive={}; stage={}
rm -rf "$stage"; mkdir -p "$stage"
tar -C "$stage" --numeric-owner -xzpf "$archive" SHA256SUMS data
"#,
        &[archive, &stage],
    )
    .push(PLACE_TEMPLATE, &[data_dir, &stage, aside, data_id])
    .push(r#"; rm -f "$archive"; sync"#, &[])
}

/// The second half of a restore, from a stage (`data`, `stage`, `aside`,
/// `data_id`) that holds `SHA256SUMS` and `data/`, unpacked from an archive or
/// restored from a restic snapshot: check every file, set the data dir aside,
/// move the stage's data into place with the marker.
pub const PLACE_TEMPLATE: &str = r#"data={}; stage={}; aside={}
aside="$aside.$(date -u +%Y%m%dT%H%M%SZ)"
( cd "$stage" && sha256sum --quiet --strict -c SHA256SUMS ) || { echo "the restored data does not match its checksums" >&2; exit 1; }
if [ -d "$data" ]; then
  chown --reference="$data" "$stage/data"; chmod --reference="$data" "$stage/data"
  if [ -n "$(find "$data" -mindepth 1 -maxdepth 1 ! -name pds.env ! -name .pdsup-site-id ! -name '.pdsup.*' | head -n1)" ]; then
    mv "$data" "$aside"
  else
    [ ! -f "$data/pds.env" ] || cp -p "$data/pds.env" "$stage/data/pds.env"
    rm -rf "$data"
  fi
fi
printf '%s\n' {} > "$stage/data/.pdsup-restored"
mv "$stage/data" "$data"; rm -rf "$stage""#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sum(hash: char, size: u64) -> FileSum {
        FileSum {
            sha256: hash.to_string().repeat(64),
            size,
        }
    }

    #[test]
    fn sums_parse_relative_to_the_data_dir_and_refuse_other_paths() {
        let a = "a".repeat(64);
        let text = format!("{a}  data/account.sqlite\n{a}  data/actors/ab/did:plc:x/key\n");
        let sums = parse_sums(&text).unwrap();
        assert_eq!(
            sums.keys().collect::<Vec<_>>(),
            ["account.sqlite", "actors/ab/did:plc:x/key"]
        );
        for bad in [
            format!("{a}  account.sqlite"),
            format!("{a}  data/../etc/passwd"),
            format!("{a} data/x"),
            "abc  data/x".to_string(),
            format!("{a}  data/"),
        ] {
            assert!(parse_sums(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn heads_parse_and_sort_by_did() {
        let heads = parse_heads("did:plc:b bafyb 3kb\n\ndid:plc:a bafya 3ka\n").unwrap();
        assert_eq!(
            heads,
            vec![
                RepoHead {
                    did: "did:plc:a".into(),
                    head: "bafya".into(),
                    rev: "3ka".into()
                },
                RepoHead {
                    did: "did:plc:b".into(),
                    head: "bafyb".into(),
                    rev: "3kb".into()
                },
            ]
        );
        assert!(parse_heads("did:plc:a bafya").is_err());
        assert!(parse_heads("x y z").is_err());
    }

    #[test]
    fn compare_sums_names_missing_extra_and_changed_files() {
        let recorded = BTreeMap::from([
            ("a".to_string(), sum('a', 1)),
            ("b".to_string(), sum('b', 1)),
            ("c".to_string(), sum('c', 1)),
        ]);
        let found = BTreeMap::from([
            ("a".to_string(), "a".repeat(64)),
            ("b".to_string(), "0".repeat(64)),
            ("d".to_string(), "d".repeat(64)),
        ]);
        assert_eq!(
            compare_sums(&recorded, &found),
            [
                "b does not match its checksum",
                "c is missing",
                "d is not in the manifest"
            ]
        );
        let same: BTreeMap<_, _> = recorded
            .iter()
            .map(|(p, s)| (p.clone(), s.sha256.clone()))
            .collect();
        assert!(compare_sums(&recorded, &same).is_empty());
    }

    #[test]
    fn the_manifest_writes_sums_sha256sum_reads_and_its_id_follows_the_data() {
        let mut m = Manifest {
            format: FORMAT,
            hostname: "pds.example.com".into(),
            taken_at: "20261203T140000Z".into(),
            pds_version: Some("0.4.1".into()),
            pds_image: "ghcr.io/bluesky-social/pds:0.4".into(),
            accounts: vec![],
            files: BTreeMap::from([("blocks/x".to_string(), sum('a', 3))]),
        };
        assert_eq!(
            m.sums_text(),
            format!("{}  data/blocks/x\n", "a".repeat(64))
        );
        assert_eq!(
            parse_sums(&m.sums_text()).unwrap()["blocks/x"],
            "a".repeat(64)
        );
        let id = m.data_id();
        m.files.insert("blocks/y".into(), sum('b', 1));
        assert_ne!(id, m.data_id());
    }

    #[test]
    fn databases_and_their_sidecars_are_told_apart() {
        assert!(is_database("actors/ab/did:plc:x/store.sqlite"));
        assert!(!is_database("account.sqlite-wal"));
        assert!(is_sqlite_sidecar("account.sqlite-wal"));
        assert!(is_sqlite_sidecar("sequencer.sqlite-shm"));
        assert!(!is_sqlite_sidecar("blocks/did/bafy"));
    }

    /// The scripts run here against a data dir made of real SQLite databases
    /// in WAL mode, open for writing while the snapshot runs.
    #[test]
    fn snapshot_and_restore_scripts_run_here() {
        if std::process::Command::new("sqlite3")
            .arg("-version")
            .output()
            .is_err()
        {
            panic!("this test needs sqlite3 (scripts/harness/install-deps.sh installs it)");
        }
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("pds");
        let actor = data.join("actors/ab/did:plc:abc");
        std::fs::create_dir_all(&actor).unwrap();
        std::fs::create_dir_all(data.join("blocks/did:plc:abc")).unwrap();
        std::fs::write(data.join("blocks/did:plc:abc/bafyblob"), b"image bytes").unwrap();
        std::fs::write(actor.join("key"), b"signing key").unwrap();
        std::fs::write(data.join("pds.env"), b"PDS_JWT_SECRET=x\n").unwrap();
        std::fs::write(data.join(".pdsup-site-id"), b"site\n").unwrap();
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let store = actor.join("store.sqlite");
        sh(&format!(
            "sqlite3 {} 'PRAGMA journal_mode=WAL; create table repo_root (did text, cid text, rev text); \
             insert into repo_root values (\"did:plc:abc\", \"bafyhead\", \"3krev\");' >/dev/null; \
             sqlite3 {} 'PRAGMA journal_mode=WAL; create table account (did text); insert into account values (\"did:plc:abc\");' >/dev/null",
            crate::host::quote(store.to_str().unwrap()),
            crate::host::quote(data.join("account.sqlite").to_str().unwrap()),
        ));
        let stage = root.path().join("stage");
        std::fs::create_dir(&stage).unwrap();
        let out = sh(snapshot_script(data.to_str().unwrap(), stage.to_str().unwrap()).as_str());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].ends_with('Z') && lines[1].trim().parse::<u64>().unwrap() > 0);
        let listing = sh(&format!(
            "cd {} && tar -tzf archive.tar.gz | sort && ls",
            stage.display()
        ));
        for want in [
            "HEADS",
            "SHA256SUMS",
            "data/account.sqlite",
            "data/actors/ab/did:plc:abc/key",
            "data/actors/ab/did:plc:abc/store.sqlite",
            "data/blocks/did:plc:abc/bafyblob",
            "data/.pdsup-site-id",
        ] {
            assert!(listing.lines().any(|l| l == want), "{want}:\n{listing}");
        }
        assert!(!listing.contains("pds.env"), "{listing}");
        assert!(!listing.contains("-wal"), "{listing}");
        let heads = sh(&format!(
            "tar -xzOf {}/archive.tar.gz HEADS",
            stage.display()
        ));
        assert_eq!(heads, "did:plc:abc bafyhead 3krev\n");

        // Restore into a data dir holding other data: set aside whole.
        std::fs::write(data.join("account.sqlite-wal"), b"stale wal").unwrap();
        let aside = root.path().join("pds.aside");
        let archive = root.path().join("upload.tar.gz");
        std::fs::rename(stage.join("archive.tar.gz"), &archive).unwrap();
        let script = restore_script(
            archive.to_str().unwrap(),
            data.to_str().unwrap(),
            aside.to_str().unwrap(),
            "data-id",
        );
        sh(script.as_str());
        let set_aside = sh(&format!("ls -d {}.*", aside.display()));
        assert_eq!(
            std::fs::read(Path::new(set_aside.trim()).join("account.sqlite-wal")).unwrap(),
            b"stale wal"
        );
        assert!(!data.join("account.sqlite-wal").exists());
        assert_eq!(
            std::fs::read_to_string(data.join(RESTORED_MARKER)).unwrap(),
            "data-id\n"
        );
        assert_eq!(std::fs::read(actor.join("key")).unwrap(), b"signing key");
        assert_eq!(
            sh(&format!(
                "sqlite3 {} 'select cid from repo_root'",
                crate::host::quote(store.to_str().unwrap())
            )),
            "bafyhead\n"
        );
        assert!(!archive.exists());

        // A corrupted upload changes nothing.
        sh(&format!(
            "mkdir -p {r}/bad/data && cd {r}/bad && echo x > data/f && echo '{z}  data/f' > SHA256SUMS && tar -czf {a} SHA256SUMS data",
            r = root.path().display(),
            z = "0".repeat(64),
            a = archive.display()
        ));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script.as_str())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not match its checksums"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(data.join(RESTORED_MARKER)).unwrap(),
            "data-id\n"
        );
    }
}
