//! The threads that touch the SQLite file: one writer, a few readers.
//!
//! Every write is a job sent to the writer thread. The thread takes all jobs queued (up to
//! [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE` transaction and commits once. A job's
//! caller gets its result only after that commit: nothing is answered before it is durable,
//! and a burst of token requests costs one transaction, not hundreds. This is group commit for
//! every write, not only the audit log.
//!
//! One job's failure (a duplicate client id, say) must not undo the others. The jobs of a batch
//! first run side by side, with nothing between them: almost always they all succeed and the
//! batch commits as it ran. If one fails, the batch is rolled back and run again, each job in
//! a savepoint of its own, so that only the failed one's writes go. A savepoint copies every
//! page its job touches into a journal, so it is paid for only when a job fails. A job alone
//! in its batch needs neither: its failure rolls the transaction back.
//!
//! Reads run on a few reader threads ([`readers`]), each with a read-only connection of its
//! own; in WAL mode they see every committed transaction and never block the writer. Reads
//! queue for the next free reader. The threads and connections live as long as the store: no
//! thread is started or connection opened per read, and each connection's page cache is
//! bounded ([`READER_CACHE_KIB`]), so the memory reads hold is fixed once the caches have
//! filled. Every commit empties the readers' caches, so a read that a write decides on next
//! ([`Worker::peek`]) runs on the writer's connection instead, just before its next batch.

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
/// The reader threads to start, each with its connection: the reads that run at once. One per
/// core the process may use, from two to four. More could not run at once; each keeps its own
/// page cache and statements, which it fills only as it meets each kind of read.
pub fn readers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}
/// Reads waiting for a reader at most; past it, callers wait.
const READ_QUEUE: usize = 1_024;
/// Each read connection's page cache, in KiB (the writer's is [`WRITER_CACHE_KIB`]). Small:
/// reads are point lookups, whose B-tree interior pages fit in it, and the kernel's page cache
/// holds the file; a bigger one only fills slowly, which is memory growing long after start-up.
const READER_CACHE_KIB: u32 = 256;
/// Prepared statements each read connection keeps. Its reads are a handful of point lookups;
/// a rare read beyond them is prepared again. Every kept statement holds memory of its own,
/// which a reader would otherwise fill only as each rare read first reached it, minutes after
/// start-up.
const READER_STATEMENTS: usize = 16;
/// The writer connection's page cache, in KiB. Not bigger: when an insert splits a B-tree page
/// and renumbers its siblings, SQLite parks one page at a number past 1 GiB for a moment, and
/// the commit then walks the whole cache to drop it. With 8 MB that walk was a tenth of the
/// writer thread's time on code flows (whose random-keyed indexes split often); 2 MB still
/// holds the tables' and indexes' upper levels, and the kernel's page cache the rest.
const WRITER_CACHE_KIB: u32 = 2_000;

/// A write: runs on the writer thread inside the batch transaction (twice, if another job of
/// its batch failed the first time), then tells its caller how the commit ended.
trait Job: Send {
    /// Runs the job's writes, keeping its outcome for [`Job::answer`]; says how it ended.
    fn run(&mut self, conn: &Connection, isolation: Isolation) -> Ran;
    /// Answers the caller: the job's outcome, if the commit succeeded.
    fn answer(self: Box<Self>, commit: Result<(), StoreError>);
}

/// A write of a `T`, and where its result goes.
struct Write<T, F> {
    f: F,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: Fn(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, isolation: Isolation) -> Ran {
        let outcome = match isolation {
            Isolation::Savepoint => in_savepoint(conn, &self.f),
            Isolation::Shared | Isolation::Alone => (self.f)(conn),
            Isolation::Lost => Err(StoreError::Unavailable(
                "the write batch's transaction was rolled back".into(),
            )),
        };
        let ran = match &outcome {
            Ok(_) => Ran::Done,
            Err(StoreError::Unavailable(_)) => Ran::Unavailable,
            Err(_) => Ran::Failed,
        };
        self.outcome = Some(outcome);
        ran
    }

    fn answer(self: Box<Self>, commit: Result<(), StoreError>) {
        let outcome = self
            .outcome
            .unwrap_or_else(|| Err(StoreError::Backend("the write did not run".into())));
        let _ = self.reply.send(commit.and(outcome));
    }
}

/// What the writer thread is handed: a write for its next batch, or a read to run just before
/// it ([`Worker::peek`]).
enum Task {
    Write(Box<dyn Job>),
    Peek(ReadJob),
}

impl Task {
    fn sort(self, batch: &mut Vec<Box<dyn Job>>, peeks: &mut Vec<ReadJob>) {
        match self {
            Task::Write(job) => batch.push(job),
            Task::Peek(read) => peeks.push(read),
        }
    }
}

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
    /// Other jobs share the transaction and nothing separates them: if any job fails, the
    /// transaction is rolled back and the batch runs again, each job in a savepoint.
    Shared,
    /// Other jobs share the transaction: the job runs in a savepoint, undone alone if it fails.
    Savepoint,
    /// The job is the whole transaction: if it fails, the transaction is rolled back.
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
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA temp_store = MEMORY;",
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The writer thread's handle, and the reader pool.
pub struct Worker {
    jobs: mpsc::Sender<Task>,
    path: PathBuf,
    /// Reads for the reader threads.
    reads: mpsc::Sender<ReadJob>,
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

/// A read, run on a reader thread's connection; it sends its own result.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Opens a read-only connection with the readers' settings.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB};"))?;
    conn.set_prepared_statement_cache_capacity(READER_STATEMENTS);
    Ok(conn)
}

/// A reader thread: runs reads on `conn` until every sender is gone. The threads share one
/// queue; the one holding its lock waits for the next read.
fn read_loop(conn: Connection, queue: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        let Some(read) = queue.lock().ok().and_then(|mut rx| rx.blocking_recv()) else {
            return;
        };
        run_read(read, &conn);
    }
}

impl Worker {
    /// Starts the writer thread on `conn`, already migrated, and the reader threads.
    pub fn start(conn: Connection, path: &Path) -> Result<Worker, StoreError> {
        let (reads, queue) = mpsc::channel::<ReadJob>(READ_QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..readers() {
            let reader = open_reader(path)?;
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("tailpass-sqlite-reader-{n}"))
                .spawn(move || read_loop(reader, &queue))
                .map_err(|e| StoreError::Backend(format!("cannot start a reader thread: {e}")))?;
        }
        let (jobs, rx) = mpsc::channel::<Task>(QUEUE);
        let write_fault = Arc::new(Mutex::new(None));
        let fault = write_fault.clone();
        std::thread::Builder::new()
            .name("tailpass-sqlite-writer".into())
            .spawn(move || write_loop(conn, rx, &fault))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Worker {
            jobs,
            path: path.to_owned(),
            reads,
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

    /// Runs `f` in the next write batch; returns its result once the batch is committed. `f`
    /// may run twice (the first run rolled back, when another job of its batch failed), so it
    /// does nothing but its writes.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Write {
            f,
            outcome: None,
            reply,
        });
        hand_over(&self.jobs, Task::Write(job), rx, "the writer thread").await
    }

    /// Runs `f` on the writer's connection just before its next batch: it sees every
    /// committed write and none in flight. For a read that a write of the same request decides
    /// on next: the writer's cache is warm, where every commit empties a reader's, and the
    /// read costs no hand-over to another thread.
    pub async fn peek<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (read, rx) = read_job(f);
        hand_over(&self.jobs, Task::Peek(read), rx, "the writer thread").await
    }

    /// Runs `f` on a read-only connection, off the async workers, on the next free reader.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (read, rx) = read_job(f);
        hand_over(&self.reads, read, rx, "the reader threads").await
    }
}

/// Runs `read` on `conn`. A read that panics loses only its own answer (its caller hears that
/// the read was dropped), not the thread running it.
fn run_read(read: ReadJob, conn: &Connection) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(conn))).is_err() {
        tracing::error!("a read of the database panicked");
    }
}

/// `f` as a read that sends its own result, and where that result arrives.
fn read_job<T, F>(f: F) -> (ReadJob, oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    let read: ReadJob = Box::new(move |conn| {
        let _ = reply.send(f(conn));
    });
    (read, rx)
}

/// Queues `job` for `threads` and waits for its result on `answer`.
async fn hand_over<J, T>(
    queue: &mpsc::Sender<J>,
    job: J,
    answer: oneshot::Receiver<Result<T, StoreError>>,
    threads: &str,
) -> Result<T, StoreError> {
    queue
        .send(job)
        .await
        .map_err(|_| StoreError::Backend(format!("{threads}: stopped")))?;
    answer
        .await
        .map_err(|_| StoreError::Backend(format!("{threads}: a job was dropped unanswered")))?
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
    f: impl Fn(&Connection) -> Result<T, StoreError>,
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

fn write_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Task>,
    write_fault: &Mutex<Option<Instant>>,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut peeks: Vec<ReadJob> = Vec::new();
    while let Some(task) = rx.blocking_recv() {
        task.sort(&mut batch, &mut peeks);
        // Let the request handlers that are runnable queue their writes too before this batch
        // starts: on a busy server the next jobs are usually a few microseconds away, and one
        // commit for many jobs is the point of this thread.
        std::thread::yield_now();
        while batch.len() + peeks.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(task) => task.sort(&mut batch, &mut peeks),
                Err(_) => break,
            }
        }
        // Outside any transaction: each sees what is committed.
        for peek in peeks.drain(..) {
            run_read(peek, &conn);
        }
        if batch.is_empty() {
            continue;
        }
        let committed = if batch.len() > 1 && run_shared(&conn, &mut batch) {
            Outcome {
                committed: run(&conn, "COMMIT"),
                any_unavailable: false,
            }
        } else {
            let isolation = if batch.len() == 1 {
                Isolation::Alone
            } else {
                Isolation::Savepoint
            };
            run_isolated(&conn, &mut batch, isolation)
        };
        if let Ok(mut fault) = write_fault.lock() {
            if committed.any_unavailable
                || matches!(committed.committed, Err(StoreError::Unavailable(_)))
            {
                *fault = Some(Instant::now());
            } else if committed.committed.is_ok() {
                *fault = None;
            }
        }
        if let Err(e) = &committed.committed {
            tracing::error!(error = %e, jobs = batch.len(), "write batch not committed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for job in batch.drain(..) {
            job.answer(
                committed
                    .committed
                    .as_ref()
                    .map(|_| ())
                    .map_err(StoreError::duplicate),
            );
        }
    }
}

/// How a batch's transaction ended, and whether a job found the disk full or failing.
struct Outcome {
    committed: Result<(), StoreError>,
    any_unavailable: bool,
}

/// Runs every job of `batch` in one transaction with nothing between them. True when they all
/// succeeded and the transaction is open, ready to commit; otherwise it has been rolled back,
/// nothing of the run is kept, and the batch must run again in savepoints.
fn run_shared(conn: &Connection, batch: &mut [Box<dyn Job>]) -> bool {
    if run(conn, "BEGIN IMMEDIATE").is_err() {
        return false;
    }
    let all_done = batch
        .iter_mut()
        .all(|job| !conn.is_autocommit() && job.run(conn, Isolation::Shared) == Ran::Done);
    if all_done && !conn.is_autocommit() {
        return true;
    }
    if !conn.is_autocommit()
        && let Err(e) = run(conn, "ROLLBACK")
    {
        tracing::error!(error = %e, "rolling back a batch to run it in savepoints failed");
    }
    false
}

/// Runs `batch` in one transaction, each job `isolation` (alone, or in a savepoint each), and
/// commits what succeeded.
fn run_isolated(conn: &Connection, batch: &mut [Box<dyn Job>], isolation: Isolation) -> Outcome {
    let begun = run(conn, "BEGIN IMMEDIATE");
    let (mut any_failed, mut any_unavailable) = (false, false);
    for job in batch.iter_mut() {
        // SQLite ends the transaction itself on some failures (a full disk, an I/O error);
        // what follows must not run outside it, one autocommit at a time. With no transaction
        // at all nothing runs, and every caller hears why.
        let now = if begun.is_err() || conn.is_autocommit() {
            Isolation::Lost
        } else {
            isolation
        };
        let ran = job.run(conn, now);
        any_failed |= ran != Ran::Done;
        any_unavailable |= ran == Ran::Unavailable;
    }
    let committed = if begun.is_ok() && any_failed && isolation == Isolation::Alone {
        // The lone job failed part-way: none of its writes may stay. Its caller gets the
        // job's own error.
        if !conn.is_autocommit()
            && let Err(e) = run(conn, "ROLLBACK")
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
        begun.and_then(|()| run(conn, "COMMIT"))
    };
    Outcome {
        committed,
        any_unavailable,
    }
}
