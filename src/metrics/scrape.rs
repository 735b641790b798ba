//! What one running arcd is, read at scrape time: build info, sessions and devices online per
//! rendezvous point, the data plane's per-rendezvous-point counters and the WAL's size. Nothing
//! here runs on the packet path; the engine's atomics are only loaded.

use std::fmt;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::dataplane::engine::{Engine, ONLINE_WINDOW};
use crate::ids::RendezvousPointId;

/// The live state of one arcd, for its metrics registry.
pub struct ArcdCollector {
    engine: Arc<Engine>,
    /// The SQLite write-ahead log (`arcd.sqlite-wal`); none on PostgreSQL.
    wal_path: Option<PathBuf>,
}

impl fmt::Debug for ArcdCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArcdCollector")
            .field("wal_path", &self.wal_path)
            .finish_non_exhaustive()
    }
}

impl ArcdCollector {
    pub fn new(engine: Arc<Engine>, wal_path: Option<PathBuf>) -> ArcdCollector {
        ArcdCollector { engine, wal_path }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One metric family whose samples are given as (labels, value).
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(sample)?,
        }
    }
    Ok(())
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for ArcdCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        family(
            &mut encoder,
            "arcd_build_info",
            "arcd's version; always 1.",
            MetricType::Gauge,
            [(vec![("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        let rps: Vec<&RendezvousPointId> = self.engine.listeners().map(|l| &l.rp_id).collect();

        let now = SystemTime::now();
        let mut sessions = Vec::new();
        let mut online = Vec::new();
        for rp in &rps {
            let snapshots = self.engine.snapshots(rp, now);
            let up = snapshots
                .iter()
                .filter(|p| {
                    p.last_handshake
                        .and_then(|at| now.duration_since(at).ok())
                        .is_some_and(|age| age < ONLINE_WINDOW)
                })
                .count();
            sessions.push((
                vec![("rendezvous_point", rp.as_str())],
                snapshots.len() as u64,
            ));
            online.push((vec![("rendezvous_point", rp.as_str())], up as u64));
        }
        family(
            &mut encoder,
            "arcd_sessions",
            "Active sessions (devices that may connect) per rendezvous point.",
            MetricType::Gauge,
            sessions,
        )?;
        family(
            &mut encoder,
            "arcd_devices_online",
            "Devices with a handshake in the last 180 s per rendezvous point.",
            MetricType::Gauge,
            online,
        )?;
        let listeners: Vec<_> = self.engine.listeners().collect();
        let handshakes = listeners.iter().flat_map(|l| {
            let h = &l.counters.handshakes;
            [
                ("completed", &h.completed),
                ("unknown_peer", &h.unknown_peer),
                ("rejected", &h.rejected),
                ("cookie_required", &h.cookie_required),
                ("queue_full", &h.queue_full),
                ("stale", &h.stale),
            ]
            .map(|(result, c)| {
                (
                    vec![("rendezvous_point", l.rp_id.as_str()), ("result", result)],
                    load(c),
                )
            })
        });
        family(
            &mut encoder,
            "arcd_handshakes",
            "WireGuard handshake messages per rendezvous point by result.",
            MetricType::Counter,
            handshakes,
        )?;
        let direction =
            |rx: fn(&crate::dataplane::engine::RpCounters) -> &AtomicU64,
             tx: fn(&crate::dataplane::engine::RpCounters) -> &AtomicU64| {
                listeners
                    .iter()
                    .flat_map(move |l| {
                        [("rx", rx(&l.counters)), ("tx", tx(&l.counters))].map(|(d, c)| {
                            (
                                vec![("rendezvous_point", l.rp_id.as_str()), ("direction", d)],
                                load(c),
                            )
                        })
                    })
                    .collect::<Vec<_>>()
            };
        family(
            &mut encoder,
            "arcd_packets",
            "IP packets through the tunnels per rendezvous point: rx = from devices, tx = to devices.",
            MetricType::Counter,
            direction(|c| &c.rx_packets, |c| &c.tx_packets),
        )?;
        family(
            &mut encoder,
            "arcd_bytes",
            "IP bytes (inside the tunnel, before encryption) per rendezvous point and direction.",
            MetricType::Counter,
            direction(|c| &c.rx_bytes, |c| &c.tx_bytes),
        )?;
        let drops = listeners.iter().flat_map(|l| {
            l.counters.drops.drop_reasons().map(|(reason, c)| {
                (
                    vec![("rendezvous_point", l.rp_id.as_str()), ("reason", reason)],
                    load(c),
                )
            })
        });
        family(
            &mut encoder,
            "arcd_dropped_packets",
            "Packets from or to devices dropped per rendezvous point by reason.",
            MetricType::Counter,
            drops,
        )?;
        let tun_drops = &self.engine.tun_drops;
        family(
            &mut encoder,
            "arcd_tun_dropped_packets",
            "Packets read from the TUN device dropped by reason (no device owns the destination: no_route).",
            MetricType::Counter,
            [("malformed", &tun_drops.malformed), ("no_route", &tun_drops.no_route)]
                .map(|(reason, c)| (vec![("reason", reason)], load(c))),
        )?;
        if let Some(wal_path) = &self.wal_path {
            // Missing between a checkpoint's truncation and the next write: then it is empty.
            let wal_bytes = std::fs::metadata(wal_path).map_or(0, |m| m.len());
            family(
                &mut encoder,
                "arcd_store_wal_bytes",
                "Size of the SQLite write-ahead log file.",
                MetricType::Gauge,
                [(Vec::new(), wal_bytes)],
            )?;
        }
        Ok(())
    }
}
