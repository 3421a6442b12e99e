//! The PDS's environment: what the job's `env` block and the local `pds.env` hold.
//!
//! Values follow the official installer (REFERENCE.md) with the seed's layout
//! (`/pds` on the host volume). `pds.env` is `KEY=VALUE` lines, the format the
//! official `pdsadmin` sources, so the file works with pdsadmin as it is.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::nomad::job::EnvValue;
use crate::settings::{Settings, PDS_PORT};
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
    for (key, value) in &settings.pds_env {
        check_extra_key(key)?;
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = EnvValue::Plain(value.clone()),
            None => env.push((key.clone(), EnvValue::Plain(value.clone()))),
        }
    }
    Ok(env)
}

/// `--pds-env KEY=VALUE`: parsed here so the error names the flag.
pub fn parse_extra(raw: &str) -> Result<(String, String)> {
    let Some((key, value)) = raw.split_once('=') else {
        bail!("--pds-env {raw:?}: expected KEY=VALUE, e.g. --pds-env PDS_EMAIL_FROM_ADDRESS=admin@example.com");
    };
    check_extra_key(key)?;
    Ok((key.to_string(), value.to_string()))
}

fn check_extra_key(key: &str) -> Result<()> {
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        bail!("--pds-env {key:?}: names are upper-case letters, digits and '_'");
    }
    if [JWT_SECRET, ADMIN_PASSWORD, ROTATION_KEY, "PDS_HOSTNAME"].contains(&key) {
        bail!("--pds-env cannot set {key}: pdsup manages it (secrets live in the site's pds.env)");
    }
    Ok(())
}

/// `pds.env` text. Secrets are written in clear: the file is 0600 and is the
/// place they are kept.
pub fn render_env_file(env: &[(String, EnvValue)]) -> String {
    let mut out = String::from(
        "# PDS environment written by pdsup. Keep this file safe and private:\n\
         # it holds the PDS's secrets and its PLC rotation key.\n",
    );
    for (key, value) in env {
        let value = match value {
            EnvValue::Plain(v) => v.as_str(),
            EnvValue::Secret(s) => s.expose(),
        };
        out.push_str(key);
        out.push('=');
        out.push_str(&shell_value(value));
        out.push('\n');
    }
    out
}

fn shell_value(value: &str) -> String {
    let safe = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:@,+=%".contains(c));
    if safe && !value.is_empty() {
        value.to_string()
    } else {
        format!(
            "\"{}\"",
            value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
                .replace('`', "\\`")
        )
    }
}

/// Parses `KEY=VALUE` lines (comments, blank lines, `export` and quotes allowed).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim();
            let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
                let inner = &value[1..value.len() - 1];
                inner
                    .replace("\\\"", "\"")
                    .replace("\\$", "$")
                    .replace("\\`", "`")
                    .replace("\\\\", "\\")
            } else if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
                value[1..value.len() - 1].to_string()
            } else {
                value.to_string()
            };
            env.insert(key.trim().to_string(), value);
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_round_trips_and_holds_the_secrets() {
        let settings = Settings::example();
        let secrets = PdsSecrets::generate();
        let env = pds_environment(&settings, &secrets).unwrap();
        let text = render_env_file(&env);
        let parsed = parse_env_file(&text);
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
        let parsed = parse_env_file(&render_env_file(&env));
        assert_eq!(parsed["PDS_INVITE_REQUIRED"], "false");
        assert_eq!(parsed["PDS_EMAIL_FROM_ADDRESS"], "a b <x@y.z>");
        assert!(parse_extra("PDS_JWT_SECRET=x").is_err());
        assert!(parse_extra("lower=x").is_err());
        assert!(parse_extra("NOVALUE").is_err());
    }
}
