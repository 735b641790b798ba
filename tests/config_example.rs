//! config/arcd.toml documents every configuration key at its default: loading it must give
//! exactly `Config::default()`, and it must spell out every key, so the example cannot drift.
//!
//! `Config::load` also reads `ARCD_*` environment variables; run these tests without any set.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::PathBuf;

use arcd::config::Config;
use figment::providers::{Format, Toml};
use figment::Figment;
use serde_json::Value;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/arcd.toml")
}

#[test]
fn example_config_equals_defaults() {
    let loaded = Config::load(Some(&example_path())).expect("config/arcd.toml loads");
    let loaded = serde_json::to_value(&loaded).expect("serialize loaded config");
    let defaults = serde_json::to_value(Config::default()).expect("serialize defaults");
    assert_eq!(
        loaded, defaults,
        "config/arcd.toml differs from Config::default() (or an ARCD_* variable is set)"
    );
}

#[test]
fn example_config_spells_out_every_key() {
    // Loading an empty file would also give the defaults; check that each key is really written.
    let file: Value = Figment::from(Toml::file_exact(example_path()))
        .extract()
        .expect("config/arcd.toml is TOML");
    let defaults = serde_json::to_value(Config::default()).expect("serialize defaults");
    let mut missing = Vec::new();
    missing_keys(&defaults, &file, "", &mut missing);
    assert!(
        missing.is_empty(),
        "config/arcd.toml leaves out {missing:?}"
    );
}

fn missing_keys(defaults: &Value, file: &Value, path: &str, missing: &mut Vec<String>) {
    match (defaults, file) {
        (Value::Object(d), Value::Object(f)) => {
            for (key, value) in d {
                let name = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match f.get(key) {
                    Some(inner) => missing_keys(value, inner, &name, missing),
                    None => missing.push(name),
                }
            }
        }
        (Value::Array(d), Value::Array(f)) => {
            for (i, value) in d.iter().enumerate() {
                let name = format!("{path}[{i}]");
                match f.get(i) {
                    Some(inner) => missing_keys(value, inner, &name, missing),
                    None => missing.push(name),
                }
            }
        }
        _ => {}
    }
}
