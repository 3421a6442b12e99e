//! pdsup: a fresh Ubuntu/Debian droplet to a running Bluesky PDS in one command.
//!
//! The crate is a library so that integration tests drive the same code as the
//! binary. ARCHITECTURE.md draws the layers; each module imports only from
//! layers below it (tests/layers.rs checks). Reading order for newcomers: `cli`
//! (what the user asks for) → `ops` (one operation per subcommand) → `steps`
//! (gather facts, plan, apply) → `plan` (changes as data) → `nomad`, `pds` (API
//! clients) → `host` (how commands reach the droplet), `state` (what is kept
//! locally) → plain values (`inputs`, `settings`, `secret`).

pub mod assets;
pub mod cli;
pub mod error;
pub mod host;
pub mod inputs;
pub mod nomad;
pub mod ops;
pub mod pds;
pub mod plan;
pub mod secret;
pub mod settings;
pub mod state;
pub mod steps;
pub mod ui;
