//! The end of a run: where the PDS is, the account (and its password, once),
//! where the secrets live, and the DNS records to add. Human text or JSON.

use serde_json::json;

use crate::settings::Settings;
use crate::steps::{Outcome, RunReport};

pub struct Summary<'a> {
    pub settings: &'a Settings,
    pub outcome: &'a Outcome,
    pub report: &'a RunReport,
    pub env_file: String,
    pub dry_run: bool,
}

impl Summary<'_> {
    pub fn text(&self) -> String {
        let s = self.settings;
        let mut out = String::new();
        if self.dry_run {
            out.push_str("Dry run: nothing was changed.\n");
            return out;
        }
        let version = self.outcome.pds_version.as_deref().unwrap_or("?");
        out.push_str(&format!(
            "\nPDS:       https://{}  (version {version})\n",
            s.hostname
        ));
        if !self.report.changed() {
            out.push_str("           everything was already in place: nothing changed\n");
        }
        if let Some(account) = &self.outcome.account {
            out.push_str(&format!("Account:   {}  {}\n", account.handle, account.did));
            if let Some(password) = &account.password {
                out.push_str(&format!(
                    "Password:  {}\n           shown only this once: save it in your password manager now\n",
                    password.expose()
                ));
            }
        }
        out.push_str(&format!(
            "Secrets:   {}  (back it up: it holds the PDS's keys)\n",
            self.env_file
        ));
        out.push_str("\nDNS records to add at your DNS provider:\n");
        for record in &self.outcome.dns_records {
            out.push_str(&format!("  {record}\n"));
        }
        if let crate::inputs::Handle::Custom { domain, .. } = &s.handle {
            out.push_str(&format!(
                "\nOnce _atproto.{domain} resolves, switch the handle to {domain} in the Bluesky app\n(Settings → Account → Handle → I have my own domain).\n"
            ));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let account = self.outcome.account.as_ref().map(|a| {
            json!({
                "did": a.did,
                "handle": a.handle,
                "password": a.password.as_ref().map(|p| p.expose().to_string()),
            })
        });
        json!({
            "ok": true,
            "dry_run": self.dry_run,
            "changed": self.report.changed(),
            "url": format!("https://{}", self.settings.hostname),
            "pds_version": self.outcome.pds_version,
            "account": account,
            "env_file": self.env_file,
            "dns_records": self.outcome.dns_records,
            "steps": self.report.steps,
        })
    }
}
