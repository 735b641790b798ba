//! Funnel's asynchronous delivery: the device's answer does not wait for the destination. Each
//! message goes into a bounded queue and is delivered in the background; a destination that is
//! down or refuses costs counted, logged failures, never a waiting device.
//!
//! - MQTT: one client per (broker, login), QoS 1. The client's request channel is the bounded
//!   queue (`MQTT_QUEUE` messages per broker); a message counts as delivered when the broker's
//!   PUBACK arrives. The session is persistent (`clean_session = false`, a client id unique to
//!   this process), so messages in flight when a connection drops are sent again after the
//!   reconnect instead of being forgotten.
//! - HTTP(S) webhook: one shared queue (`WEBHOOK_QUEUE`), up to `WEBHOOK_CONCURRENCY` posts at
//!   once, `WEBHOOK_ATTEMPTS` tries per message with a growing pause; a 2xx answer is delivered.
//!
//! What is counted (also as `arcd_funnel_deliveries{result}`): `delivered`, `retried` (a webhook
//! try failed and another follows), `failed` (a webhook message given up, or an MQTT connection
//! attempt that failed), `dropped` (the queue was full: the device got 503).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, Method, Uri};
use base64::Engine as _;
use http_body_util::Full;
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use tokio::sync::{mpsc, Semaphore};

use super::beam::{tls_client_config, BeamClient};
use super::destination::{Secret, Target};
use crate::metrics;
use crate::store::now_ms;

pub const MQTT_QUEUE: usize = 10_000;
pub const WEBHOOK_QUEUE: usize = 10_000;
const WEBHOOK_CONCURRENCY: usize = 64;
const WEBHOOK_ATTEMPTS: u32 = 4;
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Pause after a failed MQTT connection attempt before the next one.
const MQTT_RECONNECT_PAUSE: Duration = Duration::from_secs(1);
const MQTT_INFLIGHT: u16 = 1000;
/// A broker client unused this long is closed (a group moved to another destination, or a
/// broker that never came up); the next message for it starts a new one.
const BROKER_IDLE_MS: i64 = 10 * 60 * 1000;
/// A webhook's answer is not used; reading more of it only costs memory.
const WEBHOOK_ANSWER_BYTES: usize = 64 * 1024;

/// Counts of this process's Funnel deliveries (tests read them; metrics export them).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

impl DeliveryStats {
    pub(crate) fn count(&self, result: &'static str) {
        let counter = match result {
            "delivered" => &self.delivered,
            "retried" => &self.retried,
            "failed" => &self.failed,
            _ => &self.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::funnel_delivery(result);
    }
}

/// The queue refused the message: the device is told at once.
#[derive(Debug, thiserror::Error)]
#[error("the Funnel delivery queue for this destination is full")]
pub struct QueueFull;

struct WebhookJob {
    url: String,
    secret: Option<Secret>,
    body: Bytes,
    attempt: u32,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BrokerKey {
    tls: bool,
    host: String,
    port: u16,
    secret: Option<Secret>,
}

/// One broker's client and when a message was last queued for it (UNIX ms).
struct Broker {
    client: AsyncClient,
    last_used: Arc<AtomicI64>,
}

type Brokers = Arc<Mutex<HashMap<BrokerKey, Broker>>>;

pub struct Delivery {
    webhooks: mpsc::Sender<WebhookJob>,
    brokers: Brokers,
    pub stats: Arc<DeliveryStats>,
    /// Distinguishes this process's MQTT sessions from another node's or an earlier run's.
    client_id_prefix: String,
}

impl Delivery {
    /// Starts the webhook workers on the current tokio runtime.
    pub fn start(http: BeamClient) -> Delivery {
        let (webhooks, queue) = mpsc::channel(WEBHOOK_QUEUE);
        let stats = Arc::new(DeliveryStats::default());
        tokio::spawn(run_webhooks(http, queue, webhooks.clone(), stats.clone()));
        Delivery {
            webhooks,
            brokers: Arc::new(Mutex::new(HashMap::new())),
            stats,
            client_id_prefix: format!("arcd-funnel-{:08x}", rand::random::<u32>()),
        }
    }

    /// Queues `envelope` for `target`; returns at once.
    pub fn submit(
        &self,
        target: &Target,
        secret: Option<Secret>,
        envelope: Vec<u8>,
    ) -> Result<(), QueueFull> {
        let queued = match target {
            Target::Http { url } => self
                .webhooks
                .try_send(WebhookJob {
                    url: url.clone(),
                    secret,
                    body: Bytes::from(envelope),
                    attempt: 1,
                })
                .is_ok(),
            Target::Mqtt {
                tls,
                host,
                port,
                topic,
            } => {
                let key = BrokerKey {
                    tls: *tls,
                    host: host.clone(),
                    port: *port,
                    secret,
                };
                let client = self.broker(key);
                client
                    .try_publish(topic.as_str(), QoS::AtLeastOnce, false, envelope)
                    .is_ok()
            }
        };
        if queued {
            Ok(())
        } else {
            self.stats.count("dropped");
            tracing::warn!(service = "funnel", "delivery queue full: message refused");
            Err(QueueFull)
        }
    }

    /// The client of one broker and login, started on first use.
    fn broker(&self, key: BrokerKey) -> AsyncClient {
        let mut brokers = self.brokers.lock();
        if let Some(broker) = brokers.get(&key) {
            broker.last_used.store(now_ms(), Ordering::Relaxed);
            return broker.client.clone();
        }
        let client_id = format!("{}-{}", self.client_id_prefix, brokers.len());
        let mut options = MqttOptions::new(client_id, key.host.clone(), key.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_inflight(MQTT_INFLIGHT);
        if let Some(Secret::Login { username, password }) = &key.secret {
            options.set_credentials(username.clone(), password.clone());
        }
        if key.tls {
            options.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls_client_config()),
            ));
        }
        let (client, eventloop) = AsyncClient::new(options, MQTT_QUEUE);
        let last_used = Arc::new(AtomicI64::new(now_ms()));
        tokio::spawn(run_broker(
            key.clone(),
            eventloop,
            self.stats.clone(),
            self.brokers.clone(),
            last_used.clone(),
        ));
        brokers.insert(
            key,
            Broker {
                client: client.clone(),
                last_used,
            },
        );
        client
    }
}

/// Drives one broker connection: counts PUBACKs, reconnects after a pause when it fails (the
/// failure logged once until the connection is back), and ends once the client has been idle
/// for `BROKER_IDLE_MS` (keep-alive pings, or the retries of a failing connection, wake it at
/// least every 30 s to notice).
async fn run_broker(
    key: BrokerKey,
    mut eventloop: rumqttc::EventLoop,
    stats: Arc<DeliveryStats>,
    brokers: Brokers,
    last_used: Arc<AtomicI64>,
) {
    let broker = format!("{}:{}", key.host, key.port);
    let mut connected = false;
    let mut failing = false;
    loop {
        if now_ms() - last_used.load(Ordering::Relaxed) > BROKER_IDLE_MS {
            let mut brokers = brokers.lock();
            // Checked again under the lock: a message queued meanwhile keeps the client.
            if now_ms() - last_used.load(Ordering::Relaxed) > BROKER_IDLE_MS {
                brokers.remove(&key);
                tracing::info!(service = "funnel", %broker, "idle MQTT client closed");
                return;
            }
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => stats.count("delivered"),
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if !connected {
                    tracing::info!(service = "funnel", %broker, session_present = ack.session_present, "MQTT broker connected");
                }
                connected = true;
                failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                stats.count("failed");
                if !failing {
                    tracing::warn!(service = "funnel", %broker, error = %e, "MQTT delivery failing; retrying every second");
                }
                failing = true;
                connected = false;
                tokio::time::sleep(MQTT_RECONNECT_PAUSE).await;
            }
        }
    }
}

async fn run_webhooks(
    http: BeamClient,
    mut queue: mpsc::Receiver<WebhookJob>,
    requeue: mpsc::Sender<WebhookJob>,
    stats: Arc<DeliveryStats>,
) {
    let slots = Arc::new(Semaphore::new(WEBHOOK_CONCURRENCY));
    while let Some(job) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (http, requeue, stats) = (http.clone(), requeue.clone(), stats.clone());
        tokio::spawn(async move {
            let outcome = post(&http, &job).await;
            drop(slot);
            match outcome {
                Ok(()) => stats.count("delivered"),
                Err(error) if job.attempt < WEBHOOK_ATTEMPTS => {
                    stats.count("retried");
                    tracing::info!(service = "funnel", url = %redacted(&job.url), attempt = job.attempt, %error, "webhook delivery failed; will retry");
                    tokio::time::sleep(FIRST_RETRY_PAUSE * 2u32.pow(job.attempt - 1)).await;
                    let next = WebhookJob {
                        attempt: job.attempt + 1,
                        ..job
                    };
                    if requeue.try_send(next).is_err() {
                        stats.count("dropped");
                        tracing::warn!(service = "funnel", "delivery queue full: retry dropped");
                    }
                }
                Err(error) => {
                    stats.count("failed");
                    tracing::warn!(service = "funnel", url = %redacted(&job.url), attempts = job.attempt, %error, "webhook delivery given up");
                }
            }
        });
    }
}

async fn post(http: &BeamClient, job: &WebhookJob) -> Result<(), String> {
    let uri: Uri = job.url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let mut request = hyper::Request::new(Full::new(job.body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = authorization(job.secret.as_ref()) {
        headers.insert(header::AUTHORIZATION, value);
    }
    let (parts, _) = http
        .exchange(request, WEBHOOK_ANSWER_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    if parts.status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {}", parts.status))
    }
}

/// `Authorization` for an HTTP destination: Basic for a login, Bearer for a token.
pub fn authorization(secret: Option<&Secret>) -> Option<HeaderValue> {
    let value = match secret? {
        Secret::Login { username, password } => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        ),
        Secret::Token(token) => format!("Bearer {token}"),
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A URL for the log: scheme, host and path, without a query (which may carry a key).
fn redacted(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map(|a| a.host()).unwrap_or(""),
            uri.path()
        ),
        Err(_) => "<invalid URL>".into(),
    }
}
