//! Tests of the SQLite store's own internals: the file, its migrations, query plans, the
//! writer's batches. What every backend must do is `store/tests.rs`'s suite.

use super::*;
use crate::audit::{EventKind, Outcome};
use crate::store::tests::{Raw, client, full_event, listed, times_since};
use rusqlite::params_from_iter;

#[async_trait::async_trait]
impl Raw for SqliteStore {
    async fn execute(&self, sql: &str) -> Result<u64, StoreError> {
        let sql = sql.to_owned();
        self.worker
            .write(move |c| Ok(u64::try_from(c.execute(&sql, [])?).unwrap_or(u64::MAX)))
            .await
    }

    async fn count(&self, table: &str) -> Result<i64, StoreError> {
        let sql = format!("SELECT count(*) FROM {table}");
        self.worker
            .read(move |c| Ok(c.query_row(&sql, [], |r| r.get(0))?))
            .await
    }

    fn audit_tables(&self) -> &'static [&'static str] {
        &["audit_context", "audit_run_zone"]
    }
}

pub(crate) async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in(dir.path()).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn database_file_is_private_and_reopens() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.insert_client(&client("c1")).await.unwrap();
    drop(store);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.clients().await.unwrap().len(), 1);
}

#[tokio::test]
async fn audit_rows_survive_the_migrations() {
    // A database left at schema version 1 by an older tailpass, holding audit events whose
    // times are not in seq order (the clock stepped back), and a run id with multi-byte
    // characters inside its zone prefix.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let mut old = vec![
        full_event(10, "old0"),
        full_event(12, "old1"),
        full_event(11, "ünïcödé-run-2"),
    ];
    old[2].outcome = Outcome::Denied;
    old[2].reason = Some("no rule allows node n1".into());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "BEGIN; {}; PRAGMA user_version = 1; COMMIT;",
            MIGRATIONS[0]
        ))
        .unwrap();
        for e in &old {
            conn.execute(
                "INSERT INTO audit (time, event, outcome, user_login, node_id, run_id, jti, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    time(e.time),
                    e.event.as_str(),
                    e.outcome.as_str(),
                    e.user,
                    e.node_id,
                    e.run_id,
                    e.jti,
                    encode(e).unwrap()
                ],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let mut child = AuditEvent::new(UnixTime(20), EventKind::TokenExchange, Outcome::Success);
    child.run_id = Some("new".into());
    child.parent_run_id = Some("old1".into());
    child.root_run_id = Some("old1".into());
    store
        .append_audit(vec![child.clone()].into())
        .await
        .unwrap();
    let all = listed(
        &store,
        AuditFilter {
            ..Default::default()
        },
    )
    .await;
    let events: Vec<AuditEvent> = all.iter().map(|r| r.event.clone()).collect();
    let mut expected = old.clone();
    expected.push(child);
    assert_eq!(events, expected, "every field kept, in the original order");
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        [10_000_000, 12_000_000, 12_000_001, 20_000_000],
        "renumbered: increasing, and never below the event's time in microseconds"
    );
    let run = listed(
        &store,
        AuditFilter {
            run: Some("old1".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(run.len(), 2, "the run (through its zone) and its child");
    for id in ["ünïcödé-run-2", "old0"] {
        let found = listed(
            &store,
            AuditFilter {
                run: Some(id.into()),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(found.len(), 1, "{id}");
        assert_eq!(found[0].event.run_id.as_deref(), Some(id));
    }
    let by_node = listed(
        &store,
        AuditFilter {
            node: old[0].node_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_node.len(), 3, "the migrated contexts keep their node");
    let times = times_since(&store, 11).await;
    assert_eq!(times, [12, 11, 20]);
    for table in ["audit", "audit_context", "audit_run_zone"] {
        let tamper = store
            .worker
            .write(move |c| Ok(c.execute(&format!("DELETE FROM {table}"), [])?))
            .await;
        assert!(
            tamper.unwrap_err().to_string().contains("append-only"),
            "{table}"
        );
    }
    let plan: String = store
        .worker
        .read(|c| {
            Ok(c.query_row(
                "EXPLAIN QUERY PLAN SELECT seq FROM audit WHERE parent_run_id = 'x'",
                [],
                |r| r.get(3),
            )?)
        })
        .await
        .unwrap();
    assert!(plan.contains("audit_parent_run"), "{plan}");
}

#[tokio::test]
async fn audit_queries_never_scan_the_whole_log() {
    let (_dir, store) = store().await;
    let filters = [
        AuditFilter {
            run: Some("01jx".into()),
            limit: 10,
            ..Default::default()
        },
        AuditFilter {
            node: Some("nX".into()),
            limit: 10,
            ..Default::default()
        },
        AuditFilter {
            user: Some("alice@example.com".into()),
            event: Some(EventKind::AgentToken),
            limit: 10,
            ..Default::default()
        },
        AuditFilter {
            since: Some(UnixTime(1_000)),
            limit: 10,
            ..Default::default()
        },
    ];
    for filter in filters {
        let (sql, args) = audit::select(&filter);
        let plan: Vec<String> = store
            .worker
            .read(move |c| {
                let mut explain = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = explain.query_map(params_from_iter(args), |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        // A full pass over the events reads "SCAN a" or "SCAN e", with or without an index.
        let scans: Vec<&String> = plan
            .iter()
            .filter(|step| {
                ["SCAN a", "SCAN e"]
                    .iter()
                    .any(|s| *step == s || step.starts_with(&format!("{s} ")))
            })
            .collect();
        assert!(scans.is_empty(), "{filter:?}: {plan:#?}");
    }
}

#[tokio::test]
async fn the_purge_finds_its_rows_through_indexes_and_scans_no_table() {
    let (_dir, store) = store().await;
    for sql in PURGES {
        let plan: Vec<String> = store
            .worker
            .read(move |c| {
                let mut explain = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let times = vec![1_700_000_000_i64; explain.parameter_count()];
                let rows = explain.query_map(params_from_iter(times), |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        // "SCAN t" reads the whole table, "SCAN t USING INDEX i" the whole index.
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN ")),
            "{sql}: {plan:#?}"
        );
    }
}

#[tokio::test]
async fn the_purge_deletes_past_its_step_in_steps_and_keeps_what_is_live() {
    let (_dir, store) = store().await;
    // Two and a half steps' worth of expired codes, and one live code.
    let expired = PURGE_STEP * 5 / 2;
    store
        .execute(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {expired}) \
             INSERT INTO codes (code_hash, client_id, expires_at, data) \
             SELECT printf('%064x', i), 'c1', 100, '{{}}' FROM n"
        ))
        .await
        .unwrap();
    store
        .execute("INSERT INTO codes (code_hash, client_id, expires_at, data) VALUES ('live', 'c1', 10000, '{}')")
        .await
        .unwrap();
    let purged = store
        .purge(UnixTime(5_000), 0, UnixTime(4_000))
        .await
        .unwrap();
    assert_eq!(purged, u64::try_from(expired).unwrap());
    assert_eq!(store.count("codes").await.unwrap(), 1);
}

/// A write job that stores a consent for `user` and then fails.
fn consent_then_fail(c: &Connection, user: &str) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO consents (client_id, user_key, granted_at) VALUES ('c1', ?1, 1)",
        [user],
    )?;
    Err(StoreError::Backend("refused after writing".into()))
}

async fn consents(store: &SqliteStore) -> i64 {
    store
        .worker
        .read(|c| Ok(c.query_row("SELECT count(*) FROM consents", [], |r| r.get(0))?))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failed_write_leaves_nothing_behind_alone_or_batched() {
    let (_dir, store) = store().await;
    // Alone in its batch: the transaction is rolled back.
    let failed = store.worker.write(|c| consent_then_fail(c, "u1")).await;
    assert_eq!(
        failed.unwrap_err().to_string(),
        StoreError::Backend("refused after writing".into()).to_string()
    );
    assert_eq!(consents(&store).await, 0);
    // Beside other jobs (queued together, so usually one batch with savepoints; either way
    // only the failed job's write must go).
    let c = ClientId("c1".into());
    let approved = Consent::default();
    let (failed, kept, other) = tokio::join!(
        store.worker.write(|c| consent_then_fail(c, "u2")),
        store.insert_consent(&c, "u3", &approved, UnixTime(1)),
        store.insert_consent(&c, "u4", &approved, UnixTime(1)),
    );
    assert!(failed.is_err());
    kept.unwrap();
    other.unwrap();
    assert_eq!(consents(&store).await, 2);
    // The writer goes on.
    store.insert_client(&client("c1")).await.unwrap();
    assert!(store.consent(&c, "u3").await.unwrap().is_some());
    assert!(store.consent(&c, "u2").await.unwrap().is_none());
}

/// A consent insert for `user` that counts its runs in `runs`.
fn counted_consent(
    user: &'static str,
    runs: &Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(&Connection) -> Result<(), StoreError> + Send + 'static {
    let runs = runs.clone();
    move |c| {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        c.execute(
            "INSERT INTO consents (client_id, user_key, granted_at) VALUES ('c1', ?1, 1)",
            [user],
        )?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_once_and_again_in_savepoints_only_when_a_job_fails() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let (_dir, store) = store().await;
    let store = Arc::new(store);
    // Holds the writer thread inside a first job while the batch under test queues up.
    let hold = |store: &Arc<SqliteStore>| {
        let (started, running) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        let held = store.clone();
        let job = tokio::spawn(async move {
            held.worker
                .write(move |_| {
                    let _ = started.send(());
                    let _ = gate.lock().map(|g| g.recv());
                    Ok(())
                })
                .await
        });
        (job, running, release)
    };
    // Polls a write once, on this thread: the poll hands its job to the writer's queue, so
    // when it returns the job is queued. (Counting the queue's reserved slots instead raced:
    // a task on another thread can hold its slot before its job is in.)
    async fn queued<F: std::future::Future + Unpin>(write: &mut F) {
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut *write).poll(cx).is_pending())
        })
        .await;
        assert!(polled, "the write was answered while the writer was held");
    }
    let (held, running, release) = hold(&store);
    tokio::task::spawn_blocking(move || running.recv())
        .await
        .unwrap()
        .unwrap();
    let (first, failing, last) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let s = store.clone();
    let f = counted_consent("u1", &first);
    let mut a = Box::pin(async move { s.worker.write(f).await });
    queued(&mut a).await;
    let s = store.clone();
    let counted = failing.clone();
    let mut b = Box::pin(async move {
        s.worker
            .write(move |c| {
                counted.fetch_add(1, SeqCst);
                consent_then_fail(c, "u2")
            })
            .await
    });
    queued(&mut b).await;
    let s = store.clone();
    let f = counted_consent("u3", &last);
    let mut c = Box::pin(async move { s.worker.write(f).await });
    queued(&mut c).await;
    release.send(()).unwrap();
    held.await.unwrap().unwrap();
    a.await.unwrap();
    assert!(b.await.is_err());
    c.await.unwrap();
    // The batch ran side by side until the failure, was rolled back, and ran again in
    // savepoints: the jobs before the failure ran twice, each write kept once.
    assert_eq!(
        (first.load(SeqCst), failing.load(SeqCst), last.load(SeqCst)),
        (2, 2, 1)
    );
    assert_eq!(consents(&store).await, 2);

    // A batch in which every job succeeds runs each job once.
    let (held, running, release) = hold(&store);
    tokio::task::spawn_blocking(move || running.recv())
        .await
        .unwrap()
        .unwrap();
    let runs: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut jobs = Vec::new();
    for (user, counted) in ["u4", "u5", "u6"].into_iter().zip(&runs) {
        let s = store.clone();
        let f = counted_consent(user, counted);
        let mut job = Box::pin(async move { s.worker.write(f).await });
        queued(&mut job).await;
        jobs.push(job);
    }
    release.send(()).unwrap();
    held.await.unwrap().unwrap();
    for job in jobs {
        job.await.unwrap();
    }
    assert!(runs.iter().all(|r| r.load(SeqCst) == 1));
    assert_eq!(consents(&store).await, 5);
}

#[test]
fn answered_writes_are_synced_to_disk_not_only_to_the_os() {
    // `synchronous = NORMAL` in WAL mode leaves committed transactions in the OS page cache
    // until a checkpoint: a power loss loses writes that were already answered.
    let dir = tempfile::tempdir().unwrap();
    let conn = super::worker::open_writer(&dir.path().join("t.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (mode.as_str(), sync),
        ("wal", 2),
        "WAL with synchronous = FULL (2)"
    );
}

#[tokio::test]
async fn runs_are_written_as_zones_per_prefix_and_job() {
    let (_dir, store) = store().await;
    crate::store::tests::runs_are_found_through_their_zones_and_nothing_else_is(&store).await;
    let zones = store.count("audit_run_zone").await.unwrap();
    assert!(
        zones < 300,
        "a zone per prefix and job, not per event: {zones}"
    );
}

/// A backup taken while revocations are being written is one commit's state (the sequence
/// numbers a gap-free prefix of what was written), private, and opens as a store.
#[tokio::test]
async fn a_backup_of_a_store_being_written_is_consistent_and_opens() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tailpass.db");
    let store = std::sync::Arc::new(SqliteStore::open(&path).await.unwrap());
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                store
                    .insert_revocation(
                        RevocationKind::Jti,
                        &format!("j{i}"),
                        UnixTime(1_000 + i),
                        None,
                    )
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let copy = dir.path().join("backup.db");
    let pages = SqliteStore::backup(&path, &copy).await.unwrap();
    assert!(pages > 0);
    writer.await.unwrap();
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        SqliteStore::backup(&path, &copy).await.is_err(),
        "an existing file is not overwritten"
    );
    let restored = SqliteStore::open(&copy).await.unwrap();
    let seqs: Vec<u64> = restored
        .revocations_since(0)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "a prefix"
    );
    assert_eq!(store.revocations_since(0).await.unwrap().len(), 300);
}

#[test]
fn a_full_disk_and_io_errors_are_unavailable_a_duplicate_a_conflict_the_rest_backend() {
    use rusqlite::ffi;
    let failure = |code: i32| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
    let full = StoreError::from(failure(ffi::SQLITE_FULL));
    assert!(matches!(full, StoreError::Unavailable(_)), "{full}");
    assert!(full.to_string().contains("disk is full"), "{full}");
    for code in [
        ffi::SQLITE_IOERR,
        ffi::SQLITE_IOERR_WRITE,
        ffi::SQLITE_IOERR_FSYNC,
        ffi::SQLITE_IOERR_SHMSIZE,
        ffi::SQLITE_IOERR_TRUNCATE,
    ] {
        let io = StoreError::from(failure(code));
        assert!(matches!(io, StoreError::Unavailable(_)), "{code}: {io}");
        assert!(io.to_string().contains("I/O error"), "{io}");
    }
    assert!(matches!(
        StoreError::from(failure(ffi::SQLITE_CONSTRAINT_UNIQUE)),
        StoreError::Conflict(_)
    ));
    for code in [ffi::SQLITE_CORRUPT, ffi::SQLITE_CONSTRAINT_CHECK] {
        assert!(
            matches!(StoreError::from(failure(code)), StoreError::Backend(_)),
            "{code}"
        );
    }
}

async fn client_ids(store: &SqliteStore) -> Vec<String> {
    let clients = store.clients().await.unwrap();
    clients.into_iter().map(|c| c.client_id.0).collect()
}

/// Caps the writer connection's database at its current size (`PRAGMA max_page_count`), so
/// that SQLite itself answers `SQLITE_FULL` as it does when the file system is full; `None`
/// lifts the cap.
async fn cap_database(store: &SqliteStore, cap: bool) {
    store
        .worker
        .write(move |c| {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let max = if cap { pages } else { 1 << 30 };
            let _: i64 =
                c.query_row(&format!("PRAGMA max_page_count = {max}"), [], |r| r.get(0))?;
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_full_database_refuses_writes_as_unavailable_keeps_what_was_answered_and_recovers() {
    let (_dir, store) = store().await;
    assert!(!store.writes_failing());
    let mut answered: Vec<String> = Vec::new();
    for i in 0..5 {
        let id = format!("kept{i}");
        store.insert_client(&client(&id)).await.unwrap();
        answered.push(id);
    }
    cap_database(&store, true).await;
    // Writes, batched together, until pages run out: each is answered or refused whole.
    let mut refused: Vec<(String, StoreError)> = Vec::new();
    for round in 0..200 {
        let batch: Vec<Client> = (0..8).map(|i| client(&format!("r{round}-{i}"))).collect();
        let outcomes =
            futures_util::future::join_all(batch.iter().map(|c| store.insert_client(c))).await;
        for (c, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => answered.push(c.client_id.0),
                Err(e) => refused.push((c.client_id.0, e)),
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(!refused.is_empty(), "a capped database fills up");
    for (id, e) in &refused {
        assert!(
            matches!(e, StoreError::Unavailable(_)),
            "{id}: 503, not 500: {e}"
        );
    }
    // The rounds' writes may have split over batches, a smaller one fitting after a refused
    // one and clearing the fault: one write alone, refused last, is what readiness tells.
    for n in 0.. {
        let id = format!("last{n}");
        match store.insert_client(&client(&id)).await {
            Ok(()) => answered.push(id),
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{id}: {e}");
                refused.push((id, e));
                break;
            }
        }
        assert!(n < 100, "a full database took a hundred more writes");
    }
    assert!(store.writes_failing(), "readiness is told");
    let stored = client_ids(&store).await;
    for (id, _) in &refused {
        assert!(!stored.contains(id), "a refused write leaves nothing: {id}");
    }
    // Space returns: the same connection writes again, and nothing answered is lost.
    cap_database(&store, false).await;
    store.insert_client(&client("after")).await.unwrap();
    assert!(!store.writes_failing(), "a committed write clears it");
    answered.push("after".into());
    let stored = client_ids(&store).await;
    for id in &answered {
        assert!(stored.contains(id), "answered, then lost: {id}");
    }
    let check: String = store
        .worker
        .read(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(check, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_past_the_readers_wait_their_turn() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let count = 3 * worker::readers();
    let (_dir, store) = store().await;
    let store = Arc::new(store);
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(std::sync::Mutex::new(gate));
    let reads: Vec<_> =
        (0..count)
            .map(|_| {
                let (store, running, most, gate) =
                    (store.clone(), running.clone(), most.clone(), gate.clone());
                tokio::spawn(async move {
                    store
                        .worker
                        .read(move |c| {
                            most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
                            let _ = gate.lock().map(|g| g.recv());
                            running.fetch_sub(1, SeqCst);
                            Ok(c.query_row("SELECT count(*) FROM clients", [], |r| {
                                r.get::<_, i64>(0)
                            })?)
                        })
                        .await
                })
            })
            .collect();
    while running.load(SeqCst) < worker::readers() {
        tokio::task::yield_now().await;
    }
    for _ in 0..count {
        release.send(()).unwrap();
    }
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap(), 0);
    }
    assert_eq!(
        most.load(SeqCst),
        worker::readers(),
        "reads ran past the readers"
    );
}

#[tokio::test]
async fn a_peek_sees_committed_writes_only_and_a_panicking_one_leaves_the_writer_running() {
    let (_dir, store) = store().await;
    let count = |c: &rusqlite::Connection| -> Result<i64, StoreError> {
        Ok(c.query_row("SELECT count(*) FROM clients", [], |r| r.get(0))?)
    };
    assert_eq!(store.worker.peek(count).await.unwrap(), 0);
    store
        .worker
        .write(|c| {
            c.execute(
                "INSERT INTO clients (client_id, created_at, data) VALUES ('p1', 0, '{}')",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(store.worker.peek(count).await.unwrap(), 1);
    // A peek queued beside a write runs before its batch, outside its transaction.
    let (peeked, wrote) = tokio::join!(
        store.worker.peek(count),
        store.worker.write(|c| {
            c.execute(
                "INSERT INTO clients (client_id, created_at, data) VALUES ('p2', 0, '{}')",
                [],
            )?;
            Ok(())
        })
    );
    wrote.unwrap();
    assert_eq!(peeked.unwrap(), 1, "the peek saw no uncommitted write");
    let lost = store
        .worker
        .peek(|_| -> Result<(), StoreError> { panic!("a peek that panics") })
        .await;
    assert!(lost.is_err(), "its caller hears it was dropped");
    assert_eq!(store.worker.peek(count).await.unwrap(), 2);
}
