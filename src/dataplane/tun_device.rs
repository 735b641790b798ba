//! The real layer-3 TUN device (`arc0` by default) on the `tun-rs` crate: created, addressed and
//! brought up by arcd itself, gone again when the [`TunDevice`] is dropped.
//!
//! Addresses go on through tun-rs's own address management (`add_address_v4`, an `RTM_NEWADDR`
//! netlink request). That request is sent without waiting for the kernel's answer, so `open`
//! reads the interface's addresses back afterwards and fails if one is missing instead of
//! running with half a configuration.
//!
//! Packets are whole IP packets with a virtio-net header (offloads: TSO/GSO on read, GRO on
//! write via tun-rs's `recv_multiple` / `send_multiple`). With more than one data-plane worker the
//! device is multi-queue (IFF_MULTI_QUEUE): one file descriptor per worker, opened with tun-rs's
//! `try_clone`; the kernel picks the queue of each packet it sends by flow hash, so one flow stays
//! on one queue (no reordering) and the flows of many devices spread over the workers.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::dataplane::{interface_name, RecvBatch, TunIo, TUN_HEADROOM};

// errno values on Linux (libc is not a direct dependency of arcd).
const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ENXIO: i32 = 6;
const EACCES: i32 = 13;
const EBUSY: i32 = 16;
const ENODEV: i32 = 19;

/// Why the TUN device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The kernel refused: creating or configuring a network device needs CAP_NET_ADMIN.
    #[error(
        "creating TUN device `{name}` needs root or CAP_NET_ADMIN: run arcd as root, or `setcap cap_net_admin+ep {exe}`"
    )]
    PermissionDenied {
        name: String,
        /// The arcd executable, for the `setcap` command (`<path to arcd>` when unknown).
        exe: String,
        #[source]
        source: io::Error,
    },
    /// No TUN driver: `/dev/net/tun` is absent or the `tun` module is not loaded.
    #[error(
        "cannot create TUN device `{name}`: /dev/net/tun is missing or has no driver behind it: load the tun module (`modprobe tun`), or in a container pass the device through (e.g. `--device /dev/net/tun`)"
    )]
    NoTunDriver {
        name: String,
        #[source]
        source: io::Error,
    },
    /// An interface of that name exists already (another arcd, or a leftover persistent device).
    #[error(
        "cannot create TUN device `{name}`: a network interface of that name already exists (another arcd running? otherwise remove it with `ip link del {name}` or choose another `tun.name`)"
    )]
    AlreadyExists { name: String },
    /// Anything else, with the step that failed.
    #[error("TUN device `{name}`: {action}: {source}")]
    Io {
        name: String,
        action: String,
        #[source]
        source: io::Error,
    },
}

/// Packets the kernel may queue for arcd to read from the TUN device.
const TX_QUEUE_LEN: u32 = 4096;

const _: () = assert!(crate::dataplane::TUN_HEADROOM == tun_rs::VIRTIO_NET_HDR_LEN);

/// The data plane's TUN device. Dropping it closes the only file descriptor of the
/// non-persistent device, and the kernel removes the interface with its addresses and routes.
pub struct TunDevice {
    /// At least one; the first is the device itself, the others more queues of it.
    queues: Vec<TunQueue>,
    name: String,
    mtu: u16,
    addresses: Vec<Ipv4Net>,
}

/// One queue (file descriptor) of the device, used by one worker.
struct TunQueue {
    device: tun_rs::AsyncDevice,
    /// Merges written packets of one flow (GRO); reused so a write allocates nothing. Only its
    /// worker writes, so the lock is uncontended; it is there because writes are `&self`.
    gro: tokio::sync::Mutex<Box<tun_rs::GROTable>>,
}

impl TunQueue {
    fn new(device: tun_rs::AsyncDevice) -> TunQueue {
        TunQueue {
            device,
            gro: tokio::sync::Mutex::new(Box::default()),
        }
    }
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("mtu", &self.mtu)
            .field("addresses", &self.addresses)
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

/// Creates the layer-3 TUN device `name`, sets its MTU, assigns every address in `addresses`
/// (each with its prefix, so `10.64.0.1/16` also makes the kernel route 10.64.0.0/16 to the
/// device) and brings it up, with `queues` queues (1: a single-queue device, as before workers).
///
/// Must be called from within a Tokio runtime (the device is registered with its reactor).
pub fn open(
    name: &str,
    mtu: u16,
    addresses: &[Ipv4Net],
    queues: usize,
) -> Result<TunDevice, TunError> {
    let io_err = |action: &str, source: io::Error| classify(name, action, source);
    interface_name::validate(name).map_err(|invalid| {
        io_err(
            "invalid device name",
            io::Error::new(io::ErrorKind::InvalidInput, invalid),
        )
    })?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io_err(
            "opening the device",
            io::Error::other("must be called from within a Tokio runtime"),
        ));
    }
    // TUNSETIFF on an existing persistent TUN would attach to it instead of creating a device
    // that vanishes with arcd, and on any other existing interface it fails obscurely.
    if Path::new("/sys/class/net").join(name).exists() {
        return Err(TunError::AlreadyExists {
            name: name.to_owned(),
        });
    }

    let mut unique = HashSet::new();
    let addresses: Vec<Ipv4Net> = addresses
        .iter()
        .copied()
        .filter(|net| unique.insert(*net))
        .collect();

    let device = tun_rs::DeviceBuilder::new()
        .name(name)
        .layer(tun_rs::Layer::L3)
        .packet_information(false)
        // Offloads: reads may carry TCP super-segments (split by tun-rs), and writes of one flow
        // are merged, so the kernel runs its TCP receive path once per batch, not per packet.
        .offload(true)
        .multi_queue(queues > 1)
        // Configured below, step by step, so a failure names the step.
        .enable(false)
        .build_async()
        .map_err(|source| classify_create(name, source))?;

    device
        .set_mtu(mtu)
        .map_err(|source| io_err(&format!("setting MTU {mtu}"), source))?;
    // The default queue (500 packets) overflows while arcd encrypts a burst for the devices:
    // those drops cost TCP retransmits. A longer queue is a throughput setting, not a must.
    if let Err(e) = device.set_tx_queue_len(TX_QUEUE_LEN) {
        tracing::warn!(device = name, error = %e, "could not lengthen the TUN queue");
    }
    for net in &addresses {
        device
            .add_address_v4(net.addr(), net.prefix_len())
            .map_err(|source| io_err(&format!("adding address {net}"), source))?;
    }
    // The netlink request above is not acknowledged: check that the kernel took every address.
    let assigned = device
        .addresses()
        .map_err(|source| io_err("reading back the addresses", source))?;
    if let Some(missing) = addresses
        .iter()
        .find(|net| !assigned.contains(&IpAddr::V4(net.addr())))
    {
        return Err(io_err(
            &format!("adding address {missing}"),
            io::Error::other("the kernel did not assign it (conflicting address on another interface, or no permission)"),
        ));
    }
    // The other queues before the link comes up: once it is up the kernel sends to every queue
    // attached, and a queue is only attached once it exists.
    let mut more_queues = Vec::new();
    for queue in 1..queues {
        let clone = device
            .try_clone()
            .map_err(|source| io_err(&format!("opening queue {queue} of {queues}"), source))?;
        more_queues.push(clone);
    }
    device
        .enabled(true)
        .map_err(|source| io_err("bringing the link up", source))?;

    let listed = addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        device = %name,
        mtu,
        addresses = %listed,
        tcp_offload = device.tcp_gso(),
        udp_offload = device.udp_gso(),
        queues,
        "TUN device up"
    );
    let queues = std::iter::once(device)
        .chain(more_queues)
        .map(TunQueue::new)
        .collect();
    Ok(TunDevice {
        queues,
        name: name.to_owned(),
        mtu,
        addresses,
    })
}

impl TunDevice {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The addresses assigned at `open` (deduplicated, in the order given).
    pub fn addresses(&self) -> &[Ipv4Net] {
        &self.addresses
    }

    /// The tun-rs device (its first queue): interface index, offload flags.
    pub fn device(&self) -> &tun_rs::AsyncDevice {
        &self.queues[0].device
    }

    /// The queue `index` names; an index past the last wraps round, so a caller with more
    /// workers than queues still gets a valid one.
    fn queue(&self, index: usize) -> &TunQueue {
        &self.queues[index % self.queues.len()]
    }
}

impl TunIo for TunDevice {
    fn mtu(&self) -> usize {
        usize::from(self.mtu)
    }

    fn queues(&self) -> usize {
        self.queues.len()
    }

    async fn recv_batch(&self, queue: usize, batch: &mut RecvBatch) -> io::Result<()> {
        batch.count = self
            .queue(queue)
            .device
            .recv_multiple(&mut batch.original, &mut batch.bufs, &mut batch.sizes, 0)
            .await?;
        Ok(())
    }

    fn try_recv_batch(&self, queue: usize, batch: &mut RecvBatch) -> io::Result<()> {
        batch.count = self.queue(queue).device.try_recv_multiple(
            &mut batch.original,
            &mut batch.bufs,
            &mut batch.sizes,
            0,
        )?;
        Ok(())
    }

    async fn send_batch(&self, queue: usize, packets: &mut [Vec<u8>]) -> io::Result<()> {
        if packets.is_empty() {
            return Ok(());
        }
        let queue = self.queue(queue);
        let mut gro = queue.gro.lock().await;
        queue
            .device
            .send_multiple(&mut gro, packets, TUN_HEADROOM)
            .await
            .map(|_| ())
    }
}

impl Drop for TunDevice {
    fn drop(&mut self) {
        tracing::info!(device = %self.name, "TUN device closed");
    }
}

/// Maps a failure of creating the device (opening /dev/net/tun, TUNSETIFF).
fn classify_create(name: &str, source: io::Error) -> TunError {
    match source.raw_os_error() {
        Some(ENOENT | ENODEV | ENXIO) => TunError::NoTunDriver {
            name: name.to_owned(),
            source,
        },
        Some(EBUSY) => TunError::AlreadyExists {
            name: name.to_owned(),
        },
        _ => classify(name, "creating the device", source),
    }
}

/// Maps a failure of any step: a permission error becomes the message that says what to do.
fn classify(name: &str, action: &str, source: io::Error) -> TunError {
    let permission = source.kind() == io::ErrorKind::PermissionDenied
        || matches!(source.raw_os_error(), Some(EPERM | EACCES));
    if permission {
        TunError::PermissionDenied {
            name: name.to_owned(),
            exe: arcd_exe(),
            source,
        }
    } else {
        TunError::Io {
            name: name.to_owned(),
            action: action.to_owned(),
            source,
        }
    }
}

fn arcd_exe() -> String {
    std::env::current_exe()
        .ok()
        .map(|path| path.display().to_string())
        .filter(|path| !path.contains(char::is_whitespace))
        .unwrap_or_else(|| "<path to arcd>".to_owned())
}

/// Test support shared by the data plane's privileged tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// Fails the test unless the process runs as root. Tests that need root are marked
    /// `#[ignore = "needs root: ..."]`: `cargo test` skips them, `scripts/test.sh` as root runs
    /// them with `--include-ignored`, and one run with `--ignored` as another user fails here
    /// with this message instead of passing without testing anything.
    pub(crate) fn require_root(test: &str) {
        let status = std::fs::read_to_string("/proc/self/status")
            .expect("read /proc/self/status to find the effective uid");
        let euid: u32 = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse().ok())
            .expect("a `Uid:` line with the effective uid in /proc/self/status");
        assert!(
            euid == 0,
            "{test} needs root (effective uid is {euid}): run it as root (scripts/test.sh as root runs every root-only test)"
        );
    }

    /// `prefix` + 6 random hex digits: a name no other test run uses.
    pub(crate) fn unique_name(prefix: &str) -> String {
        format!("{prefix}{:06x}", rand::random::<u32>() & 0x00ff_ffff)
    }
}

#[cfg(test)]
#[path = "tun_device_tests.rs"]
mod tests;
