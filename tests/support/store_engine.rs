//! The store engine of in-process test servers: SQLite in the test's temp dir by default; with
//! `ARCD_TEST_POSTGRES_URL` set (scripts/test-postgres.sh starts a throw-away PostgreSQL and sets
//! it), a fresh schema of that server, so the same API tests run on both engines.

use std::sync::atomic::{AtomicU64, Ordering};

use arcd::config::{Config, StoreEngine};
use arcd::store::db::PgStore;

pub const POSTGRES_URL_VAR: &str = "ARCD_TEST_POSTGRES_URL";

/// Points `config` at a new schema of the test PostgreSQL server when one is named; else leaves
/// it on SQLite. Named but unreachable fails the test (never a silent SQLite run).
pub fn use_test_engine(config: &mut Config) {
    let Ok(url) = std::env::var(POSTGRES_URL_VAR) else {
        return;
    };
    let schema = unique_schema_name();
    if let Err(e) = PgStore::connect_in_schema(&url, &schema) {
        panic!("{POSTGRES_URL_VAR}={url} was given but PostgreSQL failed: {e}");
    }
    config.store.engine = StoreEngine::Postgres;
    config.store.url = Some(with_search_path(&url, &schema));
}

/// Whether the tests run on PostgreSQL (for the few assertions about SQLite's own files).
pub fn on_postgres() -> bool {
    std::env::var_os(POSTGRES_URL_VAR).is_some()
}

fn unique_schema_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "t_{}_{}_{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with the session's search_path set to `schema` (libpq's `options`), in URL or
/// `key=value` form.
fn with_search_path(url: &str, schema: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-csearch_path%3D{schema}")
    } else {
        format!("{url} options='-csearch_path={schema}'")
    }
}
