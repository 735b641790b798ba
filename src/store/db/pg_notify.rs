//! Statements sent after commits, one per burst: the outbox's NOTIFY wakes other nodes' followers,
//! and its cost belongs off the writer's path. Sent inside the writing transaction, PostgreSQL
//! holds a database-wide lock from the NOTIFY until the commit is flushed (measured: concurrent
//! createSims capped at 700-1,800/s); sent by the writer after its commit, it is a transaction
//! of its own per write. Here a writer only marks the statement pending and returns; one thread
//! per store sends each pending statement once, in autocommit on a connection of its own, at most
//! once per `MIN_GAP`, so a burst of commits costs one round trip. Every request is followed by a
//! send that starts after it, so no commit goes unannounced (the followers' poll covers a lost
//! connection anyway).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::Client;

use super::pg_pool::PgConn;

#[derive(Default)]
struct Pending {
    statements: BTreeSet<&'static str>,
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// The sender thread of one store; it stops when this is dropped.
pub(super) struct AfterCommitSender {
    shared: Arc<Shared>,
    url: String,
    schema: Option<String>,
    started: std::sync::Once,
}

impl AfterCommitSender {
    pub(super) fn new(url: &str, schema: Option<&str>) -> AfterCommitSender {
        AfterCommitSender {
            shared: Arc::default(),
            url: url.to_string(),
            schema: schema.map(str::to_string),
            started: std::sync::Once::new(),
        }
    }

    /// Marks `statement` to be sent once after now; never blocks on the network.
    pub(super) fn request(&self, statement: &'static str) {
        self.start_once();
        self.shared.pending.lock().statements.insert(statement);
        self.shared.wake.notify_one();
    }

    fn start_once(&self) {
        self.started.call_once(|| {
            let (url, schema) = (self.url.clone(), self.schema.clone());
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("arcd-pg-notify".into())
                .spawn(move || send_loop(&shared, &url, schema.as_deref()));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "no thread for NOTIFY; other nodes follow by polling");
            }
        });
    }
}

impl Drop for AfterCommitSender {
    fn drop(&mut self) {
        self.shared.pending.lock().stopped = true;
        self.shared.wake.notify_one();
    }
}

/// Shortest time between two sends of the statements. A request in a quiet moment is sent at
/// once; while commits keep coming, they are announced once per gap rather than once per commit
/// (measured under createSim load: 1,732 NOTIFYs for 1,947 commits, each a transaction of its own
/// on the server and a wake-up of every listening node). Other nodes learn of a change at most
/// this much later, well inside the 200 ms propagation target.
const MIN_GAP: Duration = Duration::from_millis(5);

fn send_loop(shared: &Shared, url: &str, schema: Option<&str>) {
    let mut client: Option<Client> = None;
    let mut failing = false;
    let mut last_sent: Option<Instant> = None;
    loop {
        let statements = {
            let mut pending = shared.pending.lock();
            while pending.statements.is_empty() && !pending.stopped {
                shared.wake.wait(&mut pending);
            }
            if let Some(ready) = last_sent.map(|at| at + MIN_GAP) {
                while Instant::now() < ready && !pending.stopped {
                    shared.wake.wait_until(&mut pending, ready);
                }
            }
            if pending.stopped {
                return;
            }
            std::mem::take(&mut pending.statements)
        };
        last_sent = Some(Instant::now());
        for statement in statements {
            match send(&mut client, url, schema, statement) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("NOTIFY to other nodes works again");
                }
                Ok(()) => {}
                Err(e) => {
                    client = None;
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "NOTIFY to other nodes failed; they follow by polling until it works again");
                    }
                }
            }
        }
    }
}

fn send(
    client: &mut Option<Client>,
    url: &str,
    schema: Option<&str>,
    statement: &str,
) -> crate::store::Result<()> {
    let connected = match client {
        Some(c) if !c.is_closed() => c,
        _ => client.insert(PgConn::open(url, schema)?.client),
    };
    Ok(connected.batch_execute(statement)?)
}
