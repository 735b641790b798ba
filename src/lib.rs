//! arcd: a self-hosted rendezvous point for virtual SIMs (see docs/ARCHITECTURE.md).

pub mod api;
pub mod backup;
pub mod bootstrap;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dataplane;
mod fsutil;
pub mod ids;
pub mod iot_sim_csv;
mod listener;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod service_notify;
pub mod services;
pub mod store;
pub mod subnets;
pub mod tls;
pub mod wgkey;
