//! The chaos suite's harness: real `kura server` processes, one site per
//! Linux network namespace ([`net`], [`cluster`]), a seeded workload that
//! records a Jepsen-style history ([`workload`]), and the heal wait and
//! checker ([`check`]). The scenarios are in `tests/chaos.rs`; see
//! `README.md` for how to run them and what each checks.

pub mod check;
pub mod cluster;
pub mod env;
pub mod meta;
pub mod net;
pub mod scenario;
pub mod workload;
