//! PostgreSQL's wake-up for the follower: a `tokio-postgres` connection (same URL and TLS setup
//! as the store's blocking client) that LISTENs on the schema's outbox channel and wakes the
//! follower on each NOTIFY. Only a wake-up: a lost connection delays changes until the next poll
//! (the follower polls every second anyway), and is made again with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::outbox::NOTIFY_CHANNEL_SQL;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub(super) async fn listen_loop(url: String, schema: Option<String>, wake: Arc<Notify>) {
    let mut outage: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let ended = listen_once(&url, schema.as_deref(), &wake, &mut outage).await;
        // Whatever was notified while not listening is read now.
        wake.notify_one();
        if started.elapsed() > MAX_BACKOFF {
            backoff = FIRST_BACKOFF;
        }
        if outage.is_none() {
            match &ended {
                Ok(()) => tracing::warn!("the outbox LISTEN connection closed; listening again"),
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox LISTEN connection failed; listening again with backoff (the follower polls meanwhile)")
                }
            }
            outage = Some(Instant::now());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: LISTEN, then forward notifications until it ends.
async fn listen_once(
    url: &str,
    schema: Option<&str>,
    wake: &Arc<Notify>,
    outage: &mut Option<Instant>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let notified = wake.clone();
    // The connection object does the I/O; polling its messages drives it and yields NOTIFYs.
    // Aborted with this call (also when the follower stops and aborts the loop around it).
    let mut driver = AbortOnDrop(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => notified.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }));
    let listening = async {
        if let Some(schema) = schema {
            client
                .batch_execute(&format!("SET search_path TO \"{schema}\""))
                .await?;
        }
        let channel: String = client.query_one(NOTIFY_CHANNEL_SQL, &[]).await?.get(0);
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await?;
        Ok::<_, tokio_postgres::Error>(channel)
    };
    let channel = listening.await?;
    if let Some(since) = outage.take() {
        tracing::info!(
            outage_ms = since.elapsed().as_millis() as u64,
            "listening for outbox notifications again"
        );
    } else {
        tracing::debug!(%channel, "listening for outbox notifications");
    }
    wake.notify_one();
    let ended = (&mut driver.0).await;
    drop(client);
    match ended {
        Ok(result) => result,
        // Only an abort or a panic ends the task otherwise; neither is a connection error.
        Err(_) => Ok(()),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
