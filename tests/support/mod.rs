//! Shared helpers for integration tests. Use with `mod support;`.
#![allow(dead_code)]

pub mod checked;
pub mod child_arcd;
pub mod conformance;
pub mod devices;
pub mod mosquitto;
pub mod paging;
pub mod server;
pub mod store_engine;
pub mod tcp_proxy;
pub mod wgclient;
