//! Optional egress NAT (`egress.masquerade`, off by default): devices reach networks beyond the
//! rendezvous point with the host's address. arcd sets it up itself through nftables and removes
//! it again on shutdown:
//!
//! - `table ip arcd` with one `postrouting` nat chain that masquerades traffic from the client
//!   pools leaving through any interface other than the TUN device, loaded atomically with
//!   `nft -f -` (a table left by a crashed arcd is replaced in the same transaction);
//! - `net.ipv4.ip_forward = 1`, the previous value being restored when the NAT is removed.
//!
//! What is not done here: when another firewall (Docker's, a host firewall) drops forwarded
//! traffic in its own forward chain, an accept in arcd's table cannot override that drop; the
//! operator has to allow the TUN device's traffic there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use super::interface_name;

const TABLE: &str = "arcd";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Why egress NAT could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "egress NAT (`egress.masquerade`) needs the `nft` command, which was not found: install nftables (Debian/Ubuntu: `apt-get install nftables`)"
    )]
    NftMissing,
    #[error(
        "egress NAT (`egress.masquerade`) needs root or CAP_NET_ADMIN ({detail}): run arcd as root (a `setcap` capability on arcd is not enough here: it does not pass to the `nft` command)"
    )]
    PermissionDenied { detail: String },
    #[error("egress NAT: `{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("egress NAT: cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("egress NAT: {0}")]
    Invalid(String),
}

/// The egress NAT arcd set up. [`Egress::disable`] or dropping it removes the nftables table and
/// restores `net.ipv4.ip_forward`.
#[derive(Debug)]
pub struct Egress {
    netns: Option<String>,
    nft: PathBuf,
    /// The value of ip_forward before `enable`, when `enable` changed it.
    restore_ip_forward: Option<String>,
    pools: Vec<Ipv4Net>,
    tun_name: String,
    active: bool,
}

/// Sets up egress NAT in the current network namespace; see [`enable_in`].
pub fn enable(pools: &[Ipv4Net], tun_name: &str) -> Result<Egress, EgressError> {
    enable_in(None, pools, tun_name)
}

/// Sets up egress NAT for traffic from `pools` leaving through any interface but `tun_name`.
/// With `netns`, every step runs inside that named network namespace (`ip netns exec`), which
/// is how the tests keep the host untouched.
pub fn enable_in(
    netns: Option<&str>,
    pools: &[Ipv4Net],
    tun_name: &str,
) -> Result<Egress, EgressError> {
    interface_name::validate(tun_name).map_err(|e| EgressError::Invalid(e.to_string()))?;
    if let Some(ns) = netns {
        validate_netns_name(ns)?;
    }
    let pools = Ipv4Net::aggregate(&pools.to_vec());
    if pools.is_empty() {
        return Err(EgressError::Invalid(
            "no client address pool to masquerade".to_owned(),
        ));
    }
    let nft = find_nft().ok_or(EgressError::NftMissing)?;
    let previous = read_ip_forward(netns)?;

    nft_apply(netns, &nft, &ruleset(&pools, tun_name))?;
    let mut egress = Egress {
        netns: netns.map(str::to_owned),
        nft,
        restore_ip_forward: None,
        pools,
        tun_name: tun_name.to_owned(),
        active: true,
    };
    if previous != "1" {
        // On failure `egress` drops here and takes the table away again.
        write_ip_forward(netns, "1")?;
        egress.restore_ip_forward = Some(previous);
    }
    tracing::info!(
        pools = %list(&egress.pools),
        tun = %egress.tun_name,
        netns = egress.netns.as_deref().unwrap_or("(host)"),
        "egress NAT on: masquerading client traffic that leaves through other interfaces (nftables table `ip {TABLE}`, net.ipv4.ip_forward = 1)"
    );
    Ok(egress)
}

impl Egress {
    /// The pools masqueraded (aggregated: overlapping or adjacent pools merged).
    pub fn pools(&self) -> &[Ipv4Net] {
        &self.pools
    }

    /// Masquerades exactly `networks` from now on (the pools plus the running VPGs' subnets),
    /// replacing the rule in one nftables transaction; on failure the previous rule stays.
    pub fn set_networks(&mut self, networks: &[Ipv4Net]) -> Result<(), EgressError> {
        let networks = Ipv4Net::aggregate(&networks.to_vec());
        if networks == self.pools || networks.is_empty() {
            return Ok(());
        }
        nft_apply(
            self.netns.as_deref(),
            &self.nft,
            &ruleset(&networks, &self.tun_name),
        )?;
        self.pools = networks;
        tracing::info!(networks = %list(&self.pools), "egress NAT now masquerades");
        Ok(())
    }

    /// Removes the table and restores ip_forward, reporting failures (dropping does the same
    /// and logs them).
    pub fn disable(mut self) -> Result<(), EgressError> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), EgressError> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        let netns = self.netns.as_deref();
        // `add` first so the delete succeeds even if someone removed the table meanwhile.
        let table = nft_apply(
            netns,
            &self.nft,
            &format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"),
        );
        let forward = match self.restore_ip_forward.take() {
            Some(previous) => write_ip_forward(netns, &previous),
            None => Ok(()),
        };
        table.and(forward)?;
        tracing::info!(
            netns = self.netns.as_deref().unwrap_or("(host)"),
            "egress NAT off"
        );
        Ok(())
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            tracing::warn!("removing egress NAT: {err}");
        }
    }
}

/// The nftables script: replaces any `ip arcd` table with the masquerade chain, atomically.
fn ruleset(pools: &[Ipv4Net], tun_name: &str) -> String {
    format!(
        "add table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tip saddr {{ {} }} oifname != \"{tun_name}\" masquerade comment \"arcd egress\"\n\
         \t}}\n\
         }}\n",
        list(pools)
    )
}

fn list(pools: &[Ipv4Net]) -> String {
    pools
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A namespace name goes into a command line (`ip netns exec`): keep it plain. (The TUN device's
/// name, which also goes into the nft script, follows the interface-name rule.)
fn validate_netns_name(name: &str) -> Result<(), EgressError> {
    if interface_name::is_plain(name, 64) {
        Ok(())
    } else {
        Err(EgressError::Invalid(format!(
            "network namespace name {name:?} must be letters, digits, `-`, `_` and `.`"
        )))
    }
}

/// `nft` on PATH or in the usual sbin directories (PATH of a plain user or service may lack them).
fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `program args…`, or `ip netns exec <ns> program args…`.
fn command(netns: Option<&str>, program: &Path, args: &[&str]) -> Command {
    match netns {
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program).args(args);
            cmd
        }
    }
}

/// Runs a command, feeding `stdin`, and returns its stdout.
fn run(mut cmd: Command, stdin: Option<&str>) -> Result<String, EgressError> {
    let shown = format!("{cmd:?}").replace('"', "");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_err = |source| EgressError::Spawn {
        command: shown.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows up as the command's own error below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
            return Err(EgressError::PermissionDenied {
                detail: format!("`{shown}`: {stderr}"),
            });
        }
        return Err(EgressError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft_apply(netns: Option<&str>, nft: &Path, script: &str) -> Result<(), EgressError> {
    run(command(netns, nft, &["-f", "-"]), Some(script)).map(drop)
}

fn read_ip_forward(netns: Option<&str>) -> Result<String, EgressError> {
    let value = match netns {
        None => std::fs::read_to_string(IP_FORWARD).map_err(|source| {
            permission_or(source, |source| EgressError::Spawn {
                command: format!("read {IP_FORWARD}"),
                source,
            })
        })?,
        Some(_) => run(command(netns, Path::new("cat"), &[IP_FORWARD]), None)?,
    };
    Ok(value.trim().to_owned())
}

fn write_ip_forward(netns: Option<&str>, value: &str) -> Result<(), EgressError> {
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_digit()) {
        return Err(EgressError::Invalid(format!(
            "unexpected net.ipv4.ip_forward value {value:?}"
        )));
    }
    match netns {
        None => std::fs::write(IP_FORWARD, format!("{value}\n")).map_err(|source| {
            permission_or(source, |source| EgressError::Spawn {
                command: format!("write {value} to {IP_FORWARD}"),
                source,
            })
        }),
        Some(_) => run(
            command(
                netns,
                Path::new("sh"),
                &["-c", &format!("echo {value} > {IP_FORWARD}")],
            ),
            None,
        )
        .map(drop),
    }
}

fn permission_or(
    source: std::io::Error,
    other: impl FnOnce(std::io::Error) -> EgressError,
) -> EgressError {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        EgressError::PermissionDenied {
            detail: format!("{IP_FORWARD}: {source}"),
        }
    } else {
        other(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tun_device::test_support::{require_root, unique_name};
    use std::time::{Duration, Instant};

    /// A network namespace deleted on drop, whatever the test did.
    struct Netns(String);

    impl Netns {
        fn new() -> Netns {
            let name = unique_name("arct-");
            sh(None, &format!("ip netns add {name}"));
            Netns(name)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// Runs a shell command (inside `netns`), panicking with its output on failure.
    fn sh(netns: Option<&str>, script: &str) -> String {
        try_sh(netns, script).unwrap_or_else(|err| panic!("{script}: {err}"))
    }

    fn try_sh(netns: Option<&str>, script: &str) -> Result<String, String> {
        let out = command(netns, Path::new("sh"), &["-c", script])
            .output()
            .expect("run sh");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn nft_table(netns: &str) -> Result<String, String> {
        try_sh(Some(netns), &format!("nft list table ip {TABLE}"))
    }

    fn pools() -> Vec<Ipv4Net> {
        vec![
            "10.64.0.0/16".parse().unwrap(),
            "10.128.0.0/9".parse().unwrap(),
        ]
    }

    fn require_nft() {
        assert!(
            find_nft().is_some(),
            "the egress tests need `nft`: install nftables (apt-get install -y --no-install-recommends nftables)"
        );
    }

    #[test]
    #[ignore = "needs root: network namespace and nftables"]
    fn enable_then_disable_inside_a_netns() {
        require_root("enable_then_disable_inside_a_netns");
        require_nft();
        let host_forward = std::fs::read_to_string(IP_FORWARD).unwrap();
        let host_has_table = try_sh(None, &format!("nft list table ip {TABLE}")).is_ok();
        let ns = Netns::new();
        sh(Some(&ns.0), &format!("echo 0 > {IP_FORWARD}"));

        let egress = enable_in(Some(&ns.0), &pools(), "arct0").expect("enable egress NAT");
        let table = nft_table(&ns.0).expect("table ip arcd exists");
        for needle in [
            "hook postrouting",
            "10.64.0.0/16",
            "10.128.0.0/9",
            "oifname != \"arct0\"",
            "masquerade",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
        }
        assert_eq!(sh(Some(&ns.0), &format!("cat {IP_FORWARD}")).trim(), "1");

        egress.disable().expect("disable egress NAT");
        let gone = nft_table(&ns.0).expect_err("table removed");
        assert!(gone.contains("No such file or directory"), "{gone}");
        assert_eq!(sh(Some(&ns.0), &format!("cat {IP_FORWARD}")).trim(), "0");

        // Dropping undoes it too; an ip_forward that was already on stays on.
        sh(Some(&ns.0), &format!("echo 1 > {IP_FORWARD}"));
        let egress = enable_in(Some(&ns.0), &pools(), "arct0").unwrap();
        assert!(nft_table(&ns.0).is_ok());
        drop(egress);
        assert!(nft_table(&ns.0).is_err(), "table left after drop");
        assert_eq!(sh(Some(&ns.0), &format!("cat {IP_FORWARD}")).trim(), "1");

        // The host was not touched.
        assert_eq!(std::fs::read_to_string(IP_FORWARD).unwrap(), host_forward);
        assert_eq!(
            try_sh(None, &format!("nft list table ip {TABLE}")).is_ok(),
            host_has_table
        );
    }

    #[test]
    #[ignore = "needs root: network namespace and nftables"]
    fn set_networks_follows_the_vpg_subnets() {
        require_root("set_networks_follows_the_vpg_subnets");
        require_nft();
        let ns = Netns::new();
        let pool: Ipv4Net = "10.64.0.0/16".parse().unwrap();
        let vpg: Ipv4Net = "192.168.50.0/24".parse().unwrap();
        let mut egress = enable_in(Some(&ns.0), &[pool], "arct0").expect("enable egress NAT");
        assert!(!nft_table(&ns.0).unwrap().contains("192.168.50.0/24"));

        egress.set_networks(&[pool, vpg]).expect("add a VPG subnet");
        let table = nft_table(&ns.0).unwrap();
        assert!(
            table.contains("10.64.0.0/16") && table.contains("192.168.50.0/24"),
            "{table}"
        );
        assert_eq!(egress.pools(), &[pool, vpg]);

        egress.set_networks(&[pool]).expect("VPG terminated");
        let table = nft_table(&ns.0).unwrap();
        assert!(
            table.contains("10.64.0.0/16") && !table.contains("192.168.50.0/24"),
            "{table}"
        );
        drop(egress);
        assert!(nft_table(&ns.0).is_err(), "table left after drop");
    }

    #[test]
    #[ignore = "needs root: network namespace and nftables"]
    fn replaces_a_leftover_table() {
        require_root("replaces_a_leftover_table");
        require_nft();
        let ns = Netns::new();
        sh(
            Some(&ns.0),
            &format!("nft add table ip {TABLE} && nft add chain ip {TABLE} stale"),
        );
        let egress = enable_in(Some(&ns.0), &pools(), "arc0").unwrap();
        let table = nft_table(&ns.0).unwrap();
        assert!(!table.contains("stale"), "{table}");
        assert!(table.contains("masquerade"), "{table}");
        egress.disable().unwrap();
        assert!(nft_table(&ns.0).is_err());
    }

    /// The rule really translates: a "device" namespace in the pool sends UDP through the
    /// rendezvous namespace to an "outside" namespace that has no route back to the pool; the
    /// outside sees it only with egress NAT on, and from the rendezvous point's address.
    #[test]
    #[ignore = "needs root: network namespaces, veth links and nftables"]
    fn masquerades_forwarded_traffic() {
        require_root("masquerades_forwarded_traffic");
        require_nft();
        let (rp, dev, out) = (Netns::new(), Netns::new(), Netns::new());
        let tag = &rp.0[5..];
        let (to_dev, from_rp) = (format!("arcd{tag}"), format!("arcv{tag}"));
        let (to_out, from_out) = (format!("arco{tag}"), format!("arcw{tag}"));
        sh(
            None,
            &format!(
                "ip link add {to_dev} netns {rp} type veth peer name {from_rp} netns {dev} && \
                 ip link add {to_out} netns {rp} type veth peer name {from_out} netns {out}",
                rp = rp.0,
                dev = dev.0,
                out = out.0
            ),
        );
        sh(
            Some(&rp.0),
            &format!(
                "echo 0 > {IP_FORWARD} && ip link set lo up && \
                 ip addr add 10.64.0.1/16 dev {to_dev} && ip link set {to_dev} up && \
                 ip addr add 192.0.2.1/24 dev {to_out} && ip link set {to_out} up"
            ),
        );
        sh(
            Some(&dev.0),
            &format!(
                "ip addr add 10.64.0.2/16 dev {from_rp} && ip link set {from_rp} up && \
                 ip route add default via 10.64.0.1"
            ),
        );
        sh(
            Some(&out.0),
            &format!(
                "ip addr add 192.0.2.2/24 dev {from_out} && ip link set {from_out} up && \
                 nft -f - <<'EOF'\n\
                 table ip count {{\n\
                 \tchain input {{\n\
                 \t\ttype filter hook input priority 0; policy accept;\n\
                 \t\tip saddr 192.0.2.1 udp dport 9 counter name natted\n\
                 \t\tip saddr 10.64.0.2 udp dport 9 counter name raw\n\
                 \t}}\n\
                 \tcounter natted {{ }}\n\
                 \tcounter raw {{ }}\n\
                 }}\n\
                 EOF"
            ),
        );
        let packets = |name: &str| -> u64 {
            let json = sh(
                Some(&out.0),
                &format!("nft -j list counter ip count {name}"),
            );
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            value["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|item| item["counter"]["packets"].as_u64())
                .unwrap()
        };
        let send = || {
            // bash's /dev/udp: one datagram, no extra tools needed.
            sh(
                Some(&dev.0),
                "bash -c 'echo hello > /dev/udp/192.0.2.2/9' || true",
            );
        };
        let wait_for = |name: &str, want: u64| {
            let deadline = Instant::now() + Duration::from_secs(3);
            while packets(name) < want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            packets(name)
        };

        // The TUN device's role is played by the veth towards the device namespace.
        send();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            (packets("natted"), packets("raw")),
            (0, 0),
            "forwarded before NAT was on"
        );

        let egress = enable_in(Some(&rp.0), &pools(), &to_dev).unwrap();
        send();
        assert_eq!(wait_for("natted", 1), 1, "not masqueraded");
        assert_eq!(packets("raw"), 0, "left without translation");

        egress.disable().unwrap();
        send();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            (packets("natted"), packets("raw")),
            (1, 0),
            "forwarded after NAT was off"
        );
    }

    #[test]
    fn ruleset_masquerades_pools_leaving_elsewhere() {
        let overlapping = [
            "10.64.0.0/16".parse().unwrap(),
            "10.64.1.0/24".parse().unwrap(),
            "10.128.0.0/9".parse().unwrap(),
        ];
        let script = ruleset(&Ipv4Net::aggregate(&overlapping.to_vec()), "arc0");
        assert_eq!(
            script,
            "add table ip arcd\n\
             delete table ip arcd\n\
             table ip arcd {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority 100; policy accept;\n\
             \t\tip saddr { 10.64.0.0/16, 10.128.0.0/9 } oifname != \"arc0\" masquerade comment \"arcd egress\"\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn refuses_bad_input_before_running_anything() {
        let err = enable_in(Some("ns"), &[], "arc0").unwrap_err();
        assert!(matches!(err, EgressError::Invalid(_)), "{err}");
        let err = enable_in(Some("ns"), &pools(), "arc0\"; flush ruleset").unwrap_err();
        assert!(matches!(err, EgressError::Invalid(_)), "{err}");
        let err = enable_in(Some("ns; rm"), &pools(), "arc0").unwrap_err();
        assert!(matches!(err, EgressError::Invalid(_)), "{err}");
    }

    #[test]
    fn missing_nft_says_install_nftables() {
        let message = EgressError::NftMissing.to_string();
        assert!(message.contains("install nftables"), "{message}");
        let err = run(Command::new("/nonexistent/nft"), None).unwrap_err();
        assert!(matches!(err, EgressError::Spawn { .. }), "{err}");
    }

    #[test]
    fn nft_permission_errors_say_run_as_root() {
        // What nft prints without CAP_NET_ADMIN.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo 'Error: Could not process rule: Operation not permitted' >&2; exit 1",
        ]);
        let err = run(cmd, None).unwrap_err();
        assert!(matches!(err, EgressError::PermissionDenied { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("needs root or CAP_NET_ADMIN") && message.contains("run arcd as root"),
            "{message}"
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'Error: syntax error' >&2; exit 1"]);
        let err = run(cmd, None).unwrap_err();
        assert!(matches!(err, EgressError::Command { .. }), "{err}");
        assert!(err.to_string().contains("syntax error"), "{err}");
    }
}
