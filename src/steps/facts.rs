//! The steps' facts about the droplet, each a read-only command and a pure
//! parser of its output (see `host::facts` for the machinery and the facts
//! every layer shares). The steps' `gather` functions are made of these.
//!
//! Parsers that belong to a type live with it (`DpkgFacts::parse`,
//! `OsRelease::parse`, `lock_holder`) and are tested there too; the parsers of
//! the facts below are tested here, each with real outputs, empty and garbled.

use crate::host::facts::{first_line, Fact};
use crate::host::{Cmd, Output, Script};

use super::account::DataDir;
use super::docker::OsRelease;
use super::packages::{self, DpkgFacts, LockHolder};
use super::preflight;

/// dpkg's status of `packages` (every package, and `dpkg --audit`, when empty).
pub fn dpkg_status(packages: &[&str]) -> Fact<DpkgFacts> {
    Fact::new(packages::status_probe(packages), |out| {
        DpkgFacts::parse(&out.stdout_str())
    })
}

/// The release from /etc/os-release and dpkg's architecture.
pub fn os_release() -> Fact<OsRelease> {
    Fact::new(
        Cmd::sh(
            r#". /etc/os-release 2>/dev/null
echo "id=$ID"
echo "version_id=$VERSION_ID"
echo "codename=$VERSION_CODENAME"
echo "arch=$(dpkg --print-architecture 2>/dev/null)"
echo "name=$PRETTY_NAME""#,
        ),
        |out| OsRelease::parse(&out.stdout_str()),
    )
}

/// Everything preflight checks, in one round trip (read with `read_checked`:
/// a droplet that cannot answer these is not one to set up).
pub fn preflight() -> Fact<preflight::Facts> {
    Fact::new(Cmd::sh(preflight::PROBE), |out| {
        preflight::Facts::parse(&out.stdout_str())
    })
}

/// Who holds the dpkg (or apt) lock, if anyone.
pub fn dpkg_lock_holder() -> Fact<Option<LockHolder>> {
    Fact::new(Cmd::sh(packages::LOCK_PROBE), |out| {
        packages::lock_holder(&out.stdout_str())
    })
}

/// Whether a system user (or any user) of this name exists.
pub fn user_exists(name: &str) -> Fact<bool> {
    Fact::new(
        Script::of("id {} >/dev/null 2>&1", &[name]),
        Output::success,
    )
}

/// The installed Nomad's version (`1.10.5`), `None` when there is no binary.
pub fn nomad_version() -> Fact<Option<String>> {
    Fact::new(
        Cmd::sh(
            "if [ -x /usr/local/bin/nomad ]; then /usr/local/bin/nomad version 2>/dev/null | head -n1; fi",
        ),
        |out| parse_nomad_version(&first_line(out)),
    )
}

/// `Nomad v1.10.5` (possibly followed by more words) → `1.10.5`.
pub fn parse_nomad_version(line: &str) -> Option<String> {
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.strip_prefix('v'))
        .map(str::to_string)
}

/// Whether Docker has an image of this name.
pub fn docker_image_present(image: &str) -> Fact<bool> {
    Fact::new(
        Script::of("docker image inspect {} >/dev/null 2>&1", &[image]),
        Output::success,
    )
}

/// The PDS image in Docker and the size of an archive staged for loading.
pub fn pds_image(image: &str, staged: &str) -> Fact<super::pds_image::ImageFacts> {
    Fact::new(
        Script::of(
            "docker image inspect {} >/dev/null 2>&1 && echo present; \
             stat -c 'staged %s' {} 2>/dev/null; true",
            &[image, staged],
        ),
        |out| super::pds_image::ImageFacts::parse(&out.stdout_str()),
    )
}

/// The PDS data dir: the site id it is marked with, and whether it holds
/// anything else (the data of a PDS that ran there).
pub fn data_dir(id_path: &str, dir: &str) -> Fact<DataDir> {
    Fact::new(
        Script::of(
            "cat {} 2>/dev/null; echo; \
             [ -z \"$(find {} -mindepth 1 -maxdepth 1 ! -name .pdsup-site-id ! -name pds.env ! -name '.pdsup.*' 2>/dev/null | head -n1)\" ] && echo empty; true",
            &[id_path, dir],
        ),
        parse_data_dir,
    )
}

pub fn parse_data_dir(out: &Output) -> DataDir {
    let text = out.stdout_str();
    let mut lines = text.lines();
    let site_id = lines
        .next()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string);
    DataDir {
        site_id,
        empty: lines.any(|l| l == "empty"),
    }
}

/// The source address of the default route: a local lookup, no traffic.
pub fn default_route_ipv4() -> Fact<Option<String>> {
    Fact::new(
        Cmd::sh("ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'"),
        |out| {
            let ip = out.stdout_str().trim().to_string();
            (!ip.is_empty()).then_some(ip)
        },
    )
}

/// Whether sqlite3 answers `1` to `sql` on `db` (false without sqlite3).
pub fn sqlite_says_yes(db: &str, sql: &str) -> Fact<bool> {
    Fact::new(
        Script::of("command -v sqlite3 >/dev/null && sqlite3 {} {}", &[db, sql]),
        |out| out.success() && out.stdout_str().trim() == "1",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::tests::output;

    #[test]
    fn nomad_versions_parse_from_nomad_and_the_double() {
        let table = [
            (
                Some(0),
                "Nomad v1.10.5\nBuildDate 2025-09-09T14:36:06Z\n",
                Some("1.10.5"),
            ),
            (
                Some(0),
                "Nomad v1.10.5 (pdsup test double, not HashiCorp Nomad)\n",
                Some("1.10.5"),
            ),
            (Some(0), "Nomad v1.9.0-beta.1\n", Some("1.9.0-beta.1")),
            (Some(0), "", None),
            (Some(127), "", None),
            (Some(0), "Nomad\n", None),
            (Some(0), "Nomad 1.10.5\n", None),
            (Some(0), "\u{fffd}\u{fffd}garbled\n", None),
        ];
        for (status, stdout, want) in table {
            let got = (nomad_version().parse)(&output(status, stdout));
            assert_eq!(got.as_deref(), want, "{stdout:?}");
        }
    }

    #[test]
    fn os_releases_parse_from_real_files() {
        let table = [
            (
                "id=debian\nversion_id=13\ncodename=trixie\narch=amd64\n",
                ("debian", "13", "trixie", "amd64"),
            ),
            (
                "id=ubuntu\nversion_id=24.04\ncodename=noble\narch=arm64\n",
                ("ubuntu", "24.04", "noble", "arm64"),
            ),
            // Debian testing has no VERSION_ID; a container may lack dpkg.
            (
                "id=debian\nversion_id=\ncodename=forky\narch=\n",
                ("debian", "", "forky", ""),
            ),
            ("", ("", "", "", "")),
            ("garbage\n=\nid\n", ("", "", "", "")),
        ];
        for (stdout, (id, version_id, codename, arch)) in table {
            let os = (os_release().parse)(&output(Some(0), stdout));
            assert_eq!(
                (
                    os.id.as_str(),
                    os.version_id.as_str(),
                    os.codename.as_str(),
                    os.arch.as_str()
                ),
                (id, version_id, codename, arch),
                "{stdout:?}"
            );
        }
    }

    #[test]
    fn the_os_release_probe_runs_here() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&os_release().cmd.script)
            .output()
            .unwrap();
        let os = OsRelease::parse(&String::from_utf8_lossy(&out.stdout));
        assert!(!os.id.is_empty(), "{out:?}");
        assert!(!os.arch.is_empty(), "{out:?}");
    }

    #[test]
    fn data_dirs_parse_with_and_without_an_id() {
        let table = [
            ("0123abcd\n\nempty\n", Some("0123abcd"), true),
            ("0123abcd\n\n", Some("0123abcd"), false),
            ("\nempty\n", None, true),
            ("\n", None, false),
            ("", None, false),
            ("  \nempty\n", None, true),
        ];
        for (stdout, id, empty) in table {
            let dir = parse_data_dir(&output(Some(0), stdout));
            assert_eq!(dir.site_id.as_deref(), id, "{stdout:?}");
            assert_eq!(dir.empty, empty, "{stdout:?}");
        }
    }

    #[test]
    fn the_data_dir_probe_runs_here() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join(".pdsup-site-id");
        let read = || {
            let fact = data_dir(id.to_str().unwrap(), dir.path().to_str().unwrap());
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&fact.cmd.script)
                .output()
                .unwrap();
            parse_data_dir(&output(
                out.status.code().map(|c| c as u32),
                &String::from_utf8_lossy(&out.stdout),
            ))
        };
        assert_eq!(
            read(),
            DataDir {
                site_id: None,
                empty: true
            }
        );
        std::fs::write(&id, "abc\n").unwrap();
        assert_eq!(
            read(),
            DataDir {
                site_id: Some("abc".into()),
                empty: true
            }
        );
        std::fs::write(dir.path().join("account.sqlite"), "").unwrap();
        assert_eq!(
            read(),
            DataDir {
                site_id: Some("abc".into()),
                empty: false
            }
        );
    }

    #[test]
    fn default_routes_give_an_address_or_none() {
        let table = [
            ("203.0.113.7\n", Some("203.0.113.7")),
            ("10.0.0.5", Some("10.0.0.5")),
            ("", None),
            ("\n  \n", None),
        ];
        for (stdout, want) in table {
            let got = (default_route_ipv4().parse)(&output(Some(0), stdout));
            assert_eq!(got.as_deref(), want, "{stdout:?}");
        }
    }

    #[test]
    fn sqlite_answers_only_a_plain_one_as_yes() {
        let fact = sqlite_says_yes("/srv/nomad/pds/account.sqlite", "select 1 where did = 'x';");
        assert_eq!(
            fact.cmd.script,
            "command -v sqlite3 >/dev/null && sqlite3 /srv/nomad/pds/account.sqlite \"select 1 where did = 'x';\""
        );
        let table = [
            (Some(0), "1\n", true),
            (Some(0), "0\n", false),
            (Some(0), "", false),
            (Some(1), "", false),    // no sqlite3
            (Some(1), "1\n", false), // an error after a row
            (None, "1\n", false),    // the connection dropped
            (Some(0), "11\n", false),
        ];
        for (status, stdout, want) in table {
            assert_eq!(
                (fact.parse)(&output(status, stdout)),
                want,
                "{status:?} {stdout:?}"
            );
        }
    }

    #[test]
    fn users_and_images_are_exit_statuses() {
        for fact in [
            user_exists("nomad"),
            docker_image_present("ghcr.io/bluesky-social/pds:0.4"),
        ] {
            assert!((fact.parse)(&output(Some(0), "")));
            assert!(!(fact.parse)(&output(Some(1), "")));
            assert!(!(fact.parse)(&output(None, "")));
        }
        assert_eq!(user_exists("nomad").cmd.script, "id nomad >/dev/null 2>&1");
    }

    #[test]
    fn lock_holders_and_dpkg_status_go_through_their_parsers() {
        let out = output(
            Some(0),
            "file 393228 /var/lib/dpkg/lock-frontend\nlock 1: POSIX  ADVISORY  WRITE 4321 00:2b:393228 0 EOF\ncomm 4321 apt-get\n",
        );
        let holder = (dpkg_lock_holder().parse)(&out).expect("a holder");
        assert_eq!(holder.pid, Some(4321));
        assert_eq!((dpkg_lock_holder().parse)(&output(Some(0), "")), None);
        let dpkg = (dpkg_status(&["caddy"]).parse)(&output(
            Some(0),
            "status caddy install ok installed\n",
        ));
        assert!(dpkg.installed("caddy"));
        assert!(!(dpkg_status(&["caddy"]).parse)(&output(Some(0), "garbled")).installed("caddy"));
    }
}
