//! Raw TCP and UDP entry points (Funnel's and the unified endpoint's port 23080): a UDP datagram
//! is one message; on TCP a message ends at a newline, at a pause of the device, or at the end of
//! the connection. Every message gets the handler's reply on the same socket.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Largest message a device may send (TCP message or UDP datagram).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const MESSAGE_PAUSE: Duration = Duration::from_millis(200);
const IDLE: Duration = Duration::from_secs(60);

pub type Reply = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;
/// Answers one message from a device address.
pub type Handler = Arc<dyn Fn(SocketAddr, Vec<u8>) -> Reply + Send + Sync>;

pub async fn serve_udp(service: &'static str, socket: UdpSocket, handler: Handler) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, remote) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(service, error = %e, "UDP receive failed");
                continue;
            }
        };
        let message = buf[..len].to_vec();
        let (socket, handler) = (socket.clone(), handler.clone());
        tokio::spawn(async move {
            let reply = handler(remote, trim(message)).await;
            let _ = socket.send_to(&reply, remote).await;
        });
    }
}

pub async fn serve_tcp(service: &'static str, listener: TcpListener, handler: Handler) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                tokio::spawn(serve_connection(stream, remote, handler.clone()));
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The message without its line end.
fn trim(mut message: Vec<u8>) -> Vec<u8> {
    if message.last() == Some(&b'\n') {
        message.pop();
        if message.last() == Some(&b'\r') {
            message.pop();
        }
    }
    message
}

async fn serve_connection(mut stream: TcpStream, remote: SocketAddr, handler: Handler) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let wait = if pending.is_empty() {
            IDLE
        } else {
            MESSAGE_PAUSE
        };
        let ended = match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                pending.extend_from_slice(&chunk[..n]);
                false
            }
            Err(_) if pending.is_empty() => return,
            Err(_) => {
                let message = std::mem::take(&mut pending);
                if !answer(&mut stream, remote, &handler, message).await {
                    return;
                }
                continue;
            }
        };
        while let Some(newline) = pending.iter().position(|b| *b == b'\n') {
            let rest = pending.split_off(newline + 1);
            let message = std::mem::replace(&mut pending, rest);
            if !answer(&mut stream, remote, &handler, message).await {
                return;
            }
        }
        if pending.len() > MAX_MESSAGE_BYTES {
            let _ = stream.write_all(b"413 The message is too large.\n").await;
            return;
        }
        if ended {
            if !pending.is_empty() {
                answer(&mut stream, remote, &handler, std::mem::take(&mut pending)).await;
            }
            return;
        }
    }
}

/// Answers one message; blank lines are not messages. False once the device is gone.
async fn answer(
    stream: &mut TcpStream,
    remote: SocketAddr,
    handler: &Handler,
    message: Vec<u8>,
) -> bool {
    let message = trim(message);
    if message.iter().all(|b| *b == b'\r') {
        return true;
    }
    let reply = handler(remote, message).await;
    stream.write_all(&reply).await.is_ok()
}
