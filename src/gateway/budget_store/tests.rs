//! The budget stores, each backend on the same suite (a real SQLite file; PostgreSQL on the
//! cluster `TAILPASS_TEST_POSTGRES` names, skipped without it, required with
//! `TAILPASS_REQUIRE_POSTGRES=1`), and the flusher's write-behind over them: charges that
//! outlive the table, replicas that learn each other's, and a store that cannot be reached.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use tailpass_verify::UnixTime;
use tailpass_verify::claims::Quota;

use super::postgres::PostgresBudgets;
use super::sqlite::SqliteBudgets;
use super::*;
use crate::clock::ManualClock;
use crate::store::postgres::PostgresTarget;
use crate::store::postgres::tests::{TestDb, cluster};

const NOW: UnixTime = UnixTime(1_000);

fn delta(run: &str, requests: u64, tokens: i64, expires: u64) -> Delta {
    Delta {
        run: run.into(),
        requests,
        tokens,
        expires: UnixTime(expires),
    }
}

fn total(run: &str, requests: u64, tokens: u64, expires: u64) -> Total {
    Total {
        run: run.into(),
        requests,
        tokens,
        expires: UnixTime(expires),
    }
}

fn sorted(mut totals: Vec<Total>) -> Vec<Total> {
    totals.sort_by(|a, b| a.run.cmp(&b.run));
    totals
}

/// Deltas add up, with negative token corrections; the latest expiry wins; loading returns
/// only runs with an unexpired token; sweeping deletes the others.
async fn flushes_add_up_and_expired_runs_go(store: &dyn BudgetStore) {
    let first = store
        .flush(&[delta("r1", 2, 70, 5_000), delta("r2", 1, 10, 1_500)], NOW)
        .await
        .unwrap();
    assert_eq!(
        sorted(first),
        vec![total("r1", 2, 70, 5_000), total("r2", 1, 10, 1_500)]
    );
    let second = store
        .flush(&[delta("r1", 1, -30, 4_000)], NOW)
        .await
        .unwrap();
    assert!(
        second.contains(&total("r1", 3, 40, 5_000)),
        "{second:?}: 2 + 1 requests, 70 - 30 tokens, the later expiry kept"
    );
    assert!(
        store.flush(&[], NOW).await.unwrap().len() <= 2,
        "nothing to add"
    );
    assert_eq!(
        sorted(store.load(UnixTime(2_000), 10).await.unwrap()),
        vec![total("r1", 3, 40, 5_000)],
        "r2's tokens have all expired"
    );
    assert_eq!(
        store.load(NOW, 1).await.unwrap(),
        vec![total("r1", 3, 40, 5_000)],
        "bounded, the latest-expiring first"
    );
    assert_eq!(store.sweep(UnixTime(2_000)).await.unwrap(), 1);
    assert_eq!(
        sorted(store.load(NOW, 10).await.unwrap()),
        vec![total("r1", 3, 40, 5_000)]
    );
}

/// A quota spent through one table, flushed, is where the next table (a restarted gateway)
/// starts: its remainder admitted, then refused at the limit.
async fn a_budget_outlives_its_table(store: Arc<dyn BudgetStore>) {
    let quota = Quota {
        requests: Some(3),
        tokens: Some(100),
    };
    let clock = Arc::new(ManualClock::new(NOW));
    let before = Arc::new(Quotas::new(10));
    let metrics = Arc::new(GatewayMetrics::default());
    let flusher = Flusher::new(
        store.clone(),
        before.clone(),
        metrics.clone(),
        clock.clone(),
    );
    before
        .admit("run", quota, 40, UnixTime(5_000), NOW)
        .unwrap()
        .settle(25);
    // A call still in flight when the gateway goes: charged its reservation.
    let in_flight = before
        .admit("run", quota, 40, UnixTime(5_000), NOW)
        .unwrap();
    flusher.flush().await.unwrap();
    assert!(before.pending().is_empty());
    std::mem::forget(in_flight);

    let after = Arc::new(Quotas::new(10));
    let restarted = Flusher::new(store, after.clone(), metrics, clock);
    assert!(restarted.load(10).await.unwrap() >= 1);
    assert_eq!(after.used("run"), Some((2, 65)), "25 used, 40 reserved");
    assert!(after.admit("run", quota, 10, UnixTime(5_000), NOW).is_ok());
    assert!(matches!(
        after.admit("run", quota, 0, UnixTime(5_000), NOW),
        Err(crate::gateway::quota::QuotaError::Requests { limit: 3, .. })
    ));
}

fn sqlite_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("state").join(DEFAULT_FILE)
}

#[tokio::test]
async fn sqlite_flushes_add_up_and_expired_runs_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteBudgets::open(&sqlite_in(&dir)).await.unwrap();
    flushes_add_up_and_expired_runs_go(&store).await;
}

#[tokio::test]
async fn sqlite_a_budget_outlives_its_table_and_the_file_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite_in(&dir);
    let store = SqliteBudgets::open(&path).await.unwrap();
    let quota = Quota {
        requests: Some(5),
        tokens: None,
    };
    let quotas = Arc::new(Quotas::new(10));
    quotas
        .admit("other", quota, 0, UnixTime(5_000), NOW)
        .unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    Flusher::new(
        Arc::new(store.clone()),
        quotas,
        Arc::new(GatewayMetrics::default()),
        clock,
    )
    .flush()
    .await
    .unwrap();
    drop(store);
    let reopened = SqliteBudgets::open(&path).await.unwrap();
    assert_eq!(
        reopened.load(NOW, 10).await.unwrap(),
        vec![total("other", 1, 0, 5_000)]
    );
    a_budget_outlives_its_table(Arc::new(reopened)).await;
}

#[tokio::test]
async fn the_sqlite_file_is_private_durable_and_the_gateways_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite_in(&dir);
    let store = SqliteBudgets::open(&path).await.unwrap();
    store.flush(&[delta("r", 1, 0, 5_000)], NOW).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        mode(path.parent().unwrap()),
        0o700,
        "created by the gateway"
    );
    let wal = path.with_extension("sqlite-wal");
    assert_eq!(mode(&wal), 0o600, "the WAL takes the file's mode");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");

    // A wider file is narrowed at open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(SqliteBudgets::open(&path).await.unwrap());
    assert_eq!(mode(&path), 0o600);

    // The issuer's database is not a budget file, and is not written into.
    let issuer = dir.path().join("tailpass.db");
    drop(
        crate::store::sqlite::SqliteStore::open(&issuer)
            .await
            .unwrap(),
    );
    let refused = SqliteBudgets::open(&issuer).await.unwrap_err();
    assert!(
        refused.to_string().contains("not a gateway budget file"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_flush_the_sqlite_file_refuses_keeps_its_charges_until_one_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite_in(&dir);
    let store = Arc::new(SqliteBudgets::open(&path).await.unwrap());
    let quotas = Arc::new(Quotas::new(10));
    let metrics = Arc::new(GatewayMetrics::default());
    let flusher = Flusher::new(
        store.clone(),
        quotas.clone(),
        metrics.clone(),
        Arc::new(ManualClock::new(NOW)),
    );
    let quota = Quota {
        requests: Some(10),
        tokens: None,
    };
    quotas.admit("r", quota, 0, UnixTime(5_000), NOW).unwrap();

    // Another writer holds the file: the flush fails, is counted, and keeps the charge.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert!(flusher.flush().await.is_err());
    assert!(
        metrics
            .render()
            .contains("tailpass_gateway_budget_flush_errors_total 1"),
        "{}",
        metrics.render()
    );
    // Admission goes on from memory meanwhile.
    quotas.admit("r", quota, 0, UnixTime(5_000), NOW).unwrap();
    assert_eq!(quotas.pending().first().map(|d| d.requests), Some(2));

    blocker.execute_batch("ROLLBACK").unwrap();
    flusher.flush().await.unwrap();
    assert!(quotas.pending().is_empty());
    assert_eq!(
        store.load(NOW, 10).await.unwrap(),
        vec![total("r", 2, 0, 5_000)],
        "both charges, once"
    );
}

#[tokio::test]
async fn a_crash_loses_only_what_was_charged_since_the_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BudgetStore> =
        Arc::new(SqliteBudgets::open(&sqlite_in(&dir)).await.unwrap());
    let clock = Arc::new(ManualClock::new(NOW));
    let metrics = Arc::new(GatewayMetrics::default());
    let quota = Quota {
        requests: Some(10),
        tokens: None,
    };
    let before = Arc::new(Quotas::new(10));
    let flusher = Flusher::new(
        store.clone(),
        before.clone(),
        metrics.clone(),
        clock.clone(),
    );
    for _ in 0..4 {
        before.admit("r", quota, 0, UnixTime(5_000), NOW).unwrap();
    }
    flusher.flush().await.unwrap();
    // Charged after the last flush, then the process dies without its last one.
    before.admit("r", quota, 0, UnixTime(5_000), NOW).unwrap();
    drop((flusher, before));

    let after = Arc::new(Quotas::new(10));
    Flusher::new(store, after.clone(), metrics, clock)
        .load(10)
        .await
        .unwrap();
    assert_eq!(
        after.used("r"),
        Some((4, 0)),
        "the fifth request is lost, no more"
    );
}

/// A budget store on a database of its own, with the database.
async fn postgres() -> Option<(TestDb, PostgresTarget)> {
    let db = TestDb::create().await?;
    let target = PostgresTarget::parse(&db.url()).unwrap();
    Some((db, target))
}

#[tokio::test]
async fn postgres_flushes_add_up_and_expired_runs_go() {
    let Some((db, target)) = postgres().await else {
        return;
    };
    let store = PostgresBudgets::open(&target, None, 2).await.unwrap();
    flushes_add_up_and_expired_runs_go(&store).await;
    db.drop().await;
}

#[tokio::test]
async fn postgres_a_budget_outlives_its_table() {
    let Some((db, target)) = postgres().await else {
        return;
    };
    let store = PostgresBudgets::open(&target, None, 2).await.unwrap();
    a_budget_outlives_its_table(Arc::new(store)).await;
    db.drop().await;
}

#[tokio::test]
async fn replicas_on_postgres_read_back_what_the_others_charged() {
    let Some((db, target)) = postgres().await else {
        return;
    };
    let a = PostgresBudgets::open(&target, None, 2).await.unwrap();
    let b = PostgresBudgets::open(&target, None, 2).await.unwrap();
    assert!(a.load(NOW, 10).await.unwrap().is_empty());
    assert!(b.load(NOW, 10).await.unwrap().is_empty());
    a.flush(&[delta("r", 2, 70, 5_000)], NOW).await.unwrap();
    // B never charged r: its next flush, with nothing to add, still learns of it.
    assert_eq!(
        b.flush(&[], NOW).await.unwrap(),
        vec![total("r", 2, 70, 5_000)]
    );
    assert_eq!(
        b.flush(&[delta("r", 1, 5, 5_000)], NOW).await.unwrap(),
        vec![total("r", 3, 75, 5_000)]
    );
    assert!(
        a.flush(&[], NOW)
            .await
            .unwrap()
            .contains(&total("r", 3, 75, 5_000))
    );
    // Through the tables: A's table learns B's charge and refuses at the shared limit.
    let quotas = Arc::new(Quotas::new(10));
    let flusher = Flusher::new(
        Arc::new(a),
        quotas.clone(),
        Arc::new(GatewayMetrics::default()),
        Arc::new(ManualClock::new(NOW)),
    );
    flusher.flush().await.unwrap();
    assert_eq!(quotas.used("r"), Some((3, 75)));
    let quota = Quota {
        requests: Some(3),
        tokens: None,
    };
    assert!(quotas.admit("r", quota, 0, UnixTime(5_000), NOW).is_err());
    db.drop().await;
}

/// Runs `sql` as the cluster's administrator.
async fn admin(sql: &str) {
    let pool = cluster().unwrap().pool(None, 1).unwrap();
    pool.get().await.unwrap().batch_execute(sql).await.unwrap();
}

#[tokio::test]
async fn a_flush_while_postgres_is_out_of_reach_keeps_its_charges_until_one_is_stored() {
    let Some((db, target)) = postgres().await else {
        return;
    };
    let store = Arc::new(PostgresBudgets::open(&target, None, 2).await.unwrap());
    let quotas = Arc::new(Quotas::new(10));
    let metrics = Arc::new(GatewayMetrics::default());
    let flusher = Flusher::new(
        store.clone(),
        quotas.clone(),
        metrics.clone(),
        Arc::new(ManualClock::new(NOW)),
    );
    let quota = Quota {
        requests: Some(10),
        tokens: Some(1_000),
    };
    quotas
        .admit("r", quota, 30, UnixTime(5_000), NOW)
        .unwrap()
        .settle(12);
    flusher.flush().await.unwrap();

    let name = target.to_string();
    let name = name
        .rsplit('/')
        .next()
        .and_then(|s| s.split('?').next())
        .unwrap()
        .to_owned();
    admin(&format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid();"
    ))
    .await;
    quotas
        .admit("r", quota, 30, UnixTime(5_000), NOW)
        .unwrap()
        .settle(8);
    assert!(flusher.flush().await.is_err(), "the connection was cut");
    assert!(flusher.flush().await.is_err(), "no new connection allowed");
    assert!(
        metrics
            .render()
            .contains("tailpass_gateway_budget_flush_errors_total 2")
    );
    assert_eq!(quotas.used("r"), Some((2, 20)), "served from memory");

    admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    flusher.flush().await.unwrap();
    assert!(quotas.pending().is_empty());
    assert_eq!(
        store.load(NOW, 10).await.unwrap(),
        vec![total("r", 2, 20, 5_000)]
    );
    db.drop().await;
}
