//! The log filter: `RUST_LOG` or `log.level`, plus one directive that keeps boringtun's timer
//! messages out of the log. boringtun logs a device's routine session expiry
//! (`CONNECTION_EXPIRED`, no handshake for 9 minutes: a device that went away) at ERROR and
//! handshake retries at WARN, once per peer; with many devices those would drown real errors.
//! The data plane logs the expiry itself, at debug. Naming `boringtun` in the filter (e.g.
//! `info,boringtun=debug`) turns this off and shows boringtun's own lines.

use tracing_subscriber::filter::{EnvFilter, ParseError};

pub const BORINGTUN_TIMERS_OFF: &str = "boringtun::noise::timers=off";

/// The filter for `spec` (tracing-subscriber syntax; empty means `info`).
pub fn filter(spec: &str) -> Result<EnvFilter, ParseError> {
    let spec = match spec.trim() {
        "" => "info",
        spec => spec,
    };
    let spec = if spec.contains("boringtun") {
        spec.to_string()
    } else {
        format!("{spec},{BORINGTUN_TIMERS_OFF}")
    };
    EnvFilter::try_new(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a subscriber with `filter` writes for boringtun's expiry message and two others.
    fn logged(filter: EnvFilter) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // Exactly what boringtun 0.7 emits from its timers module.
            tracing::error!(
                target: "boringtun::noise::timers",
                "CONNECTION_EXPIRED(REJECT_AFTER_TIME * 3)"
            );
            tracing::warn!(target: "boringtun::noise::timers", "HANDSHAKE(REKEY_TIMEOUT)");
            tracing::error!(target: "boringtun::device", "real boringtun error");
            tracing::error!(target: "arcd::dataplane", "real arcd error");
        });
        let bytes = captured.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn routine_session_expiry_is_not_logged_as_an_error() {
        for spec in ["info", "warn", "debug", "arcd=debug,info", ""] {
            let out = logged(filter(spec).expect("valid filter"));
            assert!(!out.contains("CONNECTION_EXPIRED"), "{spec}: {out}");
            assert!(!out.contains("REKEY_TIMEOUT"), "{spec}: {out}");
            assert!(out.contains("real arcd error"), "{spec}: {out}");
            assert!(out.contains("real boringtun error"), "{spec}: {out}");
        }
        // The plain level filter arcd used before lets the expiry through at ERROR.
        let out = logged(EnvFilter::new("info"));
        assert!(
            out.contains("ERROR") && out.contains("CONNECTION_EXPIRED"),
            "{out}"
        );
    }

    #[test]
    fn naming_boringtun_shows_its_own_lines() {
        let out = logged(filter("info,boringtun=debug").expect("valid filter"));
        assert!(out.contains("CONNECTION_EXPIRED"), "{out}");
    }

    #[test]
    fn invalid_spec_is_an_error() {
        assert!(filter("info,=[").is_err());
    }
}
