//! Each module's error becomes the crate's one error with the right kind (and so
//! the right exit code), keeps its text, and can be found again by its type.

use std::path::PathBuf;

use pdsup::error::{Error, ErrorKind};
use pdsup::host::dest::DestinationError;
use pdsup::host::ssh::SshError;
use pdsup::host::CommandFailed;
use pdsup::inputs::InputError;
use pdsup::nomad::api::{ApiError, JobFailed, StartFailure, TaskEvent};
use pdsup::nomad::config::ConfigError;
use pdsup::nomad::release::ReleaseError;
use pdsup::pds::xrpc::XrpcError;
use pdsup::state::env_file::EnvFileError;

/// Converts `e`, checks its kind, and that the typed error is still reachable
/// and its text unchanged.
fn assert_kind<E>(e: E, kind: ErrorKind)
where
    E: std::error::Error + Send + Sync + 'static,
    Error: From<E>,
{
    let text = e.to_string();
    let debug = format!("{e:?}");
    let err = Error::from(e);
    assert_eq!(err.kind(), kind, "{debug}");
    assert_eq!(err.to_string(), text);
    assert!(err.downcast_ref::<E>().is_some(), "{debug} lost its type");
    assert_eq!(err.exit_code(), kind.exit_code());
}

#[test]
fn ssh_errors_tell_a_changed_host_key_and_a_broken_pin_file_from_login_problems() {
    let path = PathBuf::from("/home/me/.ssh/id_ed25519");
    let login = [
        SshError::Unreachable {
            addr: "203.0.113.7:22".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        },
        SshError::Handshake {
            addr: "203.0.113.7:22".into(),
            reason: "no answer".into(),
        },
        SshError::AuthFailed {
            user: "root".into(),
            host: "203.0.113.7".into(),
            tried: vec![],
        },
        SshError::KeyUnreadable {
            path: path.clone(),
            reason: "not a key".into(),
        },
        SshError::WrongPassphrase { path: path.clone() },
        SshError::SudoNeedsPassword {
            user: "deploy".into(),
        },
        SshError::NoSudo {
            user: "deploy".into(),
        },
    ];
    for e in login {
        assert_kind(e, ErrorKind::Ssh);
    }
    assert_kind(
        SshError::HostKeyChanged {
            host: "203.0.113.7".into(),
            known_fingerprint: "SHA256:a".into(),
            offered_fingerprint: "SHA256:b".into(),
            pin_file: "/state/known_hosts".into(),
        },
        ErrorKind::HostKeyChanged,
    );
    assert_kind(
        SshError::PinFile {
            path: "/state/known_hosts".into(),
            reason: "line 1 is not a key".into(),
        },
        ErrorKind::Local,
    );
}

#[test]
fn input_errors_are_bad_input() {
    assert_kind(
        InputError::Hostname("x".into(), "it needs at least two labels"),
        ErrorKind::BadInput,
    );
    assert_kind(
        InputError::Email("me@".into(), "no domain".into()),
        ErrorKind::BadInput,
    );
    assert_kind(
        DestinationError {
            input: "root@host:x".into(),
            reason: "bad port".into(),
        },
        ErrorKind::BadInput,
    );
    assert_kind(
        EnvFileError {
            line: 5,
            why: "the double quote is never closed".into(),
        },
        ErrorKind::BadInput,
    );
}

#[test]
fn release_errors_are_bad_input_blocked_internal_or_other() {
    let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
    for e in [
        ReleaseError::Key("no key".into()),
        ReleaseError::NotAZip {
            path: "n.zip".into(),
            reason: "no EOCD".into(),
        },
        ReleaseError::NoNomadInZip {
            path: "n.zip".into(),
        },
        ReleaseError::MissingBesideZip {
            zip: "n.zip".into(),
            name: "SHA256SUMS".into(),
            path: "/x/SHA256SUMS".into(),
        },
        ReleaseError::ZipNotInSums {
            path: "n.zip".into(),
            sha256: "00".into(),
            version: "1.10.5".into(),
        },
        ReleaseError::Io {
            path: "n.zip".into(),
            source: io(),
        },
    ] {
        assert_kind(e, ErrorKind::BadInput);
    }
    assert_kind(
        ReleaseError::UnsupportedArch("riscv64".into()),
        ErrorKind::Blocked,
    );
    assert_kind(
        ReleaseError::HashicorpKeyMismatch { found: "AB".into() },
        ErrorKind::Internal,
    );
    for e in [
        ReleaseError::SignatureUnreadable("truncated".into()),
        ReleaseError::BadSignature {
            key: "K".into(),
            reason: "r".into(),
        },
        ReleaseError::MissingChecksum("nomad.zip".into()),
        ReleaseError::AmbiguousChecksum {
            file: "nomad.zip".into(),
        },
    ] {
        assert_kind(e, ErrorKind::Other);
    }
}

#[test]
fn a_nomad_hcl_that_cannot_be_edited_blocks_the_step() {
    assert_kind(
        ConfigError::Unsupported("a heredoc".into()),
        ErrorKind::Blocked,
    );
    assert_kind(
        ConfigError::Syntax {
            line: 1,
            column: 2,
            message: "unexpected }".into(),
            line_text: "}".into(),
        },
        ErrorKind::Blocked,
    );
}

#[test]
fn api_errors_are_api_and_a_request_timeout_is_timed_out() {
    assert_kind(
        ApiError::Status {
            method: reqwest::Method::GET,
            path: "/v1/jobs".into(),
            status: 500,
            excerpt: "oops".into(),
        },
        ErrorKind::Api,
    );
    assert_kind(
        ApiError::Decode {
            method: reqwest::Method::GET,
            path: "/v1/jobs".into(),
            detail: "expected a list".into(),
            excerpt: "{}".into(),
        },
        ErrorKind::Api,
    );
    let transport = reqwest::Client::new()
        .get("http://[not a url")
        .build()
        .expect_err("an invalid URL");
    assert_kind(
        ApiError::Transport {
            method: reqwest::Method::GET,
            path: "/v1/jobs".into(),
            source: transport,
        },
        ErrorKind::Api,
    );
    assert_kind(
        XrpcError {
            method: "com.atproto.server.createAccount".into(),
            status: 400,
            error: "HandleNotAvailable".into(),
            message: None,
        },
        ErrorKind::Api,
    );
}

#[test]
fn a_failed_command_on_the_droplet_carries_its_stderr_tail() {
    let failed = CommandFailed {
        host: "root@203.0.113.7:22".into(),
        command: "apt-get install -y caddy".into(),
        status: Some(100),
        stderr_tail: "E: Unable to locate package caddy".into(),
    };
    assert_eq!(
        failed.to_string(),
        "on root@203.0.113.7:22: `apt-get install -y caddy` failed with exit status 100\nE: Unable to locate package caddy"
    );
    let err = Error::from(failed).context("docker: install caddy");
    assert_eq!(err.kind(), ErrorKind::RemoteCommand);
    let found = err.downcast_ref::<CommandFailed>().expect("typed source");
    assert_eq!(found.stderr_tail, "E: Unable to locate package caddy");
    let lost = CommandFailed {
        host: "h".into(),
        command: "true".into(),
        status: None,
        stderr_tail: String::new(),
    };
    assert!(lost
        .to_string()
        .contains("no exit status (connection lost?)"));
}

fn event(kind: &str, message: &str) -> TaskEvent {
    TaskEvent {
        kind: kind.into(),
        display_message: message.into(),
        ..TaskEvent::default()
    }
}

#[test]
fn an_image_pull_failure_is_told_by_nomads_events() {
    let received = event("Received", "Task received by client");
    let downloading = event("Driver", "Downloading image");
    let cases = [
        (
            "a failure while the image downloads",
            vec![
                received.clone(),
                downloading.clone(),
                event("Driver Failure", "API error (404): manifest unknown"),
            ],
            StartFailure::ImagePull,
        ),
        (
            "the docker driver's own words",
            vec![
                received.clone(),
                event("Driver Failure", "Failed to pull `nope:1`: not found"),
            ],
            StartFailure::ImagePull,
        ),
        (
            "a driver failure after the image was there",
            vec![
                received.clone(),
                event(
                    "Driver Failure",
                    "failed to create container: port is already allocated",
                ),
            ],
            StartFailure::Other,
        ),
        (
            "a setup failure after downloading",
            vec![
                downloading.clone(),
                event("Setup Failure", "failed to build task directory"),
            ],
            StartFailure::Other,
        ),
        ("no events", vec![], StartFailure::Other),
    ];
    for (what, events, want) in cases {
        assert_eq!(StartFailure::of(&events), want, "{what}");
    }
}

#[test]
fn a_job_that_does_not_come_up_is_unhealthy_and_keeps_its_cause() {
    let failed = JobFailed {
        message: "job io: allocation 01234567 failed to start task io".into(),
        cause: StartFailure::ImagePull,
    };
    let err = Error::from(failed.clone()).context("proxy: wait for IO");
    assert_eq!(err.kind(), ErrorKind::Unhealthy);
    assert_eq!(err.downcast_ref::<JobFailed>(), Some(&failed));
}
