//! The generated API certificate: a sane lifetime, renewed at start when near expiry or when
//! `api.hostnames` changed, its key kept at 0600; an operator's own files are never touched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use arcd::config::Config;
use arcd::tls::{generated_paths, server_config};
use time::{Duration, OffsetDateTime};

struct CertInfo {
    names: BTreeSet<String>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

fn read_cert(path: &Path) -> CertInfo {
    let pem = std::fs::read(path).expect("certificate file");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    let mut names = BTreeSet::new();
    let san = cert
        .subject_alternative_name()
        .expect("SAN extension parses")
        .expect("SAN extension present");
    for name in &san.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => {
                names.insert(dns.to_string());
            }
            x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                let octets: [u8; 4] = (*bytes).try_into().expect("IPv4 SAN");
                names.insert(std::net::Ipv4Addr::from(octets).to_string());
            }
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    CertInfo {
        names,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|n| n.to_string()).collect()
}

/// Writes a self-signed pair for `names` that expires `expires_in` from now.
fn write_pair(cert: &Path, key: &Path, names: &[&str], expires_in: Duration) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(300);
    params.not_after = now + expires_in;
    let key_pair = rcgen::KeyPair::generate().expect("key");
    let certificate = params.self_signed(&key_pair).expect("certificate");
    std::fs::write(cert, certificate.pem()).expect("write cert");
    std::fs::write(key, key_pair.serialize_pem()).expect("write key");
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn generated_certificate_lives_one_to_two_years() {
    let dir = tempfile::tempdir().expect("tempdir");
    server_config(&Config::default().api, dir.path()).expect("tls");
    let cert = read_cert(&generated_paths(dir.path()).0);
    let lifetime = cert.not_after - cert.not_before;
    assert!(
        lifetime >= Duration::days(365) && lifetime <= Duration::days(730),
        "lifetime {lifetime}"
    );
    let now = OffsetDateTime::now_utc();
    assert!(cert.not_before <= now && now - cert.not_before < Duration::days(1));
    assert_eq!(cert.names, names(&["localhost", "127.0.0.1"]));
}

#[test]
fn changed_hostnames_give_a_new_certificate_with_the_new_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = generated_paths(dir.path());
    let mut api = Config::default().api;
    api.hostnames = vec!["a.example".into()];
    server_config(&api, dir.path()).expect("first start");
    assert_eq!(
        read_cert(&cert_path).names,
        names(&["a.example", "localhost", "127.0.0.1"])
    );
    let first_key = std::fs::read(&key_path).expect("key");
    // Same names again: kept as it is.
    server_config(&api, dir.path()).expect("same names");
    assert_eq!(std::fs::read(&key_path).expect("key"), first_key);

    api.hostnames = vec!["b.example".into(), "192.0.2.7".into()];
    server_config(&api, dir.path()).expect("restart with other names");
    assert_eq!(
        read_cert(&cert_path).names,
        names(&["b.example", "192.0.2.7", "localhost", "127.0.0.1"])
    );
    assert_ne!(std::fs::read(&key_path).expect("key"), first_key);
    assert_eq!(mode(&key_path), 0o600);
}

#[test]
fn certificate_near_expiry_is_renewed_and_a_fresh_one_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let (cert_path, key_path) = generated_paths(dir.path());
    let api = Config::default().api;

    write_pair(
        &cert_path,
        &key_path,
        &["localhost", "127.0.0.1"],
        Duration::days(10),
    );
    server_config(&api, dir.path()).expect("start");
    let renewed = read_cert(&cert_path);
    assert!(
        renewed.not_after - OffsetDateTime::now_utc() > Duration::days(300),
        "not renewed: expires {}",
        renewed.not_after
    );

    write_pair(
        &cert_path,
        &key_path,
        &["localhost", "127.0.0.1"],
        Duration::days(200),
    );
    let kept = std::fs::read(&cert_path).expect("cert");
    server_config(&api, dir.path()).expect("start");
    assert_eq!(std::fs::read(&cert_path).expect("cert"), kept);
}

#[test]
fn loose_generated_key_mode_is_restricted_to_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Config::default().api;
    server_config(&api, dir.path()).expect("first start");
    let (_, key_path) = generated_paths(dir.path());
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    server_config(&api, dir.path()).expect("second start");
    assert_eq!(mode(&key_path), 0o600);
}

#[test]
fn operator_certificate_files_are_never_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("mine.pem");
    let key_path = dir.path().join("mine.key");
    // Near expiry, other names and a loose key mode: all the operator's business.
    write_pair(&cert_path, &key_path, &["other.example"], Duration::days(5));
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (cert_before, key_before) = (
        std::fs::read(&cert_path).expect("cert"),
        std::fs::read(&key_path).expect("key"),
    );
    let mut api = Config::default().api;
    api.cert_file = Some(cert_path.clone());
    api.key_file = Some(key_path.clone());
    api.hostnames = vec!["a.example".into()];
    let data_dir = dir.path().join("data");
    server_config(&api, &data_dir).expect("tls with the operator's files");
    assert_eq!(std::fs::read(&cert_path).expect("cert"), cert_before);
    assert_eq!(std::fs::read(&key_path).expect("key"), key_before);
    assert_eq!(mode(&key_path), 0o640);
    let (generated_cert, generated_key) = generated_paths(&data_dir);
    assert!(!generated_cert.exists() && !generated_key.exists());
}
