//! TLS for the API: an operator-supplied certificate (never touched), or a self-signed one made
//! by rcgen and kept in the data directory. The generated one is valid for a year and made anew at
//! start when it expires within 30 days, when `api.hostnames` no longer matches its names, or
//! when it cannot be read; its key file is kept at mode 0600.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ApiConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("cannot restrict {path} to mode 0600: {source}")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Validity of a generated certificate.
pub const GENERATED_LIFETIME: time::Duration = time::Duration::days(365);
/// A generated certificate expiring sooner than this is replaced at start.
pub const RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// Paths of the generated certificate inside the data directory.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join("tls-cert.pem"), data_dir.join("tls-key.pem"))
}

/// Builds the server configuration, generating the self-signed pair when no file is configured and
/// none was generated before.
pub fn server_config(
    api: &ApiConfig,
    data_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (&api.cert_file, &api.key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let (cert, key) = generated_paths(data_dir);
            ensure_generated(&api.hostnames, &cert, &key)?;
            (cert, key)
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|_| TlsError::Pem {
            path: cert_path.clone(),
            what: "certificate",
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem {
            path: cert_path.clone(),
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path,
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| TlsError::Pem {
        path: key_path.clone(),
        what: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Names the generated certificate must carry: `api.hostnames` plus localhost and 127.0.0.1,
/// normalized (lower case, canonical IP form) so they compare with what a certificate holds.
fn wanted_names(hostnames: &[String]) -> BTreeSet<String> {
    hostnames
        .iter()
        .map(String::as_str)
        .chain(["localhost", "127.0.0.1"])
        .map(normalize_name)
        .collect()
}

fn normalize_name(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// What a generated certificate says about itself.
struct Generated {
    names: BTreeSet<String>,
    not_after: time::OffsetDateTime,
}

fn inspect(cert_path: &Path) -> Option<Generated> {
    let der = CertificateDer::pem_file_iter(cert_path)
        .ok()?
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    names.insert(normalize_name(dns));
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.insert(ip.map_or_else(|| hex::encode(bytes), |ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Some(Generated {
        names,
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// Why the generated pair must be made (anew), if it must.
fn renewal_reason(
    cert_path: &Path,
    key_path: &Path,
    wanted: &BTreeSet<String>,
    now: time::OffsetDateTime,
) -> Option<&'static str> {
    if !cert_path.exists() || !key_path.exists() {
        return Some("none yet");
    }
    let Some(current) = inspect(cert_path) else {
        return Some("the certificate cannot be read");
    };
    if &current.names != wanted {
        return Some("api.hostnames changed");
    }
    if current.not_after - now < RENEW_BEFORE {
        return Some("it expires within 30 days");
    }
    None
}

fn ensure_generated(
    hostnames: &[String],
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let wanted = wanted_names(hostnames);
    match renewal_reason(
        cert_path,
        key_path,
        &wanted,
        time::OffsetDateTime::now_utc(),
    ) {
        Some(reason) => generate(wanted, cert_path, key_path, reason),
        None => restrict_key_mode(key_path),
    }
}

/// A key file from an older arcd, or loosened by hand, goes back to 0600.
fn restrict_key_mode(key_path: &Path) -> Result<(), TlsError> {
    let denied = |source| TlsError::Permissions {
        path: key_path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(key_path)
        .map_err(denied)?
        .permissions()
        .mode()
        & 0o777;
    if mode != 0o600 {
        std::fs::set_permissions(key_path, std::fs::Permissions::from_mode(0o600))
            .map_err(denied)?;
        tracing::warn!(key = %key_path.display(), mode = format!("{mode:o}"), "TLS key file was readable by others; set to 0600");
    }
    Ok(())
}

fn generate(
    names: BTreeSet<String>,
    cert_path: &Path,
    key_path: &Path,
    reason: &str,
) -> Result<(), TlsError> {
    let mut params = rcgen::CertificateParams::new(names.into_iter().collect::<Vec<_>>())?;
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clients whose clocks run a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + GENERATED_LIFETIME;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    crate::fsutil::write_private(key_path, key.serialize_pem().as_bytes()).map_err(|source| {
        TlsError::Write {
            path: key_path.to_path_buf(),
            source,
        }
    })?;
    std::fs::write(cert_path, cert.pem()).map_err(|source| TlsError::Write {
        path: cert_path.to_path_buf(),
        source,
    })?;
    tracing::info!(cert = %cert_path.display(), reason, "generated a self-signed TLS certificate");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = Config::default().api;
        server_config(&api, dir.path()).expect("first");
        let (cert, key) = generated_paths(dir.path());
        let first = std::fs::read(&cert).expect("cert");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        server_config(&api, dir.path()).expect("second");
        assert_eq!(first, std::fs::read(&cert).expect("cert"));
    }

    #[test]
    fn bad_operator_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bogus = dir.path().join("bogus.pem");
        std::fs::write(&bogus, "not pem").expect("write");
        let mut api = Config::default().api;
        api.cert_file = Some(bogus.clone());
        api.key_file = Some(bogus.clone());
        let err = server_config(&api, dir.path()).expect_err("must fail");
        assert!(err.to_string().contains("bogus.pem"), "{err}");
    }
}
