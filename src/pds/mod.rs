//! The PDS: its environment file (`env`) and its XRPC API (`xrpc`).

pub mod admin;
pub mod data;
pub mod env;
pub mod xrpc;
