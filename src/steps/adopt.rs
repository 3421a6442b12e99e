//! What pdsup writes is marked as its own; what it did not write is the user's
//! and is adopted, not replaced. This module holds the pure parts: reading the
//! mark, and the one-line edit that makes a user's Caddyfile import pdsup's
//! site file. (Nomad jobs carry their mark in `meta`: `nomad::job::is_pdsups`.)

/// The first line of every file pdsup writes whole.
pub const MARK: &str = "# Managed by pdsup";
/// What earlier pdsup versions wrote first: their files are pdsup's too.
const EARLIER_MARK: &str = "# Written by pdsup";

/// Whether pdsup wrote `text` (its first line carries the mark), so that pdsup
/// may rewrite it whole. Anything else is the user's.
pub fn written_by_pdsup(text: &str) -> bool {
    let first = text.lines().next().unwrap_or("");
    first.starts_with(MARK) || first.starts_with(EARLIER_MARK)
}

/// Who a config file on the droplet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// There is none: pdsup writes its own.
    Nobody,
    Pdsup,
    User,
}

pub fn owner(text: Option<&str>) -> Owner {
    match text {
        None => Owner::Nobody,
        Some(t) if written_by_pdsup(t) => Owner::Pdsup,
        Some(_) => Owner::User,
    }
}

/// What a user's Caddyfile has at its top, where Caddy reads global options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlobalOptions {
    /// No global options block.
    Absent,
    /// A global options block; whether it sets `on_demand_tls`, and whether
    /// that asks `ask` (pdsup's endpoint, the PDS's /tls-check).
    Present { on_demand_tls: bool, asks: bool },
}

/// The Caddyfile's tokens, line by line, as far as this module needs them:
/// comments (`#` starting a token) and quoted strings are skipped, braces kept.
fn significant(line: &str) -> String {
    let mut out = String::new();
    let mut in_quote = false;
    let mut prev_space = true;
    for c in line.chars() {
        if in_quote {
            if c == '"' {
                in_quote = false;
            }
            continue;
        }
        match c {
            '"' => in_quote = true,
            '#' if prev_space => break,
            _ => out.push(c),
        }
        prev_space = c.is_whitespace();
    }
    out.trim().to_string()
}

/// Reads the global options block of a Caddyfile: the first block, with no
/// keys (a line that is only `{`). `ask` is compared with the `ask` lines in it.
pub fn global_options(text: &str, ask: &str) -> GlobalOptions {
    let mut lines = text.lines();
    let first = lines.by_ref().map(significant).find(|l| !l.is_empty());
    if first.as_deref() != Some("{") {
        return GlobalOptions::Absent;
    }
    let (mut depth, mut on_demand_tls, mut asks) = (1usize, false, false);
    let wanted = format!("ask {ask}");
    for raw in lines {
        let line = significant(raw);
        if depth == 1 && line.starts_with("on_demand_tls") {
            on_demand_tls = true;
        }
        if line.split_whitespace().collect::<Vec<_>>().join(" ") == wanted {
            asks = true;
        }
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if depth == 0 {
            break;
        }
    }
    GlobalOptions::Present {
        on_demand_tls,
        asks,
    }
}

/// Whether the Caddyfile has `line` (pdsup's import) as one of its lines.
pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim() == line)
}

/// The user's Caddyfile with pdsup's import `line` added and every other byte
/// kept: as the first line when `at_top` (the imported file then opens with
/// the global options block, which Caddy accepts only first), else appended
/// at the end (after a newline the file may lack). Unchanged when the line is
/// there already.
pub fn with_import(text: &str, line: &str, at_top: bool) -> String {
    if has_line(text, line) {
        return text.to_string();
    }
    if at_top {
        return format!("{line}\n{text}");
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASK: &str = "http://127.0.0.1:3000/tls-check";
    const IMPORT: &str = "import /etc/caddy/pdsup.caddy";

    #[test]
    fn the_mark_is_the_first_line_and_earlier_pdsups_count() {
        assert!(written_by_pdsup("# Managed by pdsup: Caddy for x\n{\n}\n"));
        assert!(written_by_pdsup(
            "# Written by pdsup: Caddy in front of x\n"
        ));
        for text in [
            "",
            "example.com {\n}\n",
            "# my sites\n# Managed by pdsup\n",
            " # Managed by pdsup\n",
        ] {
            assert!(!written_by_pdsup(text), "{text:?}");
        }
        assert_eq!(owner(None), Owner::Nobody);
        assert_eq!(owner(Some("# Managed by pdsup: x\n")), Owner::Pdsup);
        assert_eq!(owner(Some(":80 {\n}\n")), Owner::User);
    }

    #[test]
    fn global_options_are_the_first_block_without_keys() {
        assert_eq!(
            global_options("# mine\n\nexample.com {\n\trespond hi\n}\n", ASK),
            GlobalOptions::Absent
        );
        assert_eq!(global_options("", ASK), GlobalOptions::Absent);
        assert_eq!(
            global_options("# mine\n{\n\temail me@example.com\n}\n:80 {\n}\n", ASK),
            GlobalOptions::Present {
                on_demand_tls: false,
                asks: false
            }
        );
        let theirs = "{\n\ton_demand_tls {\n\t\task   http://127.0.0.1:9000/ok # theirs\n\t}\n}\n";
        assert_eq!(
            global_options(theirs, ASK),
            GlobalOptions::Present {
                on_demand_tls: true,
                asks: false
            }
        );
        let ours = format!("{{ # globals\n\ton_demand_tls {{\n\t\task {ASK}\n\t}}\n}}\n");
        assert_eq!(
            global_options(&ours, ASK),
            GlobalOptions::Present {
                on_demand_tls: true,
                asks: true
            }
        );
        // An ask in a site block after the global block does not count, nor a
        // commented one or an `on_demand_tls` inside a quoted string.
        let later = format!(
            "{{\n\temail \"on_demand_tls\"\n\t# ask {ASK}\n}}\nx.example {{\n\task {ASK}\n}}\n"
        );
        assert_eq!(
            global_options(&later, ASK),
            GlobalOptions::Present {
                on_demand_tls: false,
                asks: false
            }
        );
    }

    #[test]
    fn the_import_line_is_added_once_and_nothing_else_changes() {
        let user = "# my sites\n:8081 {\n\trespond \"other\"\n}\n";
        let top = with_import(user, IMPORT, true);
        assert_eq!(top, format!("{IMPORT}\n{user}"));
        let end = with_import(user, IMPORT, false);
        assert_eq!(end, format!("{user}{IMPORT}\n"));
        // A file without a final newline gets one before the line.
        assert_eq!(
            with_import("a {\n}", IMPORT, false),
            format!("a {{\n}}\n{IMPORT}\n")
        );
        assert_eq!(with_import("", IMPORT, false), format!("{IMPORT}\n"));
        // Already there (wherever, indented or not): nothing to do.
        for text in [
            top.as_str(),
            end.as_str(),
            "x {\n}\n  import /etc/caddy/pdsup.caddy  \n",
        ] {
            assert_eq!(with_import(text, IMPORT, true), text);
            assert_eq!(with_import(text, IMPORT, false), text);
            assert!(has_line(text, IMPORT));
        }
        assert!(!has_line(user, IMPORT));
        assert!(!has_line("import /etc/caddy/pdsup.caddy.old\n", IMPORT));
    }
}
