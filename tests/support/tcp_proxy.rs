//! A TCP relay between arcd and the test PostgreSQL server that a test can cut and restore: the
//! database "goes away" for one arcd (its connections reset, new ones closed at once) without
//! stopping the server the other tests share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let relays: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let open = open.clone();
            let relays = relays.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let relay = tokio::spawn(relay(client, upstream));
                    let mut relays = relays.lock().unwrap_or_else(|p| p.into_inner());
                    relays.retain(|r| !r.is_finished());
                    relays.push(relay);
                }
            }
        });
        TcpProxy {
            addr,
            open,
            relays,
            accept,
        }
    }

    /// Closes every relayed connection and every new one from now on.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let relays = std::mem::take(&mut *self.relays.lock().unwrap_or_else(|p| p.into_inner()));
        for relay in relays {
            relay.abort();
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    if let Ok(mut server) = TcpStream::connect(upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}

/// The `host:port` of a `postgres://user@host:port/db?...` URL, and the URL with that part
/// replaced by `to`.
pub fn redirect_postgres_url(url: &str, to: SocketAddr) -> (SocketAddr, String) {
    let scheme_end = url.find("://").expect("postgres:// URL") + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let upstream: SocketAddr = authority[host_start..]
        .parse()
        .expect("the test URL names host:port (scripts/lib/postgres.sh's PG_URL)");
    let redirected = format!(
        "{}{}{to}{}",
        &url[..scheme_end],
        &authority[..host_start],
        &rest[authority_end..]
    );
    (upstream, redirected)
}
