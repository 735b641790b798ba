//! Mosquitto (Debian's broker) on a loopback port for a test: one login (`funnel` /
//! `broker-pw`), no persistence, stopped by PID when dropped. Absent mosquitto is a skip, except
//! under ARCD_REQUIRE_E2E, where it fails the test.

/// Mosquitto on a loopback port with one login, stopped (by PID) on drop.
pub struct Mosquitto {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> Option<std::path::PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

pub fn start() -> Option<Mosquitto> {
    let Some(binary) = mosquitto_binary() else {
        assert!(
            std::env::var_os("ARCD_REQUIRE_E2E").is_none(),
            "mosquitto is not installed but ARCD_REQUIRE_E2E is set"
        );
        eprintln!("SKIPPED: mosquitto is not installed");
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("passwords");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["funnel", "broker-pw"])
        .status()
        .expect("mosquitto_passwd runs");
    assert!(made.success());
    let port = closed_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\n",
            passwords.display()
        ),
    )
    .expect("config");
    let child = std::process::Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    Some(Mosquitto {
        child,
        port,
        _dir: dir,
    })
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
