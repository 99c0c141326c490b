//! Integration tests of the `kura` binary, run as a process.

mod admin;
mod client;
mod dev;
mod dicom_inspect;
mod server;
