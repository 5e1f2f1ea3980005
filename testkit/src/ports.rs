//! Loopback ports for processes a test starts and cannot hand a listener to.
//!
//! The usual trick, binding `127.0.0.1:0` and releasing the port, hands out a
//! port from the kernel's ephemeral range. Until the child binds it, any other
//! test's `bind(0)` or outgoing connection may take the same port, and the
//! child then dies with "Address already in use" (a CI run lost a test that
//! way). The ports handed out here lie *below* the ephemeral range, where the
//! kernel never allocates on its own; a per-process counter from a random
//! start keeps concurrent tests (and test binaries) apart, and every candidate
//! is checked free on IPv4 and on the IPv6 wildcard before it is returned.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range are used.
const SPAN: u32 = 12_000;

/// The lowest port the kernel picks on its own (`ip_local_port_range`).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(32_768)
}

fn seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    std::process::id().wrapping_mul(2_654_435_761).wrapping_add(nanos)
}

/// A port on which nothing listens now, outside the ephemeral range where it
/// can be (so no `bind(0)` elsewhere takes it before the caller's child binds).
///
/// Falls back to a kernel-picked port when the ephemeral range starts too low
/// to leave room below it.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let low = ephemeral_low();
    if low <= SPAN + 1024 {
        return kernel_port();
    }
    let base = low - SPAN;
    let next = NEXT.get_or_init(|| AtomicU32::new(seed() % SPAN));
    for _ in 0..SPAN {
        let offset = next.fetch_add(1, Ordering::Relaxed) % SPAN;
        let Ok(port) = u16::try_from(base + offset) else { continue };
        if is_free(port) {
            return port;
        }
    }
    kernel_port()
}

/// Free on 127.0.0.1 and on `[::]` (the runtime's admin listener binds the
/// IPv6 wildcard). A host without IPv6 only needs the IPv4 check.
fn is_free(port: u16) -> bool {
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        return false;
    }
    match TcpListener::bind(("::", port)) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::AddrNotAvailable,
    }
}

fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            if low > SPAN + 1024 {
                assert!(u32::from(port) < low && u32::from(port) >= low - SPAN, "{port} outside the range");
            }
            assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "{port} not bindable");
        }
    }
}
