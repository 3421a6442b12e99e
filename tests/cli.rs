//! The binary's command line, without any droplet: help, `plan` for a fresh
//! droplet, `--json`, and bad input refused before anything happens.

use std::path::Path;
use std::process::{Command, Output};

fn pdsup(args: &[&str], state_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdsup"))
        .args(args)
        .env("PDSUP_STATE_DIR", state_dir)
        .env_remove("PDSUP_HOSTNAME")
        .output()
        .expect("run pdsup")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The exit code of bad input (README "Exit codes").
const BAD_INPUT: i32 = 2;

const SITE: &[&str] = &[
    "--hostname",
    "pds.example.com",
    "--email",
    "me@example.com",
    "--handle",
    "alice",
];

#[test]
fn help_teaches_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let out = pdsup(&["--help"], dir.path());
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "pdsup up root@203.0.113.7",
        "pdsup plan",
        "--local",
        "Examples:",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    let up = text(&pdsup(&["up", "--help"], dir.path()).stdout);
    for flag in [
        "--proxy",
        "--docker-source",
        "--nomad-zip",
        "--pds-image-archive",
        "--accept-new-host-key",
        "--dry-run",
    ] {
        assert!(up.contains(flag), "up --help lacks {flag}");
    }
    let version = text(&pdsup(&["--version"], dir.path()).stdout);
    assert!(version.starts_with("pdsup "), "{version}");
}

#[test]
fn plan_without_droplet_shows_every_step_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["plan"];
    args.extend_from_slice(SITE);
    let out = pdsup(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    for needle in [
        "== preflight ==",
        "in one apt transaction, Docker Engine from Docker's apt repository",
        // A fresh droplet is planned as Ubuntu 24.04 on amd64.
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable",
        "trust Docker's apt signing key 9DC858229FC7DD38854AE2D88D81803C0EBFCD88",
        "install Nomad 1.10.5",
        "host_volume \"pds\"",
        "write the IO ingress for pds.example.com",
        "generate the PDS secrets",
        "submit the pds job (ghcr.io/bluesky-social/pds:0.4)",
        "PDS_JWT_SECRET",
        "create the account alice.pds.example.com",
        // IO's current block, and its DNS: the handle's TXT record, no wildcard.
        "ingress \"pds.example.com\" {",
        "_atproto.alice.pds.example.com",
    ] {
        assert!(plan.contains(needle), "plan lacks {needle:?}:\n{plan}");
    }
    assert!(
        !plan.contains("*.pds.example.com"),
        "IO's plan has a wildcard record:\n{plan}"
    );
    // Secrets are masked, and a plan saves nothing.
    assert!(plan.contains("PDS_JWT_SECRET") && plan.contains("********"));
    assert!(!plan
        .lines()
        .any(|l| l.contains("PDS_JWT_SECRET") && !l.contains("********")));
    assert!(!dir.path().join("sites").exists(), "plan wrote state");
}

#[test]
fn up_dry_run_without_droplet_is_the_fresh_plan() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["up", "--dry-run"];
    args.extend_from_slice(SITE);
    let out = pdsup(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut plan_args = vec!["plan"];
    plan_args.extend_from_slice(SITE);
    let fresh = text(&pdsup(&plan_args, dir.path()).stdout);
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.contains("********"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&text(&out.stdout)), strip(&fresh));
    assert!(fresh.contains("install Nomad 1.10.5"));
    assert!(!dir.path().join("sites").exists(), "a dry run wrote state");
    // Without --dry-run, DEST (or --local) is required.
    let mut real = vec!["up"];
    real.extend_from_slice(SITE);
    let out = pdsup(&real, dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn plan_json_lists_the_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["plan", "--json", "--proxy", "caddy"];
    args.extend_from_slice(SITE);
    let out = pdsup(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let steps = doc["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "preflight",
            "exposure",
            "packages",
            "docker",
            "docker_logs",
            "nomad",
            "nomad_config",
            "proxy",
            "secrets",
            "pds_image",
            "pds_job",
            "account",
            "dns"
        ]
    );
    // Caddy comes in the packages step's one apt transaction; the proxy step configures it.
    let packages = steps[2]["changes"].as_array().unwrap();
    assert!(
        packages
            .iter()
            .any(|c| c.as_str().unwrap().contains("caddy (proxy)")),
        "{packages:?}"
    );
    let proxy = steps[7]["changes"].as_array().unwrap();
    assert!(
        proxy.iter().any(|c| c
            .as_str()
            .unwrap()
            .starts_with("write /etc/caddy/Caddyfile")),
        "{proxy:?}"
    );
}

/// `pdsup up` on a valid site with one flag's value replaced (or flags added).
fn up_args(replace: (&str, &str), extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["up", "root@203.0.113.7"]
        .iter()
        .chain(SITE)
        .map(|s| s.to_string())
        .collect();
    let (flag, value) = replace;
    if flag == "DEST" {
        args[1] = value.to_string();
    } else if let Some(i) = args.iter().position(|a| a == flag) {
        args[i + 1] = value.to_string();
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn bad_input_is_refused_before_anything_happens() {
    let dir = tempfile::tempdir().unwrap();
    let none = ("", "");
    let files = tempfile::tempdir().unwrap();
    let not_a_key = files.path().join("docker.asc");
    std::fs::write(
        &not_a_key,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbroken\n",
    )
    .unwrap();
    let secret_key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/docker-apt/mirror-key.secret.asc"
    );
    // A private key given where the ACME CA's root certificate belongs.
    let not_pem = files.path().join("root-ca.pem");
    std::fs::write(
        &not_pem,
        "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let empty = files.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            up_args(
                none,
                &[
                    "--proxy",
                    "caddy",
                    "--acme-ca-root",
                    not_pem.to_str().unwrap(),
                ],
            ),
            "holds a private key",
        ),
        (
            up_args(
                none,
                &[
                    "--proxy",
                    "caddy",
                    "--acme-ca-root",
                    empty.to_str().unwrap(),
                ],
            ),
            "no PEM certificate",
        ),
        (
            up_args(("--hostname", "pds_bad.example.com"), &[]),
            "invalid hostname",
        ),
        (up_args(("--handle", "al"), &[]), "invalid handle"),
        (up_args(("--email", "me@"), &[]), "invalid email"),
        (up_args(("DEST", "root@203.0.113.7:notaport"), &[]), "port"),
        (
            up_args(none, &["-i", "/nonexistent/key"]),
            "/nonexistent/key",
        ),
        (
            up_args(none, &["--nomad-zip", "/nonexistent.zip"]),
            "--nomad-zip",
        ),
        (
            up_args(none, &["--docker-apt-url", "ftp://mirror.example/linux"]),
            "--docker-apt-url: invalid URL \"ftp://mirror.example/linux\": only http:// and https:// are supported",
        ),
        (
            up_args(
                none,
                &[
                    "--docker-apt-url",
                    "https://download.docker.com/linux/debian",
                ],
            ),
            "ends with /debian: give the base without the OS",
        ),
        (
            up_args(none, &["--docker-apt-url", "https://mirror.example/x'y"]),
            "has no place in an apt repository URL",
        ),
        (
            up_args(none, &["--docker-apt-key", "/nonexistent/docker.asc"]),
            "--docker-apt-key /nonexistent/docker.asc: cannot read it",
        ),
        (
            up_args(none, &["--docker-apt-key", not_a_key.to_str().unwrap()]),
            "not an ASCII-armored OpenPGP public key",
        ),
        (
            up_args(none, &["--docker-apt-key", secret_key]),
            "holds a secret key",
        ),
        (
            up_args(none, &["--pds-env", "PDS_JWT_SECRET=x"]),
            "cannot set PDS_JWT_SECRET",
        ),
        // A value that would add a line to pds.env.
        (
            up_args(none, &["--pds-env", "PDS_FOO=a\nPDS_JWT_SECRET=evil"]),
            "--pds-env PDS_FOO",
        ),
        (
            up_args(none, &["--pds-env", "PDS_FOO=a\rb"]),
            "--pds-env PDS_FOO",
        ),
        (
            up_args(none, &["--pds-env", "PDS_A=1", "--pds-env", "PDS_A=2"]),
            "PDS_A twice",
        ),
        (
            up_args(none, &["--timezone", "UTC\nPDS_JWT_SECRET=evil"]),
            "--timezone",
        ),
        (
            up_args(none, &["--timezone", "Europe/ Berlin"]),
            "--timezone",
        ),
        (
            up_args(none, &["--plc-url", "ftp://plc.example.com"]),
            "--plc-url",
        ),
        (
            up_args(none, &["--acme-ca", "https://ca.example.com/dir }"]),
            "--acme-ca",
        ),
        (
            up_args(none, &["--pds-image", "example/pds:1\"; reboot"]),
            "--pds-image",
        ),
        (up_args(none, &["--io-image", "Example/IO"]), "--io-image"),
        (
            up_args(("--email", "\"me\nx\"@example.com"), &[]),
            "invalid email",
        ),
        (
            ["up", "root@203.0.113.7", "--hostname", "pds.example.com"]
                .map(String::from)
                .to_vec(),
            "--email is required",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = pdsup(&args, dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(BAD_INPUT), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in:\n{stderr}"
        );
        // Refused before any connection: 203.0.113.7 (TEST-NET-3) is never dialled,
        // and nothing is saved.
        assert!(
            !stderr.contains("connect"),
            "{args:?} tried to connect: {stderr}"
        );
        assert!(!dir.path().join("sites").exists(), "{args:?} wrote state");
    }
}

const JWT: &str = "0123456789abcdef0123456789abcdef";
const ADMIN: &str = "fedcba9876543210fedcba9876543210";
const ROTATION: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// A site dir holding `files`, as (name, contents).
fn site_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("sites/pds.example.com");
    std::fs::create_dir_all(&site).unwrap();
    for (name, contents) in files {
        std::fs::write(site.join(name), contents).unwrap();
    }
    dir
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

fn good_env() -> String {
    format!("PDS_HOSTNAME=pds.example.com\nPDS_JWT_SECRET={JWT}\nPDS_ADMIN_PASSWORD={ADMIN}\nPDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX={ROTATION}\n")
}

/// What is broken, the site's files (name, contents), and what the error must say.
type BrokenState<'a> = (&'a str, Vec<(&'a str, String)>, Vec<&'a str>);

#[test]
fn broken_local_state_is_refused_before_connecting() {
    let env = good_env();
    let cases: Vec<BrokenState> = vec![
        (
            "the old splice: a second PDS_JWT_SECRET after an open quote",
            vec![(
                "pds.env",
                format!("{env}PDS_FOO=\"a\nPDS_JWT_SECRET=evil\"\n"),
            )],
            vec![
                "pds.env line 5",
                "never closed",
                "restore it from your backup",
            ],
        ),
        (
            "a secret defined twice",
            vec![("pds.env", format!("{env}PDS_JWT_SECRET=evil\n"))],
            vec![
                "pds.env line 5",
                "PDS_JWT_SECRET is defined a second time",
                "backup",
            ],
        ),
        (
            "a line bash would read differently",
            vec![("pds.env", format!("{env}PDS_X=$(reboot)\n"))],
            vec!["pds.env line 5", "PDS_X", "backup"],
        ),
        (
            "a missing secret",
            vec![(
                "pds.env",
                env.replace(&format!("PDS_ADMIN_PASSWORD={ADMIN}\n"), ""),
            )],
            vec![
                "pds.env is incomplete",
                "PDS_ADMIN_PASSWORD is missing",
                "backup",
            ],
        ),
        (
            "site.toml that is not TOML",
            vec![(
                "site.toml",
                "hostname = \"pds.example.com\"\nemail = me@example.com\n".into(),
            )],
            vec!["site.toml line 2", "cannot be read", "backup"],
        ),
        (
            "a time zone that would add a line to pds.env",
            vec![(
                "site.toml",
                "hostname = \"pds.example.com\"\ntimezone = \"UTC\\nPDS_JWT_SECRET=evil\"\n".into(),
            )],
            vec!["site.toml line 2", "timezone", "backup"],
        ),
        (
            "a saved --pds-env with a newline",
            vec![(
                "site.toml",
                "hostname = \"pds.example.com\"\npds_env = [\"PDS_FOO=a\\nPDS_JWT_SECRET=evil\"]\n"
                    .into(),
            )],
            vec!["site.toml line 2", "pds_env", "line break"],
        ),
        (
            "a saved image that is no image reference",
            vec![(
                "site.toml",
                "hostname = \"pds.example.com\"\n\npds_image = \"x; reboot\"\n".into(),
            )],
            vec!["site.toml line 3", "pds_image", "image reference"],
        ),
        (
            "an account but no pds.env",
            vec![(
                "site.toml",
                "hostname = \"pds.example.com\"\naccount_did = \"did:plc:abc\"\n".into(),
            )],
            vec![
                "pds.env is missing",
                "did:plc:abc",
                "Restore it from your backup",
            ],
        ),
    ];
    for (what, files, needles) in &cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let dir = site_with(&files);
        let before = snapshot(dir.path());
        for command in [up_args(("", ""), &[]), {
            let mut plan: Vec<String> = vec!["plan".into()];
            plan.extend(SITE.iter().map(|s| s.to_string()));
            plan
        }] {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let out = pdsup(&args, dir.path());
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(BAD_INPUT), "{what}: {stderr}");
            for needle in needles {
                assert!(
                    stderr.contains(needle),
                    "{what}: expected {needle:?} in:\n{stderr}"
                );
            }
            assert!(
                !stderr.contains("connect"),
                "{what}: tried to connect: {stderr}"
            );
            assert!(!stderr.contains("delete"), "{what}: {stderr}");
            let in_env_file = files.iter().any(|(name, _)| *name == "pds.env");
            let secrets: &[&str] = if in_env_file {
                &[JWT, ADMIN, ROTATION, "evil"]
            } else {
                &[JWT, ADMIN, ROTATION]
            };
            for secret in secrets {
                assert!(
                    !stderr.contains(secret),
                    "{what}: a secret in the error: {stderr}"
                );
            }
            assert_eq!(snapshot(dir.path()), before, "{what}: the state changed");
        }
    }
}

#[test]
fn a_good_site_with_tricky_values_plans_and_keeps_its_files() {
    // The control: the same kind of state, readable, is accepted (plan only).
    let env = format!(
        "{}PDS_EMAIL_FROM_ADDRESS=\"Admin \\\"x\\\" <a@b.co> \\$HOME `\"\n",
        good_env()
    )
    .replace('`', "\\`");
    let dir = site_with(&[
        ("pds.env", &env),
        (
            "site.toml",
            "hostname = \"pds.example.com\"\ntimezone = \"America/Argentina/Buenos_Aires\"\n",
        ),
    ]);
    let before = snapshot(dir.path());
    let mut args = vec!["plan"];
    args.extend_from_slice(SITE);
    let out = pdsup(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("America/Argentina/Buenos_Aires"));
    assert_eq!(snapshot(dir.path()), before);
}

/// A zip file with these entries (stored).
fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn a_nomad_zip_that_is_no_release_is_refused_before_connecting() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let zip = files.path().join("nomad_1.10.5_linux_amd64.zip");
    let zip_arg = zip.display().to_string();
    type Setup = fn(&Path);
    let cases: Vec<(&str, Setup, Vec<&str>)> = vec![
        (
            "a binary given as the zip",
            |p| std::fs::write(p, b"\x7fELF\x02\x01\x01 not a zip").unwrap(),
            vec!["is not a zip archive"],
        ),
        (
            "a zip of something else",
            |p| write_zip(p, &[("README.md", b"# hello\n")]),
            vec!["is a zip without a `nomad` file"],
        ),
        (
            "the release zip without its SHA256SUMS beside it",
            |p| write_zip(p, &[("nomad", b"\x7fELF")]),
            vec!["needs nomad_1.10.5_SHA256SUMS beside it"],
        ),
    ];
    for (what, setup, needles) in cases {
        setup(&zip);
        let args = up_args(("", ""), &["--nomad-zip", &zip_arg]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = pdsup(&args, state.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(BAD_INPUT), "{what}: {stderr}");
        for needle in needles.iter().chain([&zip_arg.as_str()]) {
            assert!(
                stderr.contains(needle),
                "{what}: expected {needle:?} in:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains("connect"),
            "{what}: tried to connect: {stderr}"
        );
        assert!(!state.path().join("sites").exists(), "{what}: wrote state");
    }
    // `plan` checks it too, without any droplet.
    let mut args = vec!["plan", "--nomad-zip", &zip_arg];
    args.extend_from_slice(SITE);
    let out = pdsup(&args, state.path());
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("beside it"));
}

/// `pdsup plan` for a fresh droplet with these PDSUP_* variables set.
fn plan_with_env(args: &[&str], vars: &[(&str, &str)], state_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdsup"))
        .arg("plan")
        .args(args)
        .env("PDSUP_STATE_DIR", state_dir)
        .env_remove("PDSUP_HOSTNAME")
        .envs(vars.iter().copied())
        .output()
        .expect("run pdsup")
}

#[test]
fn settings_come_from_pdsup_variables_and_a_flag_wins() {
    let dir = tempfile::tempdir().unwrap();
    // Every value from the environment.
    let out = plan_with_env(
        &[],
        &[
            ("PDSUP_HOSTNAME", "pds.example.com"),
            ("PDSUP_EMAIL", "me@example.com"),
            ("PDSUP_HANDLE", "alice"),
            ("PDSUP_PLC_URL", "http://10.0.0.1:2582"),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("http://10.0.0.1:2582"));
    // A bad value names the variable it came from.
    let out = plan_with_env(SITE, &[("PDSUP_PLC_URL", "ftp://plc.example")], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("PDSUP_PLC_URL: "), "{stderr}");
    // The flag wins over the variable.
    let mut args = SITE.to_vec();
    args.extend(["--plc-url", "http://10.0.0.2:2582"]);
    let out = plan_with_env(&args, &[("PDSUP_PLC_URL", "ftp://plc.example")], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("http://10.0.0.2:2582"));
    assert!(!dir.path().join("sites").exists(), "plan wrote state");
}

/// The README's "Exit codes" table, row by row, is the code's table: it can never drift.
#[test]
fn the_readme_documents_every_exit_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = readme
        .split("\n## Exit codes\n")
        .nth(1)
        .expect("README.md has an \"## Exit codes\" section");
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<(u8, String, String)> = section
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2) // the header and its rule
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "README exit-code row {l:?}");
            let code = cells[0].parse().unwrap_or_else(|_| panic!("row {l:?}"));
            (
                code,
                cells[1].trim_matches('`').to_string(),
                cells[2].to_string(),
            )
        })
        .collect();
    let mut expected = vec![(0u8, String::new(), "success".to_string())];
    expected.extend(
        pdsup::error::EXIT_CODES
            .iter()
            .map(|(kind, code, meaning)| (*code, kind.name().to_string(), meaning.to_string())),
    );
    assert_eq!(rows, expected);
}

/// A DEST where nothing listens: the SSH kind's exit code, before any state is saved.
#[test]
fn an_unreachable_droplet_exits_with_the_ssh_code() {
    let dir = tempfile::tempdir().unwrap();
    // Bind, note the port, and close: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dest = format!("root@127.0.0.1:{port}");
    let mut args = vec!["up", &dest];
    args.extend_from_slice(SITE);
    let out = pdsup(&args, dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(pdsup::error::ErrorKind::Ssh.exit_code())),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(4), "the README's code for ssh");
    assert!(stderr.contains("cannot reach 127.0.0.1"), "{stderr}");
    assert!(!dir.path().join("sites").exists(), "state was saved");
}

/// With --json an error is one object that names its kind, step, hint and exit code.
#[test]
fn a_json_error_carries_its_kind_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = pdsup(
        &[
            "up",
            "root@203.0.113.7",
            "--hostname",
            "pds_bad.example.com",
            "--email",
            "me@example.com",
            "--handle",
            "alice",
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(BAD_INPUT));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            text(&out.stdout)
        )
    });
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["kind"], "bad_input", "{report}");
    assert_eq!(report["exit_code"], BAD_INPUT, "{report}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid hostname \"pds_bad.example.com\"")),
        "{report}"
    );
    // Refused before any step ran, and nothing to add to the message.
    assert!(report["step"].is_null(), "{report}");
    assert!(report["hint"].is_null(), "{report}");
    assert!(report["caused_by"].is_array(), "{report}");
}

#[test]
fn day_two_commands_refuse_bad_input_before_connecting() {
    let empty = tempfile::tempdir().unwrap();
    for args in [
        &["status"][..],
        &["account", "list"],
        &["logs"],
        &["request-crawl", "--dry-run"],
    ] {
        let out = pdsup(args, empty.path());
        assert_eq!(out.status.code(), Some(BAD_INPUT), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains("run `pdsup up` first"), "{args:?}: {err}");
    }
    let out = pdsup(&["logs", "--since", "10y"], empty.path());
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{out:?}");
    assert!(text(&out.stderr).contains("unknown unit"), "{out:?}");
    let out = pdsup(&["request-crawl", "ftp://relay.example.com"], empty.path());
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{out:?}");
    let out = pdsup(
        &[
            "account",
            "delete",
            "not a handle!",
            "--hostname",
            "pds.example.com",
        ],
        empty.path(),
    );
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{out:?}");
}

#[test]
fn completions_and_the_man_page_come_from_the_same_flags() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = pdsup(&["completions", shell], dir.path());
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = text(&out.stdout);
        for word in ["status", "request-crawl", "--follow"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let man = pdsup(&["man"], dir.path());
    assert!(man.status.success(), "{man:?}");
    let page = text(&man.stdout);
    assert!(page.contains(".TH pdsup 1"), "{page}");
    assert!(page.replace("\\-", "-").contains("request-crawl"), "{page}");
}

/// A fleet file's problems, each with its line, and a site whose settings do
/// not resolve: refused before any droplet is contacted, nothing saved.
#[test]
fn a_fleet_file_is_checked_whole_before_any_droplet() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workshop.toml");
    std::fs::write(
        &file,
        "[settings]\nproxy = 1\ncolour = \"red\"\n\n[[sites]]\nhostname = \"t1.example.com\"\n",
    )
    .unwrap();
    let path = file.display().to_string();
    let out = pdsup(&["fleet", "up", &path], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{stderr}");
    for want in [
        "workshop.toml has 3 problems; nothing was contacted",
        "workshop.toml:2: proxy must be a string",
        "workshop.toml:3: unknown key \"colour\"",
        "workshop.toml:5: this site has no dest",
    ] {
        assert!(stderr.contains(want), "{want:?} not in {stderr}");
    }
    // A value that parses as TOML but not as its setting names its line.
    std::fs::write(
        &file,
        "[settings]\nemail = \"me@example.com\"\nhandle = \"org\"\n\n[[sites]]\nhostname = \"t1.example.com\"\ndest = \"root@127.0.0.1:1\"\nplc_url = \"ftp://plc\"\n",
    )
    .unwrap();
    let out = pdsup(&["fleet", "plan", &path], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{stderr}");
    assert!(
        stderr.contains("plc_url in ") && stderr.contains("workshop.toml line 8"),
        "{stderr}"
    );
    assert!(!dir.path().join("sites").exists(), "state was saved");
    assert!(
        !dir.path().join("workshop.out").exists(),
        "logs were started"
    );
}

/// Unreachable droplets fail their own sites only; the table names each and
/// why, and the exit code says a site failed.
#[test]
fn a_fleet_plan_names_each_site_it_could_not_reach() {
    let dir = tempfile::tempdir().unwrap();
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (p1, p2) = (port(1), port(2));
    let file = dir.path().join("workshop.toml");
    std::fs::write(
        &file,
        format!(
            "[settings]\nemail = \"me@example.com\"\nhandle = \"org\"\n\n\
             [[sites]]\nhostname = \"t1.example.com\"\ndest = \"root@127.0.0.1:{p1}\"\n\n\
             [[sites]]\nhostname = \"t2.example.com\"\ndest = \"root@127.0.0.1:{p2}\"\n"
        ),
    )
    .unwrap();
    let out = pdsup(&["fleet", "plan", &file.display().to_string()], dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for site in ["t1.example.com", "t2.example.com"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(site))
            .unwrap_or_else(|| panic!("no line for {site}: {stdout}"));
        assert!(line.contains("FAILED: connecting to 127.0.0.1"), "{line}");
        let log = dir.path().join(format!("workshop.out/logs/{site}.log"));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("error: connecting to 127.0.0.1"), "{text}");
    }
    assert!(stderr.contains("2 of 2 sites failed"), "{stderr}");
}

/// A fleet file in `dir` of one site, t1.example.com, whose droplet's port
/// nothing listens on.
fn fleet_of_one_unreachable_site(dir: &Path) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.join("workshop.toml");
    std::fs::write(
        &file,
        format!(
            "[settings]\nemail = \"me@example.com\"\nhandle = \"org\"\n\n\
             [[sites]]\nhostname = \"t1.example.com\"\ndest = \"root@127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    file
}

/// With --json, a fleet whose sites failed prints one document: every site's
/// row and the error's kind and exit code.
#[test]
fn a_failed_fleet_in_json_is_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let file = fleet_of_one_unreachable_site(dir.path());
    let out = pdsup(
        &["fleet", "plan", &file.display().to_string(), "--json"],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {stdout}"));
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(doc["kind"], "other", "{doc}");
    assert_eq!(doc["exit_code"], 1, "{doc}");
    assert_eq!(doc["sites"][0]["hostname"], "t1.example.com", "{doc}");
    assert_eq!(doc["sites"][0]["ok"], false, "{doc}");
    let why = doc["sites"][0]["error"].as_str().unwrap_or_default();
    assert!(why.starts_with("connecting to 127.0.0.1"), "{doc}");
}

#[test]
fn backup_and_restore_refuse_bad_input_before_connecting() {
    // No passphrase on a non-terminal: refused, naming both ways to give one.
    let env = good_env();
    let dir = site_with(&[
        ("pds.env", &env),
        (
            "site.toml",
            "hostname = \"pds.example.com\"\nemail = \"me@example.com\"\nhandle = \"alice\"\ndestination = \"root@127.0.0.1:1\"\n",
        ),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_pdsup"))
        .args(["backup"])
        .env("PDSUP_STATE_DIR", dir.path())
        .env_remove("PDSUP_HOSTNAME")
        .env_remove("PDSUP_BACKUP_PASSPHRASE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("--passphrase-file") && err.contains("PDSUP_BACKUP_PASSPHRASE"),
        "{err}"
    );
    // An empty passphrase file is no passphrase.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = pdsup(
        &["backup", "--passphrase-file", empty.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{}", text(&out.stderr));

    // A file that is no backup, and a cut one: refused before any connection,
    // and the state dir is left as it was.
    let before = snapshot(dir.path());
    let junk = dir.path().join("junk.tar.gz");
    std::fs::write(&junk, b"not an archive").unwrap();
    let out = pdsup(
        &[
            "restore",
            junk.to_str().unwrap(),
            "root@127.0.0.1:1",
            "--hostname",
            "pds.example.com",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not a readable pdsup backup"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(&junk).unwrap();
    assert_eq!(snapshot(dir.path()), before);

    let help = text(&pdsup(&["restore", "--help"], dir.path()).stdout);
    for flag in [
        "--force",
        "--passphrase-file",
        "--accept-new-host-key",
        "--proxy",
    ] {
        assert!(help.contains(flag), "restore --help lacks {flag}");
    }
}

#[test]
fn scheduled_backups_refuse_bad_input_before_connecting() {
    let env = good_env();
    let dir = site_with(&[
        ("pds.env", &env),
        (
            "site.toml",
            "hostname = \"pds.example.com\"\nemail = \"me@example.com\"\nhandle = \"alice\"\ndestination = \"root@127.0.0.1:1\"\n",
        ),
    ]);
    let before = snapshot(dir.path());
    for (args, expected) in [
        (vec!["backup", "--schedule"], "--schedule needs --repo"),
        (
            vec!["backup", "--schedule", "--repo", "/srv/restic"],
            "sftp:user@host:/path",
        ),
        (
            vec![
                "backup",
                "--schedule",
                "--repo",
                "sftp:u@h:/p",
                "--keep-daily",
                "0",
                "--keep-weekly",
                "0",
            ],
            "would keep no snapshot",
        ),
        (
            vec![
                "backup",
                "--schedule",
                "--repo",
                "s3:https://fra1.digitaloceanspaces.com/b",
            ],
            "--s3-credentials-file",
        ),
        (vec!["backup", "--list"], "records no scheduled backup"),
        (
            vec![
                "restore",
                "--snapshot",
                "latest",
                "root@127.0.0.1:1",
                "--hostname",
                "pds.example.com",
            ],
            "records no scheduled backup",
        ),
        (
            vec![
                "restore",
                "--snapshot",
                "not-an-id",
                "root@127.0.0.1:1",
                "--hostname",
                "pds.example.com",
            ],
            "give a snapshot id",
        ),
    ] {
        let out = pdsup(&args, dir.path());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(BAD_INPUT), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // `--list` needs no snapshot of the site to refuse; nothing was written.
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn restore_refuses_a_relay_that_is_no_url_before_reading_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let out = pdsup(
        &[
            "restore",
            "/nonexistent/backup.tar.gz",
            "root@127.0.0.1:1",
            "--hostname",
            "pds.example.com",
            "--relay",
            "bsky.network",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("bsky.network"), "{err}");
    let help = text(&pdsup(&["restore", "--help"], dir.path()).stdout);
    assert!(
        help.contains("--relay <URL>"),
        "restore --help lacks --relay"
    );
}

#[test]
fn upgrade_and_rollback_refuse_bad_input_before_connecting() {
    // The droplet's address is a closed port: any connection would fail with the SSH code.
    let dir = site_with(&[
        ("pds.env", &good_env()),
        (
            "site.toml",
            "hostname = \"pds.example.com\"\nemail = \"a@example.com\"\nhandle = \"alice\"\n\
             destination = \"root@127.0.0.1:1\"\n",
        ),
    ]);
    let before = snapshot(dir.path());
    for (args, says) in [
        (
            &["upgrade", "--nomad", "latest"][..],
            "expected a Nomad version",
        ),
        (&["upgrade", "--to", "newest"], "expected a PDS version"),
        (&["rollback", "--nomad"], "no previous Nomad version"),
        (&["rollback"], "no previous PDS release"),
    ] {
        let out = pdsup(args, dir.path());
        assert_eq!(out.status.code(), Some(BAD_INPUT), "{args:?}: {out:?}");
        assert!(text(&out.stderr).contains(says), "{args:?}: {out:?}");
    }
    // --nomad upgrades Nomad, not the PDS: it takes no PDS image.
    let out = pdsup(
        &["upgrade", "--nomad", "1.10.6", "--to", "0.4.1"],
        dir.path(),
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("cannot be used with"), "{out:?}");
    assert_eq!(snapshot(dir.path()), before);
}

/// A fleet's site that pdsup never reached (no site.toml) has nothing of
/// pdsup's on it: `fleet down` says so and succeeds; `fleet status` and
/// `fleet backup` fail for it, saying what to run. None of them contacts the
/// droplet (nothing listens on its port).
#[test]
fn a_fleet_site_never_reached_has_nothing_to_take_down() {
    let dir = tempfile::tempdir().unwrap();
    let file = fleet_of_one_unreachable_site(dir.path());
    let file = file.display().to_string();
    let line = |out: &Output| {
        let stdout = text(&out.stdout);
        stdout
            .lines()
            .find(|l| l.starts_with("t1.example.com"))
            .unwrap_or_else(|| panic!("no line for t1.example.com: {stdout}{}", text(&out.stderr)))
            .to_string()
    };
    let down = pdsup(&["fleet", "down", &file], dir.path());
    assert_eq!(down.status.code(), Some(0), "{}", text(&down.stderr));
    assert!(
        line(&down).contains("nothing deployed: pdsup never reached it"),
        "{}",
        line(&down)
    );
    let status = pdsup(&["fleet", "status", &file], dir.path());
    assert_eq!(status.status.code(), Some(1), "{}", text(&status.stderr));
    let failed = line(&status);
    assert!(
        failed.contains("FAILED: not set up: pdsup never reached it")
            && failed.contains("pdsup fleet up FILE --only t1.example.com"),
        "{failed}"
    );
    let passphrase = dir.path().join("passphrase");
    std::fs::write(&passphrase, "secret words\n").unwrap();
    let backup = pdsup(
        &[
            "fleet",
            "backup",
            &file,
            "--passphrase-file",
            &passphrase.display().to_string(),
        ],
        dir.path(),
    );
    assert_eq!(backup.status.code(), Some(1), "{}", text(&backup.stderr));
    assert!(
        line(&backup).contains("FAILED: not set up"),
        "{}",
        line(&backup)
    );
    assert!(
        !dir.path().join("sites/t1.example.com/site.toml").exists(),
        "a run saved state for a site it never reached"
    );
}
