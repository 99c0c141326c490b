//! Whole-crate tests: data movement when the map changes, property tests
//! against naive reference implementations, and golden fixtures of the
//! persisted formats.

mod golden;
mod movement;
mod props;
