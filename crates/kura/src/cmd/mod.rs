//! The command groups of the `kura` binary, one module each. A module owns
//! its clap types and a `run` function that returns the exit code; `main`
//! only dispatches.

pub mod admin;
pub mod audit;
pub mod certs;
pub mod client;
pub mod dev;
pub mod dicom;
pub mod drill;
pub mod keys;
pub mod meta;
pub mod server;
