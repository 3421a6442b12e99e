//! The PDS's environment: what the job's `env` block and the local `pds.env` hold.
//!
//! Values follow the official installer (REFERENCE.md) with the seed's layout
//! (`/pds` on the host volume). The file format itself (`pds.env`, read back as
//! bash reads it) lives in [`crate::state::env_file`].

use crate::error::Result;

use crate::inputs::check_one_line;
use crate::secret::EnvValue;
use crate::settings::{Settings, PDS_PORT};
use crate::state::env_file::check_extra_key;
pub use crate::state::env_file::parse_extra_from;
use crate::state::secrets::{PdsSecrets, ADMIN_PASSWORD, JWT_SECRET, ROTATION_KEY};

/// The full environment of the PDS task, secrets included (as `EnvValue::Secret`).
pub fn pds_environment(
    settings: &Settings,
    secrets: &PdsSecrets,
) -> Result<Vec<(String, EnvValue)>> {
    let plain = |k: &str, v: &str| (k.to_string(), EnvValue::Plain(v.to_string()));
    let mut env = vec![
        plain("TZ", &settings.timezone),
        plain("PDS_HOSTNAME", settings.hostname.as_str()),
        plain("PDS_PORT", &PDS_PORT.to_string()),
        (
            JWT_SECRET.into(),
            EnvValue::Secret(secrets.jwt_secret.clone()),
        ),
        (
            ADMIN_PASSWORD.into(),
            EnvValue::Secret(secrets.admin_password.clone()),
        ),
        (
            ROTATION_KEY.into(),
            EnvValue::Secret(secrets.rotation_key_hex.clone()),
        ),
        plain("PDS_DATA_DIRECTORY", "/pds"),
        plain("PDS_BLOBSTORE_DISK_LOCATION", "/pds/blocks"),
        plain("PDS_BLOBSTORE_DISK_TMP_LOCATION", "/pds/temp"),
        plain("PDS_BLOB_UPLOAD_LIMIT", "104857600"),
        plain("PDS_DID_PLC_URL", &settings.plc_url),
        plain("PDS_BSKY_APP_VIEW_URL", "https://api.bsky.app"),
        plain("PDS_BSKY_APP_VIEW_DID", "did:web:api.bsky.app"),
        plain("PDS_REPORT_SERVICE_URL", "https://mod.bsky.app"),
        plain("PDS_REPORT_SERVICE_DID", "did:plc:ar7c4by46qjdydhdevvrndac"),
        plain("PDS_CRAWLERS", "https://bsky.network"),
        plain("PDS_INVITE_REQUIRED", "true"),
        plain("PDS_RATE_LIMITS_ENABLED", "true"),
        plain("LOG_ENABLED", "true"),
    ];
    // Settings are validated when they are built; this keeps a value that was
    // not (a test, a new field) from ever being spliced into pds.env.
    for (key, value) in &env {
        if let EnvValue::Plain(v) = value {
            check_one_line(key, v)?;
        }
    }
    for (key, value) in &settings.pds_env {
        check_extra_key(key)?;
        check_one_line(&format!("--pds-env {key}"), value)?;
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = EnvValue::Plain(value.clone()),
            None => env.push((key.clone(), EnvValue::Plain(value.clone()))),
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::env_file::{parse_env_file, render_env_file};

    /// `--pds-env KEY=VALUE`, as the command line parses it.
    fn parse_extra(raw: &str) -> Result<(String, String)> {
        parse_extra_from(raw, "--pds-env")
    }

    #[test]
    fn env_file_round_trips_and_holds_the_secrets() {
        let settings = Settings::example();
        let secrets = PdsSecrets::generate();
        let env = pds_environment(&settings, &secrets).unwrap();
        let text = render_env_file(&env);
        let parsed = parse_env_file(&text).unwrap();
        assert_eq!(parsed["PDS_HOSTNAME"], "pds.example.com");
        assert_eq!(parsed[JWT_SECRET], secrets.jwt_secret.expose());
        assert_eq!(PdsSecrets::from_env(&parsed).unwrap(), secrets);
        assert_eq!(parsed["PDS_INVITE_REQUIRED"], "true");
        assert_eq!(parsed["PDS_DATA_DIRECTORY"], "/pds");
    }

    #[test]
    fn extra_env_overrides_defaults_but_not_secrets() {
        let mut settings = Settings::example();
        settings.pds_env = vec![parse_extra("PDS_INVITE_REQUIRED=false").unwrap()];
        settings
            .pds_env
            .push(parse_extra("PDS_EMAIL_FROM_ADDRESS=a b <x@y.z>").unwrap());
        let env = pds_environment(&settings, &PdsSecrets::generate()).unwrap();
        let parsed = parse_env_file(&render_env_file(&env)).unwrap();
        assert_eq!(parsed["PDS_INVITE_REQUIRED"], "false");
        assert_eq!(parsed["PDS_EMAIL_FROM_ADDRESS"], "a b <x@y.z>");
        assert!(parse_extra("PDS_JWT_SECRET=x").is_err());
        assert!(parse_extra("lower=x").is_err());
        assert!(parse_extra("NOVALUE").is_err());
    }

    #[test]
    fn a_newline_in_a_flag_value_is_refused_naming_the_flag() {
        let err = parse_extra("PDS_FOO=a\nPDS_JWT_SECRET=evil")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--pds-env PDS_FOO"), "{err}");
        assert!(err.contains("line break"), "{err}");
        for bad in ["PDS_FOO=a\rb", "PDS_FOO=a\0b", "PDS_FOO=\u{1b}[31m"] {
            assert!(parse_extra(bad).is_err(), "{bad:?}");
        }
        let err = parse_extra_from("PDS_FOO=a\nb", "site.toml pds_env")
            .unwrap_err()
            .to_string();
        assert!(err.contains("site.toml pds_env PDS_FOO"), "{err}");
        // Settings that skipped validation still never reach the file.
        let mut settings = Settings::example();
        settings.timezone = "UTC\nPDS_JWT_SECRET=evil".into();
        assert!(pds_environment(&settings, &PdsSecrets::generate()).is_err());
        let mut settings = Settings::example();
        settings.pds_env = vec![("PDS_FOO".into(), "a\nPDS_JWT_SECRET=evil".into())];
        assert!(pds_environment(&settings, &PdsSecrets::generate()).is_err());
    }
}
