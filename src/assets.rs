//! Files that land on the droplet, embedded at build time and rendered by pure
//! functions. `{{name}}` placeholders are replaced; a placeholder left over is a
//! bug, caught by `render`'s assertion in tests.

pub const CADDYFILE: &str = include_str!("../assets/Caddyfile");
/// pdsup's site, imported by a Caddyfile of the user's.
pub const CADDY_SITE: &str = include_str!("../assets/caddy-site.caddy");
/// IO's ingress block as IO reads it since July 2026.
pub const IO_INGRESS: &str = include_str!("../assets/io-ingress.hcl");
/// The seed's `host` block, for IO images before the rename.
pub const IO_INGRESS_HOST: &str = include_str!("../assets/io-ingress-host.hcl");
/// `pdsup backup --schedule`: restic with the site's repository, the backup the
/// service runs, the service and its timer (`{{on_calendar}}`).
pub const PDSUP_RESTIC: &str = include_str!("../assets/pdsup-restic.sh");
pub const PDSUP_BACKUP_SH: &str = include_str!("../assets/pdsup-backup.sh");
pub const PDSUP_BACKUP_SERVICE: &str = include_str!("../assets/pdsup-backup.service");
pub const PDSUP_BACKUP_TIMER: &str = include_str!("../assets/pdsup-backup.timer");

/// Replaces each `{{key}}` in `template` with its value.
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (key, value) in values {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    debug_assert!(!out.contains("{{"), "unrendered placeholder in:\n{out}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_every_placeholder() {
        assert_eq!(
            render("a {{x}} b {{x}} {{y}}", &[("x", "1"), ("y", "2")]),
            "a 1 b 1 2"
        );
    }
}
