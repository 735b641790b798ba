//! What the store's functions return when they cannot do what was asked: a missing entity, a
//! broken product rule (nothing was written) or a database failure.

/// Things a request can name that may not exist (or belong to another operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Sim,
    Group,
    AuthKey,
    Operator,
    Subscriber,
    Tag,
    Profile,
    ConfigurationParameter,
    DataEntry,
    Vpg,
    Credentials,
}

impl Entity {
    pub fn name(self) -> &'static str {
        match self {
            Entity::Sim => "SIM",
            Entity::Group => "group",
            Entity::AuthKey => "auth key",
            Entity::Operator => "operator",
            Entity::Subscriber => "subscriber",
            Entity::Tag => "tag",
            Entity::Profile => "profile",
            Entity::ConfigurationParameter => "configuration parameter",
            Entity::DataEntry => "data entry",
            Entity::Vpg => "VPG",
            Entity::Credentials => "credentials",
        }
    }
}

/// A request that is well-formed but breaks a rule of the SIM lifecycle; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    #[error("termination protection is on: call enable_termination first")]
    TerminationProtected,
    #[error("the SIM is terminated")]
    SimTerminated,
    #[error("a virtual SIM/Subscriber is only active or terminated; {0} is not allowed")]
    VirtualStatusChange(&'static str),
    #[error("The specified subscriber is offline")]
    NoSession,
    #[error("Arc credentials missing: attach a key with PUT /v1/sims/{{sim_id}}/credentials/arc")]
    NoArcCredentials,
    #[error("a virtual subscriber cannot be added to an IoT SIM whose primary subscription is {0}; supported: plan01s, plan01s-LDV, plan-D, plan-K, plan-KM1, plan-DU")]
    UnsupportedPrimarySubscription(String),
    #[error("only subscription planArc01 with type virtual can be added")]
    UnsupportedSubscription,
    #[error("the SIM already has a virtual subscriber ({0})")]
    AlreadyHasVirtualSubscriber(String),
    #[error("the SIM is a virtual SIM; subscriptions are added to IoT SIMs")]
    NotAnIotSim,
    #[error("only a secondary virtual subscriber can be terminated this way")]
    NotSecondaryVirtual,
    #[error("the group still has {0} SIM(s); move them out first")]
    GroupInUse(u64),
    #[error("the client address pool {0} of rendezvous point {1} is exhausted")]
    PoolExhausted(String, String),
    #[error("the device subnet {0} of VPG {1} has no free address (released addresses rest in quarantine before reuse); use a VPG with a larger deviceSubnetCidrRange")]
    VpgSubnetExhausted(String, String),
    #[error("group {group_id} puts its SIMs in VPG `{vpg_id}` (SoracomAir vpgId), which is not a running VPG of this operator; fix the group's configuration or move the SIM out of the group")]
    GroupVpgUnusable { group_id: String, vpg_id: String },
    #[error("{0} identifiers are exhausted")]
    IdentifiersExhausted(&'static str),
    #[error("rendezvous point {0} is not configured")]
    UnknownRendezvousPoint(String),
    #[error("{0}")]
    InvalidVpg(String),
    #[error("the VPG is in use: {groups} group(s) name it in SoracomAir vpgId and {sessions} Arc session(s) are in it; remove it from those groups and re-create those sessions first")]
    VpgInUse { groups: u64, sessions: u64 },
    #[error("item {index}: {message}")]
    ImportItem { index: usize, message: String },
    #[error("credentials `{0}` already exist; update them with PUT /v1/credentials/{0}")]
    CredentialsExist(String),
    #[error("{0}")]
    InvalidServiceConfiguration(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} not found", .0.name())]
    NotFound(Entity),
    #[error(transparent)]
    Rule(#[from] Rule),
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("database schema version {found} is newer than this arcd ({supported}); upgrade arcd")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a client is told when a write failed for lack of disk space (API and device services).
pub const DISK_FULL_MESSAGE: &str = "the arcd server's disk is full: nothing was written; free space on its data directory's file system, then retry";

impl StoreError {
    fn sqlite_code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            StoreError::Database(e) => e.sqlite_error_code(),
            _ => None,
        }
    }

    /// SQLite could not grow the database or its WAL: the file system is full (ENOSPC) or the
    /// database reached its page limit. PostgreSQL: `disk_full` (53100), and `out_of_memory`
    /// (53200), which a client is answered alike: the server lacks room, retry once it has some.
    /// Nothing of the failed transaction was written.
    pub fn is_disk_full(&self) -> bool {
        self.sqlite_code() == Some(rusqlite::ErrorCode::DiskFull)
            || matches!(self.postgres_code(), Some("53100" | "53200"))
    }

    /// PostgreSQL answered that this transaction lost a conflict with a concurrent one
    /// (serialization failure or deadlock): running it again is safe and should succeed.
    pub fn is_serialization_failure(&self) -> bool {
        matches!(self.postgres_code(), Some("40001" | "40P01"))
    }

    /// The engine is unreachable (connection refused or lost, server shutting down or not
    /// accepting connections yet): the API answers 503; the next call reconnects.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Postgres(e) = self else {
            return false;
        };
        if e.is_closed() {
            return true;
        }
        match e.code().map(|code| code.code()) {
            Some(code) => {
                code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
            }
            None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
        }
    }

    /// A UNIQUE or PRIMARY KEY constraint refused the row, on either engine.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            _ => self.postgres_code() == Some("23505"),
        }
    }

    fn postgres_code(&self) -> Option<&str> {
        match self {
            StoreError::Postgres(e) => e.code().map(|code| code.code()),
            _ => None,
        }
    }

    /// The file is not a database or its pages do not hold together.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self.sqlite_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        ) || matches!(self, StoreError::Corrupt(_))
    }
}
