//! Budgets that outlast the gateway: the runs' totals persisted behind [`BudgetStore`], written
//! behind the calls.
//!
//! Admission never waits for a database ([`super::quota`] decides in memory). A [`Flusher`]
//! task sends what was charged since its last flush ([`super::quota::Quotas::pending`]) every
//! [`FLUSH_EVERY`] and at shutdown, in one statement that adds each delta to its run's total
//! and returns the totals; on a store shared by replicas (PostgreSQL) the same statement also
//! reads back the totals other replicas changed since, so every replica admits by the sum. At
//! start the unexpired totals are loaded. A flush that fails leaves the deltas in memory for
//! the next one, counts `tailpass_gateway_budget_flush_errors_total` and says so in the log,
//! and the gateway goes on admitting from memory. A crash loses at most the charges of one
//! flush interval, on that gateway; the overshoot across replicas is bounded in
//! `docs/design.md` ("Budgets").
//!
//! Two backends, chosen by the global `--store`: [`sqlite`] (a file of the gateway's own,
//! by default `STATE_DIR/gateway-budgets.sqlite`) and [`postgres`] (a table of the store's
//! schema, migration 0004).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tailpass_verify::UnixTime;
use tokio_util::sync::CancellationToken;

use super::quota::{Delta, Quotas, Total};
use crate::clock::Clock;
use crate::metrics::GatewayMetrics;
use crate::store::{StoreError, StoreLocation, StoreSettings};

pub mod postgres;
pub mod sqlite;

/// How often charges are flushed.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Expired runs are swept from the store every this many flushes.
const SWEEP_EVERY: u32 = 60;
/// How long the last flush at shutdown may take before its charges are given up.
const LAST_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// The default SQLite file's name, in the state directory.
pub const DEFAULT_FILE: &str = "gateway-budgets.sqlite";

/// Where runs' totals persist.
#[async_trait::async_trait]
pub trait BudgetStore: Send + Sync {
    /// The totals of runs whose tokens have not all expired at `now`, the latest-expiring
    /// first, at most `limit`.
    async fn load(&self, now: UnixTime, limit: usize) -> Result<Vec<Total>, StoreError>;

    /// Adds `deltas` (in run order) to their runs' totals in one transaction and returns the
    /// new totals; on a store shared by replicas, also the totals other replicas changed
    /// since this one's previous flush (or load), unexpired at `now`. An error adds nothing.
    async fn flush(&self, deltas: &[Delta], now: UnixTime) -> Result<Vec<Total>, StoreError>;

    /// Deletes the runs whose every token had expired by `before`; how many.
    async fn sweep(&self, before: UnixTime) -> Result<u64, StoreError>;
}

/// Opens the budget store `settings` names: a SQLite file, or the PostgreSQL store's
/// database (its migrations applied).
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn BudgetStore>, StoreError> {
    Ok(match &settings.location {
        StoreLocation::Sqlite(path) => Arc::new(sqlite::SqliteBudgets::open(path).await?),
        StoreLocation::Postgres(target) => Arc::new(
            postgres::PostgresBudgets::open(
                target,
                settings.ca_file.as_deref(),
                settings.pool_size,
            )
            .await?,
        ),
    })
}

/// The write-behind loop between the in-memory table and its store.
#[derive(Clone)]
pub struct Flusher {
    store: Arc<dyn BudgetStore>,
    quotas: Arc<Quotas>,
    metrics: Arc<GatewayMetrics>,
    clock: Arc<dyn Clock>,
    /// Whether the last flush failed (so that its recovery is logged once).
    failing: Arc<AtomicBool>,
}

impl Flusher {
    /// A flusher of `quotas` into `store`, counting its failures in `metrics`.
    pub fn new(
        store: Arc<dyn BudgetStore>,
        quotas: Arc<Quotas>,
        metrics: Arc<GatewayMetrics>,
        clock: Arc<dyn Clock>,
    ) -> Flusher {
        Flusher {
            store,
            quotas,
            metrics,
            clock,
            failing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Loads the store's unexpired totals into the table (at start, before serving).
    pub async fn load(&self, capacity: usize) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let totals = self.store.load(now, capacity).await?;
        let loaded = totals.len();
        self.quotas.absorb(&[], totals, now);
        Ok(loaded)
    }

    /// One flush: what was charged since the last sent, the totals read back into the table.
    /// On failure the charges stay for the next flush, and the failure is counted.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let deltas = self.quotas.pending();
        let now = self.clock.now();
        match self.store.flush(&deltas, now).await {
            Ok(totals) => {
                self.quotas.absorb(&deltas, totals, now);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(runs = deltas.len(), "budget charges stored again");
                }
                Ok(())
            }
            Err(e) => {
                self.failing.store(true, Ordering::Relaxed);
                self.metrics.budget_flush_error();
                tracing::warn!(
                    error = %e,
                    runs = deltas.len(),
                    "cannot store budget charges; admitting from memory, retrying"
                );
                Err(e)
            }
        }
    }

    /// Forgets the runs whose every token expired longer ago than the verifier's leeway, in
    /// the store and in memory.
    async fn sweep(&self) {
        let before = UnixTime(
            self.clock
                .now()
                .0
                .saturating_sub(tailpass_verify::verifier::DEFAULT_LEEWAY),
        );
        if let Err(e) = self.store.sweep(before).await {
            tracing::warn!(error = %e, "cannot sweep expired budgets");
        }
        self.quotas.forget_expired(before);
    }

    /// Flushes every [`FLUSH_EVERY`] until `stop`, then once more (bounded by
    /// [`LAST_FLUSH_TIMEOUT`]), so a gateway stopped in order loses no charge.
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FLUSH_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut flushes: u32 = 0;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let _ = self.flush().await;
                flushes = flushes.wrapping_add(1);
                if flushes.is_multiple_of(SWEEP_EVERY) {
                    self.sweep().await;
                }
            }
            match tokio::time::timeout(LAST_FLUSH_TIMEOUT, self.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let runs = self.quotas.pending().len();
                    tracing::error!(runs, "budget charges not stored at shutdown are lost");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
