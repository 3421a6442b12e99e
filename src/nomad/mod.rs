//! Nomad: the agent configuration (`config`), the release download and its
//! verification (`release`), the job model (`job`) and the HTTP API client (`api`).

pub mod api;
pub mod config;
pub mod job;
pub mod release;
