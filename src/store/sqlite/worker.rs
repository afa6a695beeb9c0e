//! The threads that touch the SQLite file: one writer, a few readers.
//!
//! Every write is a job sent to the writer thread. The thread takes all jobs queued (up to
//! [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE` transaction — each inside its own
//! savepoint, so one job's failure (a duplicate client id, say) does not undo the others; a job
//! alone in its batch needs none, its failure rolls the transaction back — and commits once. A job's caller gets its result only after that commit: nothing is answered
//! before it is durable, and a burst of token requests costs one transaction, not hundreds.
//! This is group commit for every write, not only the audit log.
//!
//! Reads run on a small pool of read-only connections under `spawn_blocking`; in WAL mode they
//! see every committed transaction and never block the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// The most jobs committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Jobs waiting for the writer at most; past it, callers wait (backpressure, bounded memory).
const QUEUE: usize = 4_096;
/// Read connections kept open.
const READERS: usize = 4;

/// What a job hands back once it ran: how to answer its caller given the commit's outcome.
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write: runs on the writer thread inside the batch transaction; says how it ended.
type Job = Box<dyn FnOnce(&Connection, Isolation) -> (Ran, Reply) + Send>;

/// How a job ended (a failed job's caller gets its error whatever the commit does).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ran {
    Done,
    Failed,
    /// Failed for want of space or an I/O error ([`StoreError::Unavailable`]).
    Unavailable,
}

/// How a job's writes are kept apart from the rest of its transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// Other jobs share the transaction: the job runs in a savepoint, undone alone if it fails.
    Savepoint,
    /// The job is the whole transaction: if it fails, the transaction is rolled back, which
    /// spares the savepoint's journal on the common path of one job per batch.
    Alone,
    /// The batch's transaction is gone (SQLite rolled it back itself after a full disk or an
    /// I/O error): the job must not run, since outside a transaction each of its statements
    /// would commit alone. Its caller gets the batch's error.
    Lost,
}

/// How a SQLite failure reaches callers: a duplicate key is a [`StoreError::Conflict`]; a full
/// disk (`SQLITE_FULL`, which SQLite answers for `ENOSPC`) or an I/O error (`SQLITE_IOERR_*`,
/// `EFBIG` or `EIO` on the WAL, the database or its shared memory) is
/// [`StoreError::Unavailable`] — nothing was written, the file is intact, and the same
/// request succeeds once space returns, so clients are told to retry (503 with `Retry-After`)
/// rather than that the server failed; anything else is [`StoreError::Backend`].
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match &e {
            rusqlite::Error::SqliteFailure(f, message)
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                StoreError::Conflict(message.clone().unwrap_or_else(|| e.to_string()))
            }
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                StoreError::Unavailable(format!("the disk is full ({e})"))
            }
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::SystemIoFailure =>
            {
                StoreError::Unavailable(format!(
                    "I/O error writing the database ({e}, extended code {})",
                    f.extended_code
                ))
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

/// Applies the per-connection settings: WAL, `synchronous = FULL` (see the module docs of
/// `sqlite`), foreign keys, savepoint journals in memory (not temporary files), and a busy
/// timeout for the rare writer from another process.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -8000; PRAGMA temp_store = MEMORY;",
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The writer thread's handle, and the reader pool.
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    /// When the last batch was refused as unavailable (full disk, I/O error), until one
    /// commits.
    write_fault: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the writer thread on `conn`, already migrated.
    pub fn start(conn: Connection, path: &Path) -> Result<Worker, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>(QUEUE);
        let write_fault = Arc::new(Mutex::new(None));
        let fault = write_fault.clone();
        std::thread::Builder::new()
            .name("tailpass-sqlite-writer".into())
            .spawn(move || write_loop(conn, rx, &fault))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Worker {
            jobs,
            path: path.to_owned(),
            readers: Mutex::new(Vec::new()),
            write_fault,
        })
    }

    /// Whether the last batch was refused as unavailable less than
    /// [`crate::store::WRITE_FAULT_SHOWN`] ago, none committed since.
    pub fn writes_failing(&self) -> bool {
        self.write_fault
            .lock()
            .ok()
            .and_then(|fault| *fault)
            .is_some_and(|at| at.elapsed() < crate::store::WRITE_FAULT_SHOWN)
    }

    /// Runs `f` in the next write batch; returns its result once the batch is committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn, isolation| {
            let outcome = match isolation {
                Isolation::Savepoint => in_savepoint(conn, f),
                Isolation::Alone => f(conn),
                Isolation::Lost => Err(StoreError::Unavailable(
                    "the write batch's transaction was rolled back".into(),
                )),
            };
            let ran = match &outcome {
                Ok(_) => Ran::Done,
                Err(StoreError::Unavailable(_)) => Ran::Unavailable,
                Err(_) => Ran::Failed,
            };
            let reply: Reply = Box::new(move |commit: Result<(), StoreError>| {
                let _ = tx.send(commit.and(outcome));
            });
            (ran, reply)
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Backend("the writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the writer thread dropped a job".into()))?
    }

    /// Runs `f` on a read-only connection, off the async workers.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.take_reader()?;
        let (result, conn) = tokio::task::spawn_blocking(move || {
            let result = f(&conn);
            (result, conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?;
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < READERS
        {
            pool.push(conn);
        }
        result
    }

    fn take_reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.readers.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }
}

/// Opens the writer connection (creating the file if needed) with its settings.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}

/// Runs one of the transaction statements every batch and job uses, prepared once.
fn run(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs `f` inside a savepoint, undoing its writes if it fails.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    run(conn, "SAVEPOINT job")?;
    match f(conn) {
        Ok(value) => {
            run(conn, "RELEASE job")?;
            Ok(value)
        }
        Err(e) => {
            // After a full disk SQLite may have rolled the whole transaction back already, and
            // the savepoint with it: the job's own error is the one to tell.
            if let Err(undo) = conn.execute_batch("ROLLBACK TO job; RELEASE job") {
                tracing::debug!(error = %undo, "undoing a failed job's savepoint failed");
            }
            Err(e)
        }
    }
}

fn write_loop(conn: Connection, mut rx: mpsc::Receiver<Job>, write_fault: &Mutex<Option<Instant>>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv().map(|job| batch.push(job)).is_some() {
        // Let the request handlers that are runnable queue their writes too before this batch
        // starts: on a busy server the next jobs are usually a few microseconds away, and one
        // commit for many jobs is the point of this thread.
        std::thread::yield_now();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let isolation = if batch.len() == 1 {
            Isolation::Alone
        } else {
            Isolation::Savepoint
        };
        let begun = run(&conn, "BEGIN IMMEDIATE");
        let (mut any_failed, mut any_unavailable) = (false, false);
        let replies: Vec<Reply> = batch
            .drain(..)
            .map(|job| {
                // SQLite ends the transaction itself on some failures (a full disk, an I/O
                // error); what follows must not run outside it, one autocommit at a time. With
                // no transaction at all nothing runs, and every caller hears why.
                let now = if begun.is_err() || conn.is_autocommit() {
                    Isolation::Lost
                } else {
                    isolation
                };
                let (ran, reply) = job(&conn, now);
                any_failed |= ran != Ran::Done;
                any_unavailable |= ran == Ran::Unavailable;
                reply
            })
            .collect();
        let committed = if begun.is_ok() && any_failed && isolation == Isolation::Alone {
            // The lone job failed part-way: none of its writes may stay. Its caller gets the
            // job's own error.
            if !conn.is_autocommit()
                && let Err(e) = run(&conn, "ROLLBACK")
            {
                tracing::error!(error = %e, "rolling back a failed write failed");
            }
            Ok(())
        } else if begun.is_ok() && conn.is_autocommit() {
            // The transaction was rolled back under the batch: nothing of it is committed.
            Err(StoreError::Unavailable(
                "the write batch's transaction was rolled back (disk full or I/O error)".into(),
            ))
        } else {
            begun.and_then(|()| run(&conn, "COMMIT"))
        };
        if let Ok(mut fault) = write_fault.lock() {
            if any_unavailable || matches!(committed, Err(StoreError::Unavailable(_))) {
                *fault = Some(Instant::now());
            } else if committed.is_ok() {
                *fault = None;
            }
        }
        if let Err(e) = &committed {
            tracing::error!(error = %e, jobs = replies.len(), "write batch not committed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for reply in replies {
            reply(
                committed
                    .as_ref()
                    .map(|_| ())
                    .map_err(StoreError::duplicate),
            );
        }
    }
}
