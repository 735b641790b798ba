//! DNS inside the tunnel at 100.127.0.53:53 (UDP and TCP). Devices resolve the platform names
//! (`harvest.soracom.io`, `metadata.<local domain>`, ...) to arcd's fixed addresses; every other
//! name goes to the configured upstream resolvers.
//!
//! Messages are parsed and built with hickory-proto: the input comes from any device in the
//! network, and a maintained DNS codec is a far smaller risk than hand-packed bytes.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::{BEAM, ENDORSE, HARVEST, PONG_AND_METADATA, UNIFIED};

pub const FUNNEL: Ipv4Addr = super::FUNNEL;
pub const NTP: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 123);

/// First labels of the platform names, each answered under `soracom.io` and the local domain.
const PLATFORM_NAMES: [(&str, Ipv4Addr); 10] = [
    ("metadata", PONG_AND_METADATA),
    ("pong", PONG_AND_METADATA),
    ("harvest", HARVEST),
    ("beam", BEAM),
    ("uni", UNIFIED),
    ("unified", UNIFIED),
    ("funnel", FUNNEL),
    // SORACOM publishes no address for Funk; the unified endpoint is the entry arcd offers for it.
    ("funk", UNIFIED),
    ("ntp", NTP),
    ("endorse", ENDORSE),
];

const TTL: u32 = 60;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest UDP answer sent even when a client's EDNS offers more: the DNS Flag Day 2020 size,
/// which crosses the tunnel (MTU 1280 and up) without IP fragmentation.
pub const UDP_PAYLOAD_CEILING: usize = 1232;
/// Forwards in flight at once over UDP: each holds a socket and a buffer for up to 2 s.
const MAX_FORWARDS_IN_FLIGHT: usize = 256;
const MAX_TCP_CONNECTIONS: usize = 256;

#[derive(Debug)]
pub struct DnsService {
    names: Vec<(Name, Ipv4Addr)>,
    upstreams: Vec<SocketAddr>,
    upstream_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What [`DnsService::answer_locally`] decided.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back to the client.
    Answer(Vec<u8>),
    /// Not a platform name: pass it to [`DnsService::forward`].
    Forward(Forward),
    /// Send nothing (no readable id, or the message was itself a response).
    Drop,
}

/// A well-formed query for a name arcd does not own.
#[derive(Debug)]
pub struct Forward {
    query: Message,
    /// Largest reply the client takes.
    limit: usize,
    over_tcp: bool,
}

impl Forward {
    pub fn id(&self) -> u16 {
        self.query.id()
    }

    pub fn name(&self) -> String {
        self.query
            .queries()
            .first()
            .map(|q| q.name().to_ascii())
            .unwrap_or_default()
    }

    /// The reply when no upstream gave an answer.
    pub fn servfail(&self) -> Option<Vec<u8>> {
        let reply = response_to(&self.query, ResponseCode::ServFail, None, true);
        fit(&reply, self.limit)
    }
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("unreadable DNS message: {0}")]
    Proto(#[from] ProtoError),
    #[error("answer over TCP does not match the query")]
    Mismatch,
    #[error("answered {0}")]
    Failed(ResponseCode),
}

impl DnsService {
    pub fn new(local_domain: &str, upstreams: Vec<SocketAddr>) -> DnsService {
        let local_domain = local_domain.trim_matches('.');
        let mut names = Vec::with_capacity(PLATFORM_NAMES.len() * 2);
        for domain in ["soracom.io", local_domain] {
            for (label, address) in PLATFORM_NAMES {
                match Name::from_ascii(format!("{label}.{domain}.")) {
                    Ok(name) => names.push((name, address)),
                    // Config validation rejects such domains; the soracom.io names still work.
                    Err(error) => {
                        warn!(domain, %error, "DNS: local domain is not a DNS name, ignored");
                        break;
                    }
                }
            }
        }
        DnsService {
            names,
            upstreams,
            upstream_timeout: UPSTREAM_TIMEOUT,
        }
    }

    /// How long each upstream gets (2 s by default); tests use a short one.
    pub fn with_upstream_timeout(mut self, timeout: Duration) -> DnsService {
        self.upstream_timeout = timeout;
        self
    }

    /// Pure: answers a query from the platform names, or says it must be forwarded. Never panics.
    /// `max_udp_len` is None over TCP; over UDP it is arcd's own ceiling, and the answer is further
    /// held to the client's size (512 bytes unless its EDNS offers more).
    pub fn answer_locally(&self, query: &[u8], max_udp_len: Option<usize>) -> Outcome {
        let header = match Header::read(&mut BinDecoder::new(query)) {
            Ok(header) => header,
            // A cut-short header still names its id, so the client can stop waiting.
            Err(_) => {
                return match BinDecoder::new(query).read_u16() {
                    Ok(id) => {
                        let id = id.unverified(/*any u16 is a valid id*/);
                        debug!(id, "DNS: truncated header, FORMERR");
                        error_reply(id, OpCode::Query, ResponseCode::FormErr)
                    }
                    Err(_) => Outcome::Drop,
                };
            }
        };
        // Replying to a response lets two servers bounce errors at each other forever.
        if header.message_type() == MessageType::Response {
            debug!(id = header.id(), "DNS: got a response, dropped");
            return Outcome::Drop;
        }
        if header.op_code() != OpCode::Query {
            debug!(id = header.id(), op = ?header.op_code(), "DNS: opcode not supported, NOTIMP");
            return error_reply(header.id(), header.op_code(), ResponseCode::NotImp);
        }
        let message = match Message::from_vec(query) {
            Ok(message) if message.queries().len() == 1 => message,
            Ok(_) | Err(_) => {
                debug!(id = header.id(), "DNS: malformed query, FORMERR");
                return error_reply(header.id(), OpCode::Query, ResponseCode::FormErr);
            }
        };
        let Some(question) = message.queries().first() else {
            return error_reply(header.id(), OpCode::Query, ResponseCode::FormErr);
        };
        let name = question.name();
        let record_type = question.query_type();
        let Some(address) = self.platform_address(name) else {
            if self.upstreams.is_empty() {
                debug!(%name, %record_type, "DNS: not a platform name and no upstream, REFUSED");
                let reply = response_to(&message, ResponseCode::Refused, None, false);
                let limit = size_limit(&message, max_udp_len);
                return fit(&reply, limit).map_or(Outcome::Drop, Outcome::Answer);
            }
            return Outcome::Forward(Forward {
                limit: size_limit(&message, max_udp_len),
                over_tcp: max_udp_len.is_none(),
                query: message,
            });
        };
        let wanted = matches!(record_type, RecordType::A | RecordType::ANY)
            && matches!(question.query_class(), DNSClass::IN | DNSClass::ANY);
        // The name exists whatever the type asked, so other types get NOERROR without records.
        let answer = wanted.then(|| Record::from_rdata(name.clone(), TTL, RData::A(A(address))));
        debug!(%name, %record_type, %address, answered = wanted, "DNS: platform name");
        let mut reply = response_to(
            &message,
            ResponseCode::NoError,
            answer,
            !self.upstreams.is_empty(),
        );
        reply.set_authoritative(true);
        fit(&reply, size_limit(&message, max_udp_len)).map_or(Outcome::Drop, Outcome::Answer)
    }

    /// Full handling incl. forwarding (async).
    pub async fn handle(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let max_udp_len = match transport {
            Transport::Udp => Some(UDP_PAYLOAD_CEILING),
            Transport::Tcp => None,
        };
        match self.answer_locally(query, max_udp_len) {
            Outcome::Answer(reply) => Some(reply),
            Outcome::Drop => None,
            Outcome::Forward(forward) => self.forward(forward).await,
        }
    }

    /// Asks the upstreams in order; the first real answer goes back with the client's id.
    pub async fn forward(&self, forward: Forward) -> Option<Vec<u8>> {
        let name = forward.name();
        for upstream in &self.upstreams {
            match self.ask(*upstream, &forward).await {
                Ok(mut answer) => {
                    answer.set_id(forward.id());
                    debug!(%name, %upstream, code = %answer.response_code(), "DNS: forwarded");
                    return fit(&answer, forward.limit);
                }
                Err(error) => debug!(%name, %upstream, %error, "DNS: upstream failed"),
            }
        }
        debug!(%name, "DNS: no upstream answered, SERVFAIL");
        forward.servfail()
    }

    fn platform_address(&self, name: &Name) -> Option<Ipv4Addr> {
        // Case-insensitive, and indifferent to whether the name ends in a dot.
        self.names
            .iter()
            .find(|(known, _)| known.eq_ignore_root(name))
            .map(|(_, address)| *address)
    }

    async fn ask(&self, upstream: SocketAddr, forward: &Forward) -> Result<Message, ForwardError> {
        let exchange = exchange(upstream, &forward.query, forward.over_tcp);
        let answer = tokio::time::timeout(self.upstream_timeout, exchange)
            .await
            .map_err(|_| ForwardError::Timeout(self.upstream_timeout))??;
        // Another upstream may know better; these two codes are the resolver's own trouble.
        match answer.response_code() {
            code @ (ResponseCode::ServFail | ResponseCode::Refused) => {
                Err(ForwardError::Failed(code))
            }
            _ => Ok(answer),
        }
    }
}

/// One query to one upstream over UDP, retried over TCP when the answer comes back truncated
/// and the client itself asked over TCP (a UDP client gets the truncated answer and retries).
async fn exchange(
    upstream: SocketAddr,
    query: &Message,
    over_tcp: bool,
) -> Result<Message, ForwardError> {
    // Our own id: clients' ids collide with one another and must not be guessable upstream.
    let id: u16 = rand::random();
    let mut outgoing = query.clone();
    outgoing.set_id(id);
    let bytes = outgoing.to_vec()?;

    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(&bytes).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    let answer = loop {
        let len = socket.recv(&mut buf).await?;
        // Stray or forged datagrams do not match; keep waiting for the real one until the timeout.
        if let Some(answer) = Message::from_vec(&buf[..len])
            .ok()
            .filter(|answer| answers(answer, id, query))
        {
            break answer;
        }
    };
    if !(answer.truncated() && over_tcp) {
        return Ok(answer);
    }

    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, &bytes).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    let answer = Message::from_vec(&buf)?;
    if answers(&answer, id, query) {
        Ok(answer)
    } else {
        Err(ForwardError::Mismatch)
    }
}

fn answers(answer: &Message, id: u16, query: &Message) -> bool {
    answer.message_type() == MessageType::Response
        && answer.id() == id
        && answer.queries() == query.queries()
}

fn response_to(
    query: &Message,
    code: ResponseCode,
    answer: Option<Record>,
    recursion_available: bool,
) -> Message {
    let mut header = Header::response_from_request(query.header());
    header
        .set_response_code(code)
        .set_recursion_available(recursion_available);
    let mut reply = Message::new();
    reply.set_header(header);
    reply.add_queries(query.queries().iter().cloned());
    reply.add_answers(answer);
    // RFC 6891: a query with EDNS gets EDNS back, stating what arcd accepts.
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD_CEILING as u16);
        reply.set_edns(edns);
    }
    reply
}

fn error_reply(id: u16, op_code: OpCode, code: ResponseCode) -> Outcome {
    fit(
        &Message::error_msg(id, op_code, code),
        usize::from(u16::MAX),
    )
    .map_or(Outcome::Drop, Outcome::Answer)
}

/// The largest reply a query may get: over UDP the smaller of arcd's ceiling and what the client
/// offered (512 bytes unless its EDNS says more), over TCP (None) what the 2-byte frame holds.
fn size_limit(query: &Message, max_udp_len: Option<usize>) -> usize {
    match max_udp_len {
        Some(ours) => ours.min(usize::from(query.max_payload())),
        None => usize::from(u16::MAX),
    }
}

/// Encodes `reply` within `limit`; too big → the truncated form (question only, TC set), which
/// tells a UDP client to retry over TCP.
fn fit(reply: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    reply
        .truncate()
        .to_vec()
        .ok()
        .filter(|bytes| bytes.len() <= limit)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message over 65535 bytes"))?;
    // One write, so length and message leave in one segment.
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}

/// Answers platform names inline and forwards the rest on spawned tasks, so a slow upstream
/// never holds up local answers.
pub async fn serve_udp(service: Arc<DnsService>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT));
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors from earlier sends surface here; the service goes on, without spinning.
                debug!(%error, "DNS: UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let reply = match service.answer_locally(&buf[..len], Some(UDP_PAYLOAD_CEILING)) {
            Outcome::Answer(reply) => Some(reply),
            Outcome::Drop => None,
            Outcome::Forward(forward) => match forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (service, socket) = (service.clone(), socket.clone());
                    tokio::spawn(async move {
                        if let Some(reply) = service.forward(forward).await {
                            send_udp(&socket, &reply, client).await;
                        }
                        drop(permit);
                    });
                    None
                }
                // Overloaded: a quick SERVFAIL beats a client waiting out its own timeout.
                Err(_) => forward.servfail(),
            },
        };
        if let Some(reply) = reply {
            send_udp(&socket, &reply, client).await;
        }
    }
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], client: SocketAddr) {
    crate::metrics::dns_reply(reply);
    if let Err(error) = socket.send_to(reply, client).await {
        debug!(%client, %error, "DNS: UDP send failed");
    }
}

/// Length-framed queries, several per connection, answered in order.
pub async fn serve_tcp(service: Arc<DnsService>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: wait for some to free up rather than spin.
                debug!(%error, "DNS: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%client, "DNS: too many TCP connections, closed");
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(&service, stream).await {
                debug!(%client, %error, "DNS: TCP connection ended");
            }
            drop(permit);
        });
    }
}

async fn serve_connection(service: &DnsService, mut stream: TcpStream) -> io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Err(_idle) => return Ok(()),
            Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(read) => read?,
        };
        let mut query = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query cut short"))??;
        if let Some(reply) = service.handle(&query, Transport::Tcp).await {
            crate::metrics::dns_reply(&reply);
            write_framed(&mut stream, &reply).await?;
        }
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
