//! Readiness and stop notifications for systemd (`Type=notify` in packaging/arcd.service), over
//! the `sd_notify` protocol: a datagram to the socket named by `NOTIFY_SOCKET`.
//!
//! Without `NOTIFY_SOCKET` (arcd started by hand, by a test or by another supervisor) both calls
//! do nothing. A failed notification is logged and otherwise ignored: arcd keeps serving, and
//! systemd reports the missing readiness itself (start timeout).

use sd_notify::NotifyState;

/// Tells the service manager that `arcd serve` is serving: the store is open and every listener
/// (API, rendezvous points' UDP sockets, platform services), the TUN device and the control
/// sockets are bound. Until then `systemctl start arcd` waits, and units ordered after arcd do
/// not start.
pub fn ready() {
    send(NotifyState::Ready);
}

/// [`ready`], then never completes: the last branch of a `biased` `select!` whose earlier branch
/// installs the shutdown signal handlers on its first poll, so READY=1 is only sent once a SIGTERM
/// would be handled (before that, SIGTERM's default action kills the process outright).
pub async fn ready_then_wait() {
    ready();
    std::future::pending::<()>().await
}

/// Tells the service manager that arcd has begun to shut down (SIGTERM/SIGINT received), so
/// `systemctl status` shows "deactivating" while arcd closes its listeners and the store.
pub fn stopping() {
    send(NotifyState::Stopping);
}

fn send(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        tracing::warn!(state = %state, error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
