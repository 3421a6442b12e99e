//! `pdsup request-crawl [RELAY...]`: asks relays to crawl the PDS
//! (`com.atproto.sync.requestCrawl` with the site's hostname), by default the
//! relays of the site's `PDS_CRAWLERS`. The relays are public services, so
//! the requests go from this machine; no connection to the droplet is needed.

use std::time::Duration;

use serde_json::json;

use crate::error::{bail, Result};
use crate::inputs::HttpUrl;
use crate::pds::env::pds_environment;
use crate::plan::Progress;
use crate::secret::EnvValue;
use crate::ui::Ui;

use super::print;
use super::site::Site;
use super::Output;

/// The relays of a `PDS_CRAWLERS` value (comma-separated URLs).
pub fn parse_crawlers(value: &str) -> Result<Vec<HttpUrl>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Ok(s.parse::<HttpUrl>()?))
        .collect()
}

/// The site's `PDS_CRAWLERS`, as the PDS job gets it.
pub fn site_crawlers(site: &Site) -> Result<Vec<HttpUrl>> {
    let env = pds_environment(&site.settings, &site.secrets()?)?;
    let value = env
        .iter()
        .find(|(k, _)| k == "PDS_CRAWLERS")
        .map(|(_, v)| match v {
            EnvValue::Plain(p) => p.clone(),
            EnvValue::Secret(_) => String::new(),
        })
        .unwrap_or_default();
    parse_crawlers(&value)
}

pub async fn request_crawl(
    site: Site,
    relays: Vec<HttpUrl>,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    let ui = Ui::new(output.json, output.quiet);
    let hostname = site.settings.hostname.as_str().to_string();
    let relays = if relays.is_empty() {
        site_crawlers(&site)?
    } else {
        relays
    };
    if relays.is_empty() {
        bail!(
            BadInput,
            "the site has no crawlers (its PDS_CRAWLERS is empty); name the relays: \
             `pdsup request-crawl https://bsky.network`"
        );
    }
    if dry_run {
        let list: Vec<&str> = relays.iter().map(HttpUrl::as_str).collect();
        let text = format!(
            "would ask {} to crawl {hostname}; nothing sent\n",
            list.join(", ")
        );
        return print(
            output,
            json!({"dry_run": true, "hostname": hostname, "relays": list}),
            &text,
        );
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a plain HTTP client builds");
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for relay in &relays {
        ui.progress(&format!("asking {relay} to crawl {hostname}"));
        let outcome = async {
            let resp = client
                .post(format!("{relay}/xrpc/com.atproto.sync.requestCrawl"))
                .json(&json!({ "hostname": hostname }))
                .send()
                .await
                .map_err(|e| with_causes(&e))?;
            let status = resp.status();
            if status.is_success() {
                Ok(())
            } else {
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                Err(format!("{status}: {}", body.trim()))
            }
        }
        .await;
        match &outcome {
            Ok(()) => results.push(json!({"relay": relay.as_str(), "ok": true})),
            Err(e) => {
                failed.push(format!("{relay}: {e}"));
                results.push(json!({"relay": relay.as_str(), "ok": false, "error": e}));
            }
        }
    }
    ui.clear();
    let text: String = results
        .iter()
        .map(|r| match r["ok"].as_bool() {
            Some(true) => format!("{}: crawl requested\n", r["relay"].as_str().unwrap_or("")),
            _ => format!(
                "{}: failed: {}\n",
                r["relay"].as_str().unwrap_or(""),
                r["error"].as_str().unwrap_or("")
            ),
        })
        .collect();
    print(
        output,
        json!({"ok": failed.is_empty(), "hostname": hostname, "relays": results}),
        &text,
    )?;
    if !failed.is_empty() {
        bail!(
            Api,
            "{} of {} relays refused the crawl request: {}",
            failed.len(),
            relays.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// An error with its causes on one line ("error sending request: connection refused").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crawlers_are_a_comma_separated_list_of_urls() {
        let list = parse_crawlers("https://bsky.network, https://relay.example.com/ ,").unwrap();
        let urls: Vec<&str> = list.iter().map(HttpUrl::as_str).collect();
        assert_eq!(
            urls,
            vec!["https://bsky.network", "https://relay.example.com"]
        );
        assert!(parse_crawlers("").unwrap().is_empty());
        let err = parse_crawlers("ftp://x").unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::BadInput, "{err}");
    }
}
