//! `[store]` (which engine holds the state) and `[node]` (what this process serves when several
//! arcd nodes share one PostgreSQL store). A single box keeps the defaults: SQLite in the data
//! directory, one node serving the API and every rendezvous point.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::ids::RendezvousPointId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreEngine {
    /// One file in the data directory, owned by this process.
    Sqlite,
    /// A PostgreSQL database named by `store.url`, which several nodes may share.
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub engine: StoreEngine,
    /// PostgreSQL only: a libpq URL or `key=value` string; several hosts allowed
    /// (`host=a,b target_session_attrs=read-write`). May hold a password: never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: StoreEngine::Sqlite,
            url: None,
        }
    }
}

/// `[node] rendezvous_points` entry that means every configured rendezvous point.
pub const ALL_RENDEZVOUS_POINTS: &str = "*";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node serves the HTTPS API and the web page.
    pub api: bool,
    /// Ids of the `[[rendezvous_points]]` this node serves (binds their `listen`, runs their
    /// TUN, services and egress, holds their peers); `["*"]` = all, `[]` = none.
    pub rendezvous_points: Vec<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            api: true,
            rendezvous_points: vec![ALL_RENDEZVOUS_POINTS.into()],
        }
    }
}

impl NodeConfig {
    /// Whether this node serves the rendezvous point `id`.
    pub fn serves(&self, id: &RendezvousPointId) -> bool {
        self.rendezvous_points
            .iter()
            .any(|entry| entry == ALL_RENDEZVOUS_POINTS || entry == id.as_str())
    }

    fn serves_all(&self) -> bool {
        self.rendezvous_points
            .iter()
            .any(|entry| entry == ALL_RENDEZVOUS_POINTS)
    }
}

/// `[store]` and `[node]` together, against the configured rendezvous point ids.
pub(super) fn validate(
    store: &StoreConfig,
    node: &NodeConfig,
    configured: &[&RendezvousPointId],
) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.to_string(),
        message,
    };
    match (store.engine, store.url.as_deref().map(str::trim)) {
        (StoreEngine::Postgres, None | Some("")) => {
            return Err(invalid(
                "store.url",
                "engine = \"postgres\" needs the database URL (or ARCD_STORE__URL)".into(),
            ))
        }
        (StoreEngine::Sqlite, Some(_)) => {
            return Err(invalid(
                "store.url",
                "only for engine = \"postgres\"; the SQLite store is a file in data_dir".into(),
            ))
        }
        _ => {}
    }
    let mut seen = Vec::new();
    for entry in &node.rendezvous_points {
        if seen.contains(&entry) {
            return Err(invalid(
                "node.rendezvous_points",
                format!("`{entry}` appears twice"),
            ));
        }
        seen.push(entry);
        if entry != ALL_RENDEZVOUS_POINTS && !configured.iter().any(|id| id.as_str() == entry) {
            return Err(invalid(
                "node.rendezvous_points",
                format!("`{entry}` is not the id of a [[rendezvous_points]] entry (or \"*\")"),
            ));
        }
    }
    if node.serves_all() && node.rendezvous_points.len() > 1 {
        return Err(invalid(
            "node.rendezvous_points",
            "\"*\" already means every rendezvous point; list ids or \"*\" alone".into(),
        ));
    }
    if !node.api && node.rendezvous_points.is_empty() {
        return Err(invalid(
            "node",
            "api = false and no rendezvous_points: this node would serve nothing".into(),
        ));
    }
    if store.engine == StoreEngine::Sqlite && !node.serves_all() {
        return Err(invalid(
            "node.rendezvous_points",
            "serving only some rendezvous points needs engine = \"postgres\": a SQLite store \
             belongs to one process, so the others would never be served"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, StoreEngine};

    /// Loads `toml` (with two rendezvous points) and no environment.
    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("arcd.toml");
        let text = format!(
            "[[rendezvous_points]]\nid = \"ap-northeast-1\"\n\n[[rendezvous_points]]\nid = \"eu-central-1\"\n\n{toml}"
        );
        std::fs::write(&path, text).expect("write");
        Config::load_with_env(
            Some(&path),
            figment::providers::Env::prefixed("ARCD_UNUSED_TEST_"),
        )
    }

    fn refused_key(toml: &str) -> String {
        match load(toml) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{toml:?} was not refused as invalid: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_one_sqlite_node_serving_everything() {
        let config = load("").expect("defaults");
        assert_eq!(config.store.engine, StoreEngine::Sqlite);
        assert!(config.node.api);
        assert!(config
            .rendezvous_points
            .iter()
            .all(|rp| config.node.serves(&rp.id)));
    }

    #[test]
    fn a_postgres_node_serving_one_rendezvous_point() {
        let config = load(
            "[store]\nengine = \"postgres\"\nurl = \"host=a,b target_session_attrs=read-write\"\n\
             [node]\napi = false\nrendezvous_points = [\"eu-central-1\"]\n",
        )
        .expect("valid");
        assert_eq!(config.store.engine, StoreEngine::Postgres);
        assert!(!config.node.api);
        assert!(config.node.serves(&"eu-central-1".into()));
        assert!(!config.node.serves(&"ap-northeast-1".into()));
    }

    #[test]
    fn inconsistent_store_and_node_settings_are_refused_by_key() {
        assert_eq!(refused_key("[store]\nengine = \"postgres\"\n"), "store.url");
        assert_eq!(
            refused_key("[store]\nengine = \"postgres\"\nurl = \" \"\n"),
            "store.url"
        );
        assert_eq!(
            refused_key("[store]\nurl = \"postgres://x/y\"\n"),
            "store.url"
        );
        let postgres = "[store]\nengine = \"postgres\"\nurl = \"postgres://x/y\"\n";
        assert_eq!(
            refused_key(&format!(
                "{postgres}[node]\napi = true\nrendezvous_points = [\"us-west-2\"]\n"
            )),
            "node.rendezvous_points"
        );
        assert_eq!(
            refused_key(&format!(
                "{postgres}[node]\napi = true\nrendezvous_points = [\"*\", \"eu-central-1\"]\n"
            )),
            "node.rendezvous_points"
        );
        assert_eq!(
            refused_key(&format!("{postgres}[node]\napi = true\nrendezvous_points = [\"eu-central-1\", \"eu-central-1\"]\n")),
            "node.rendezvous_points"
        );
        assert_eq!(
            refused_key(&format!(
                "{postgres}[node]\napi = false\nrendezvous_points = []\n"
            )),
            "node"
        );
        // A SQLite file belongs to one process: a node serving only some RPs would strand the rest.
        assert_eq!(
            refused_key("[node]\napi = true\nrendezvous_points = [\"eu-central-1\"]\n"),
            "node.rendezvous_points"
        );
    }

    #[test]
    fn the_store_url_comes_from_the_environment() {
        std::env::set_var("ARCDSTORETEST_STORE__ENGINE", "postgres");
        std::env::set_var("ARCDSTORETEST_STORE__URL", "postgres://arcd@db/arcd");
        let config = Config::load_with_env(
            None,
            figment::providers::Env::prefixed("ARCDSTORETEST_").split("__"),
        )
        .expect("valid");
        assert_eq!(config.store.url.as_deref(), Some("postgres://arcd@db/arcd"));
    }
}
