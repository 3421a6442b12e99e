//! pdsup: a fresh Ubuntu/Debian droplet to a running Bluesky PDS in one command.
//!
//! The crate is a library so that integration tests drive the same code as the
//! binary. Reading order for newcomers: `cli` (what the user asks for) → `steps`
//! (gather facts, plan, apply) → `host` (how commands reach the droplet) →
//! `nomad`, `pds` (API clients and rendering) → `state` (what is kept locally).

pub mod assets;
pub mod cli;
pub mod error;
pub mod host;
pub mod inputs;
pub mod nomad;
pub mod pds;
pub mod secret;
pub mod settings;
pub mod state;
pub mod steps;
pub mod ui;
