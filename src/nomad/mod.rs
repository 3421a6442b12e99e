//! Nomad: the agent configuration (`config`), the release download and its
//! verification (`release`), a release install as data (`install`), the job model (`job`) and the HTTP API client (`api`).

pub mod api;
pub mod config;
pub mod install;
pub mod job;
pub mod release;
