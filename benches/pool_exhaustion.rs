//! Cost of a `createSim` that fails because the shared client address pool is full (issue 11,
//! "resource exhaustion across tenants"): every failing create holds the store's single writer,
//! so its cost is what every other operator's writes wait for.
//!
//! Run with `cargo bench --bench pool_exhaustion` (a plain `main`, `harness = false`). It opens a
//! temporary store with the default rendezvous point (pool `10.64.0.0/16`), leases every address
//! of the pool to placeholder subscribers (as one operator holding the whole pool would), then
//! times `BENCH_ATTEMPTS` (default 200) `sims::create_virtual` calls of another operator, each in
//! its own write transaction as the API does, which all fail with `PoolExhausted`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::{Duration, Instant};

use arcd::config::{Config, Coverage};
use arcd::store::db::Backend;
use arcd::store::db::SqliteDb;
use arcd::store::sessions::SessionPolicy;
use arcd::store::{operators, rendezvous, sims, Rule, Store, StoreError};

fn main() {
    let attempts: usize = std::env::var("BENCH_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("bench.sqlite")).expect("store");
    let config = Config::default();
    let rp = &config.rendezvous_points[0];
    let pool = rp.pool;
    let scope = format!("rp:{}", rp.id);
    let (first, last) = (u32::from(pool.network()), u32::from(pool.broadcast()));
    let operator = store
        .sqlite()
        .expect("a SQLite store")
        .write(|tx| {
            rendezvous::sync(&mut SqliteDb::new(tx), &config.rendezvous_points)?;
            tx.execute(
                "WITH RECURSIVE n(ip) AS (SELECT ?2 UNION ALL SELECT ip + 1 FROM n WHERE ip < ?3)
                 INSERT INTO address_leases(scope, ip, imsi, released_at)
                 SELECT ?1, ip, 'held-' || ip, NULL FROM n",
                (scope.as_str(), first, last),
            )?;
            operators::create_operator(&mut SqliteDb::new(tx))
        })
        .expect("fill the pool");
    let policy = SessionPolicy {
        jp_rendezvous_point: rp.id.clone(),
        global_rendezvous_point: rp.id.clone(),
        address_quarantine_ms: 0,
        rendezvous_points: vec![rp.id.clone()],
    };
    let prefix = config.sims.iccid_prefix.clone();
    let mut times: Vec<Duration> = Vec::with_capacity(attempts);
    for _ in 0..attempts {
        let started = Instant::now();
        let result = store
            .write_db(|db| sims::create_virtual(db, &operator, Coverage::Jp, &prefix, &policy));
        times.push(started.elapsed());
        match result {
            Err(StoreError::Rule(Rule::PoolExhausted(..))) => {}
            Err(other) => panic!("expected PoolExhausted, got {other}"),
            Ok(_) => panic!("expected PoolExhausted, a SIM was created"),
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "failing createSim on a full {pool} pool ({} leases), {attempts} attempts: \
         p50 {:?}, p99 {:?}, max {:?}, mean {mean:?}",
        last - first + 1,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
