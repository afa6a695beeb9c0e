//! In-process agent-token benchmark: how many agent tokens one core mints through the real
//! grant (policy, claims, ES256 signature, audit event group-committed in SQLite), beside the
//! raw ring ES256 signing rate measured in the same run, on the same core.
//!
//! ```text
//! taskset -c 0 cargo bench --bench agent -- [--seconds N] [--concurrency N] [--store URL]
//! ```
//! With `--store postgres://…` the audit events commit to PostgreSQL instead (whose server
//! runs off the pinned core).
//! `bench/run.sh agent-inproc` runs it pinned; `bench/run.sh agent` is the same grant over HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tailpass::clock::{Clock, SystemClock};
use tailpass::grant::agent::{AgentRequest, agent};
use tailpass::identity::whois::WhoIsResponse;

mod raw_sign;
mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Measured seconds for each figure.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent requests in flight in the grant benchmark (group commit batches them).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Skip the raw signing figure (for profiling the grant alone).
    #[arg(long)]
    no_raw: bool,
    /// The store (`sqlite:PATH` or `postgres://…`); the default is SQLite in a temporary
    /// directory. On PostgreSQL the keys are sealed under a throwaway key-encryption key.
    #[arg(long)]
    store: Option<String>,
    /// Ignored: `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const GATEWAY: &str = "https://gateway.tail1234.ts.net";

const POLICY: &str = include_str!("../bench/policy.toml");

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let tagged = include_str!("../tests/fixtures/whois-tagged.json");
    let peers = dir.path().join("peers.json");
    std::fs::write(&peers, format!(r#"{{"127.0.0.3": {tagged}}}"#)).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut global = Vec::new();
    if let Some(store) = &args.store {
        global.extend(["--store".to_owned(), store.clone()]);
        if store.starts_with("postgres") {
            let kek = dir.path().join("kek");
            std::fs::write(
                &kek,
                tailpass::keys::kek::Kek::generate_line()
                    .unwrap()
                    .as_bytes(),
            )
            .unwrap();
            std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            global.extend([
                "--key-encryption-key-file".to_owned(),
                kek.to_str().unwrap().to_owned(),
            ]);
        }
    }
    let settings = support::settings(dir.path(), &peers, &policy, 0, &global);
    let identity = Arc::new(
        serde_json::from_str::<WhoIsResponse>(tagged)
            .unwrap()
            .into_identity()
            .unwrap(),
    );

    // One worker thread: the grant's figure is per core, like the signing figure. The store's
    // writer thread shares the core when the process is pinned (bench/run.sh does).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = if args.no_raw {
        f64::NAN
    } else {
        raw_sign::rate(args.seconds)
    };
    let (minted, elapsed) = runtime.block_on(async {
        let running = tailpass::server::start(settings, Arc::new(SystemClock) as Arc<dyn Clock>)
            .await
            .unwrap();
        let state = running.state().unwrap().clone();
        let mint = {
            let state = state.clone();
            let identity = identity.clone();
            move || {
                let state = state.clone();
                let identity = identity.clone();
                async move {
                    let request = AgentRequest {
                        audiences: vec![GATEWAY.to_owned()],
                        scope: Some("llm:chat".to_owned()),
                        expires_in: None,
                        run_label: Some("bench".to_owned()),
                    };
                    agent(&state.grants(), Ok(identity), None, &request, None)
                        .await
                        .unwrap();
                }
            }
        };
        // Warm-up: caches, the store's statements.
        for _ in 0..200 {
            mint().await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..args.concurrency {
            let (stop, count, mint) = (stop.clone(), count.clone(), mint.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    mint().await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        let minted = count.load(Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        // The last handles to the state go before shutdown, which drains the audit queue.
        drop((mint, state));
        running.shutdown().await;
        (minted, elapsed)
    });
    let rate = minted as f64 / elapsed;
    println!("raw ring ES256 signatures: {raw:.0}/s");
    println!(
        "agent tokens in-process:   {rate:.0}/s  ({minted} in {elapsed:.1}s, {} in flight)  = {:.0}% of raw signing",
        args.concurrency,
        100.0 * rate / raw
    );
}
