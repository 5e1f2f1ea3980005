//! The penalty box: a source address whose connection was ended for HTTP/2 abuse (GOAWAY
//! `ENHANCE_YOUR_CALM`, from h2 or from the frame policy) is held off for a while, so an
//! attacker that reconnects at once costs an `accept`, not a TLS handshake and an HTTP/2
//! session each time.
//!
//! - The first offence holds the address off for [`FIRST_PENALTY`]; each repeat within
//!   [`FORGET_AFTER`] doubles it, up to [`MAX_PENALTY`].
//! - Connections from a held-off address are tarpitted: kept open, unread, until the penalty
//!   ends (at most [`MAX_HELD_PER_SOURCE`] per address; more are closed at once), so a client
//!   that waits for the server stalls instead of looping.
//! - Loopback is exempt: a sidecar proxy connects from there on behalf of everyone.
//! - An IPv6 source is its /64; at most [`MAX_HELD`] connections are held in all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The first penalty.
pub const FIRST_PENALTY: Duration = Duration::from_secs(1);
/// The longest penalty.
pub const MAX_PENALTY: Duration = Duration::from_secs(60);
/// An address with no offence for this long starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);
/// Connections held open per penalized address.
pub const MAX_HELD_PER_SOURCE: usize = 64;
/// Connections held open in all; more from penalized addresses are closed at once.
pub const MAX_HELD: usize = 1024;
/// Addresses remembered at most; the oldest offences are forgotten first.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
struct Entry {
    until: Instant,
    strikes: u32,
    last_offence: Instant,
    held: usize,
}

/// Shared by the accept loop and every connection.
#[derive(Debug, Default)]
pub struct PenaltyBox {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    held: std::sync::atomic::AtomicUsize,
    exempt_all_loopback: bool,
}

/// What to do with a new connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Serve it.
    Admit,
    /// Hold it open, unread, for this long; the guard releases the slot.
    Hold(Duration, HeldSlot),
    /// Close it at once.
    Refuse,
}

/// A held connection's slot; released on drop.
#[derive(Debug)]
pub(crate) struct HeldSlot {
    penalties: Arc<PenaltyBox>,
    ip: IpAddr,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.penalties.held.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self.penalties.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get_mut(&self.ip) {
            entry.held = entry.held.saturating_sub(1);
        }
    }
}

impl PenaltyBox {
    /// An empty box; `exempt_all_loopback` as in the accept limits.
    pub(crate) fn new(exempt_all_loopback: bool) -> Self {
        PenaltyBox { exempt_all_loopback, ..PenaltyBox::default() }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        super::accept::is_sidecar_source(ip, self.exempt_all_loopback)
    }

    /// Records an offence by `ip`.
    pub(crate) fn punish(&self, ip: IpAddr) {
        if self.exempt(ip) {
            return;
        }
        let ip = super::accept::source_key(ip);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&ip) {
            entries.retain(|_, e| e.until > now || e.held > 0);
            if entries.len() >= MAX_ENTRIES
                && let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last_offence).map(|(ip, _)| *ip)
            {
                entries.remove(&oldest);
            }
        }
        let entry = entries.entry(ip).or_insert(Entry { until: now, strikes: 0, last_offence: now, held: 0 });
        if now.duration_since(entry.last_offence) > FORGET_AFTER {
            entry.strikes = 0;
        }
        entry.strikes = entry.strikes.saturating_add(1);
        entry.last_offence = now;
        let penalty = FIRST_PENALTY.saturating_mul(1 << (entry.strikes - 1).min(6)).min(MAX_PENALTY);
        entry.until = entry.until.max(now + penalty);
        tracing::info!(%ip, penalty_ms = penalty.as_millis() as u64, strikes = entry.strikes, "penalizing a source address for HTTP/2 abuse");
    }

    /// Decides about a new connection from `ip`.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        if self.exempt(ip) {
            return Admission::Admit;
        }
        let ip = super::accept::source_key(ip);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = entries.get_mut(&ip) else { return Admission::Admit };
        if entry.until <= now {
            return Admission::Admit;
        }
        if entry.held >= MAX_HELD_PER_SOURCE
            || self.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_HELD
        {
            if entry.held < MAX_HELD_PER_SOURCE {
                self.held.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            return Admission::Refuse;
        }
        entry.held += 1;
        Admission::Hold(entry.until - now, HeldSlot { penalties: self.clone(), ip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offenders_are_held_off_longer_each_time_and_loopback_never() {
        let penalties = Arc::new(PenaltyBox::new(false));
        let attacker: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(matches!(penalties.admit(attacker), Admission::Admit));
        penalties.punish(attacker);
        let Admission::Hold(first, slot) = penalties.admit(attacker) else { panic!("held") };
        assert!(first <= FIRST_PENALTY && first > FIRST_PENALTY / 2, "{first:?}");
        penalties.punish(attacker);
        let Admission::Hold(second, _) = penalties.admit(attacker) else { panic!("held") };
        assert!(second > FIRST_PENALTY, "doubled: {second:?}");
        drop(slot);
        let mut slots = Vec::new();
        for _ in 0..MAX_HELD_PER_SOURCE {
            match penalties.admit(attacker) {
                Admission::Hold(_, slot) => slots.push(slot),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(penalties.admit(attacker), Admission::Refuse), "at most {MAX_HELD_PER_SOURCE} held");
        drop(slots);
        assert!(matches!(penalties.admit(attacker), Admission::Hold(..)));

        for sidecar in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = sidecar.parse().unwrap();
            penalties.punish(ip);
            assert!(matches!(penalties.admit(ip), Admission::Admit), "{sidecar}");
        }
        let other_loopback: IpAddr = "127.0.0.2".parse().unwrap();
        penalties.punish(other_loopback);
        assert!(matches!(penalties.admit(other_loopback), Admission::Hold(..)));
        // By default the whole loopback range is exempt (Istio's sidecar uses 127.0.0.6).
        let default = Arc::new(PenaltyBox::new(true));
        let istio: IpAddr = "127.0.0.6".parse().unwrap();
        default.punish(istio);
        assert!(matches!(default.admit(istio), Admission::Admit));
        // An IPv6 source is its /64: another address in it is held off too.
        let v6: IpAddr = "2001:db8:1:2::7".parse().unwrap();
        default.punish(v6);
        assert!(matches!(default.admit("2001:db8:1:2:ffff::1".parse().unwrap()), Admission::Hold(..)));
        assert!(matches!(default.admit("2001:db8:1:3::7".parse().unwrap()), Admission::Admit));
    }
}
