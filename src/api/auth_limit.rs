//! Failed `POST /v1/auth` per client address: after `api.auth_failure_limit` 401 answers within
//! `api.auth_failure_window_seconds` (counted from the address's first failure), the address gets
//! 429 with Retry-After on every `POST /v1/auth` until the window ends, good credentials
//! included, so a guesser cannot tell a hit from a miss while limited.
//!
//! Memory is bounded: at most `MAX_SOURCES` addresses are tracked; when full, expired windows are
//! dropped first, then the window closest to its end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use super::error::ApiError;
use crate::config::ApiConfig;

const MAX_SOURCES: usize = 10_000;

pub struct AuthFailureLimiter {
    limit: u32,
    window: Duration,
    sources: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl AuthFailureLimiter {
    pub fn new(limit: u32, window: Duration) -> AuthFailureLimiter {
        AuthFailureLimiter {
            limit,
            window,
            sources: Mutex::new(HashMap::new()),
        }
    }

    pub fn from_config(api: &ApiConfig) -> Arc<AuthFailureLimiter> {
        Arc::new(Self::new(
            api.auth_failure_limit,
            Duration::from_secs(api.auth_failure_window_seconds),
        ))
    }

    /// Time until `source` may try again, when it is limited now.
    pub fn blocked_for(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let sources = self.sources.lock();
        let window = sources.get(&source)?;
        let ends = window.started + self.window;
        (window.failures >= self.limit && now < ends).then(|| ends - now)
    }

    pub fn record_failure(&self, source: IpAddr, now: Instant) {
        let mut sources = self.sources.lock();
        if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
            let window = self.window;
            sources.retain(|_, w| now.duration_since(w.started) < window);
            if sources.len() >= MAX_SOURCES {
                let oldest = sources
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(ip, _)| *ip);
                if let Some(ip) = oldest {
                    sources.remove(&ip);
                }
            }
        }
        let window = sources.entry(source).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= self.window {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    #[cfg(test)]
    fn tracked_sources(&self) -> usize {
        self.sources.lock().len()
    }
}

/// Middleware on `POST /v1/auth`. Needs the connection's `ConnectInfo<SocketAddr>` (set by the
/// listener); a request without one (in-process calls) is not limited.
pub async fn limit_failures(
    State(limiter): State<Arc<AuthFailureLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let Some(source) = source else {
        return next.run(request).await;
    };
    if let Some(wait) = limiter.blocked_for(source, Instant::now()) {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "COM0009",
            format!("too many failed sign-ins from this address; retry in {seconds} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        limiter.record_failure(source, Instant::now());
        tracing::info!(%source, "failed sign-in counted");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_after_the_allowed_failures_until_the_window_ends() {
        let limiter = AuthFailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..2 {
            limiter.record_failure(ip, t0);
        }
        assert_eq!(limiter.blocked_for(ip, t0), None);
        limiter.record_failure(ip, t0);
        assert_eq!(
            limiter.blocked_for(ip, t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(limiter.blocked_for(other, t0), None);
        assert_eq!(limiter.blocked_for(ip, t0 + Duration::from_secs(60)), None);
        // A failure after the window starts a new one.
        limiter.record_failure(ip, t0 + Duration::from_secs(61));
        assert_eq!(limiter.blocked_for(ip, t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn memory_is_bounded() {
        let limiter = AuthFailureLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 500) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limiter.record_failure(ip, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(limiter.tracked_sources(), MAX_SOURCES);
        let newest = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_SOURCES as u32 + 499,
        ));
        assert!(limiter
            .blocked_for(newest, t0 + Duration::from_secs(1))
            .is_some());
    }
}
