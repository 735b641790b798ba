//! TLS for the API: an operator-supplied certificate, or a self-signed one made by rcgen on first
//! start and kept in the data directory.

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
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

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
            if !cert.exists() || !key.exists() {
                generate(&api.hostnames, &cert, &key)?;
            }
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

fn generate(hostnames: &[String], cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let mut names: Vec<String> = hostnames.to_vec();
    for always in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == always) {
            names.push(always.to_string());
        }
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    crate::fsutil::write_private(key_path, certified.signing_key.serialize_pem().as_bytes())
        .map_err(|source| TlsError::Write {
            path: key_path.to_path_buf(),
            source,
        })?;
    std::fs::write(cert_path, certified.cert.pem()).map_err(|source| TlsError::Write {
        path: cert_path.to_path_buf(),
        source,
    })?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::os::unix::fs::PermissionsExt;

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
