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

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps drawn on stderr with `template`, or a hidden one
/// (`hidden`: `--json`, or stderr is not a terminal).
pub fn progress_bar(len: u64, hidden: bool, template: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
