//! Shared helpers for integration tests. Use with `mod support;`.

pub mod conformance;
