//! The operator's own health, behind `/readyz` and `/healthz`.
//!
//! - Ready: every required cache has synced, and the API server answered a
//!   probe within [`HealthConfig::unreachable_after`]. A replica that cannot
//!   reach the API is not doing its job, and tooling should see that.
//! - Live: no reconcile has been running for longer than
//!   [`HealthConfig::stall_after`] while the API answers. During an API
//!   outage hung requests are expected and a restart would not help, so an
//!   outage never fails liveness.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use tracing::{info, warn};

/// Thresholds of the health checks.
#[derive(Clone, Copy, Debug)]
pub struct HealthConfig {
    /// How often the API server is probed (`GET /version`).
    pub probe_interval: Duration,
    /// Not ready once the last successful probe is older than this.
    pub unreachable_after: Duration,
    /// Not live once a reconcile has run this long while the API answers.
    /// Longer than kube's request timeout (295 s), so one hung request is
    /// not a stall.
    pub stall_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(10),
            unreachable_after: Duration::from_secs(30),
            stall_after: Duration::from_secs(600),
        }
    }
}

/// Shared health state.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    config: HealthConfig,
    started: Instant,
    synced: AtomicBool,
    /// Milliseconds after `started` of the last successful API probe.
    api_ok_ms: AtomicU64,
    /// Running reconciles by id, with their start.
    running: Mutex<BTreeMap<u64, Instant>>,
    next_id: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(HealthConfig::default())
    }
}

impl Health {
    /// Health with `config`; not ready until the caches sync.
    pub fn new(config: HealthConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                started: Instant::now(),
                synced: AtomicBool::new(false),
                api_ok_ms: AtomicU64::new(0),
                running: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// The thresholds.
    pub fn config(&self) -> HealthConfig {
        self.inner.config
    }

    /// Marks the caches synced (or, at shutdown, not).
    pub fn set_synced(&self, synced: bool) {
        if synced {
            // Syncing needed the API: count it as a successful probe.
            self.api_answered();
        }
        self.inner.synced.store(synced, Ordering::Release);
    }

    /// True once every required cache has synced.
    pub fn synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    /// Records that the API server answered.
    pub fn api_answered(&self) {
        let ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.api_ok_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// How long ago the API server last answered.
    pub fn since_api_answered(&self) -> Duration {
        let ok = Duration::from_millis(self.inner.api_ok_ms.load(Ordering::Acquire));
        self.inner.started.elapsed().saturating_sub(ok)
    }

    /// `/readyz`: `Err` with the reason when not ready.
    pub fn ready(&self) -> Result<(), String> {
        if !self.synced() {
            return Err("caches not synced".to_owned());
        }
        let since = self.since_api_answered();
        if since > self.inner.config.unreachable_after {
            return Err(format!("the API server has not answered for {}s", since.as_secs()));
        }
        Ok(())
    }

    /// `/healthz`: `Err` with the reason when the controller loop stalled.
    pub fn live(&self) -> Result<(), String> {
        let oldest = super::reconcile::lock(&self.inner.running).values().min().copied();
        let Some(oldest) = oldest else { return Ok(()) };
        let running = oldest.elapsed();
        let api_up = self.since_api_answered() <= self.inner.config.unreachable_after;
        if running > self.inner.config.stall_after && api_up {
            return Err(format!(
                "a reconcile has been running for {}s while the API server answers",
                running.as_secs()
            ));
        }
        Ok(())
    }

    /// Registers a running reconcile until the guard drops.
    pub fn reconcile_started(&self) -> RunningGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        super::reconcile::lock(&self.inner.running).insert(id, Instant::now());
        RunningGuard { health: self.clone(), id }
    }

    /// Reconciles running now.
    pub fn running(&self) -> usize {
        super::reconcile::lock(&self.inner.running).len()
    }
}

/// A running reconcile; dropping it ends the registration.
pub struct RunningGuard {
    health: Health,
    id: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        super::reconcile::lock(&self.health.inner.running).remove(&self.id);
    }
}

/// Probes the API server every `probe_interval` until dropped.
pub async fn probe_api(client: Client, health: Health) {
    let config = health.config();
    let mut reachable = true;
    loop {
        let answered = tokio::time::timeout(
            config.probe_interval.max(Duration::from_secs(1)),
            client.apiserver_version(),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if answered {
            health.api_answered();
            if !reachable {
                info!("the API server answers again");
            }
        } else if reachable && health.since_api_answered() > config.unreachable_after {
            warn!(
                since_s = health.since_api_answered().as_secs(),
                "the API server does not answer; not ready"
            );
        }
        reachable = health.since_api_answered() <= config.unreachable_after;
        tokio::time::sleep(config.probe_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(unreachable_ms: u64, stall_ms: u64) -> Health {
        Health::new(HealthConfig {
            probe_interval: Duration::from_millis(10),
            unreachable_after: Duration::from_millis(unreachable_ms),
            stall_after: Duration::from_millis(stall_ms),
        })
    }

    #[test]
    fn ready_needs_synced_caches_and_a_recent_answer_from_the_api() {
        // Margins of seconds: the test machine is shared and may stall a thread.
        let h = health(2_000, 1_000);
        assert!(h.ready().is_err());
        h.set_synced(true);
        assert!(h.ready().is_ok());
        std::thread::sleep(Duration::from_millis(2_100));
        assert!(h.ready().expect_err("stale").contains("has not answered"));
        h.api_answered();
        assert!(h.ready().is_ok());
    }

    #[test]
    fn a_long_reconcile_fails_liveness_only_while_the_api_answers() {
        let h = health(1000, 30);
        h.api_answered();
        let guard = h.reconcile_started();
        assert!(h.live().is_ok());
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.live().expect_err("stalled").contains("running for"));
        let outage = health(20, 30);
        let _running = outage.reconcile_started();
        std::thread::sleep(Duration::from_millis(50));
        assert!(outage.live().is_ok(), "an API outage never fails liveness");
        drop(guard);
        assert!(h.live().is_ok());
        assert_eq!(h.running(), 0);
    }
}
