//! The ceiling of a signed token over HTTP/1.1 on this machine: a bare server that answers
//! every request with a freshly signed ES256 JWT and does nothing else — no routing, no
//! middleware, no policy, no claims beyond a fixed set, no audit event, no store. Whatever
//! tailpass does on top of that costs more, so this rate bounds what any issuer can reach over
//! HTTP/1.1 here, one request per round trip, one core.
//!
//! ```text
//! taskset -c 0 ceiling --listen 127.0.0.1:PORT [--raw-seconds N]
//! ```
//! Before it listens it measures ring's raw ES256 signing rate on its core for
//! `--raw-seconds` and prints it, so the figure it is read against comes from the same run.
//! `bench/run.sh ceiling` runs it pinned to core 0 under the agent load from core 1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

mod raw_sign;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// Seconds of raw signing measured before listening.
    #[arg(long, default_value_t = 3)]
    raw_seconds: u64,
    /// Ignored: `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The signing key and what every token shares.
struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// `base64url(header) + "."`.
    header: String,
    next_jti: AtomicU64,
}

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"at+jwt","kid":"ceiling"}"#);
        Signer {
            key,
            rng,
            header: format!("{header}."),
            next_jti: AtomicU64::new(0),
        }
    }

    /// A token about the size of an agent token: the same registered claims and a tailnet
    /// node's, with a fresh `jti`.
    fn token(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let jti = self.next_jti.fetch_add(1, Ordering::Relaxed);
        let claims = format!(
            concat!(
                r#"{{"iss":"http://127.0.0.1","sub":"node:nK3m8Qp2Rs11CNTRL","#,
                r#""aud":"https://gateway.tail1234.ts.net","exp":{exp},"iat":{now},"nbf":{now},"#,
                r#""jti":"ceiling-{jti:016x}","client_id":"node:nK3m8Qp2Rs11CNTRL","#,
                r#""scope":"llm:invoke","tailnet":"tail1234.ts.net","#,
                r#""node":"ci-runner-7.tail1234.ts.net","tags":["tag:ci"],"#,
                r#""run_id":"run-{jti:016x}","#,
                r#""cnf":{{"tailnet_node":"nK3m8Qp2Rs11CNTRL"}}}}"#
            ),
            exp = now + 300,
            now = now,
            jti = jti,
        );
        let mut token = self.header.clone();
        URL_SAFE_NO_PAD.encode_string(claims.as_bytes(), &mut token);
        let signature = self.key.sign(&self.rng, token.as_bytes()).unwrap();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        token
    }
}

async fn answer(
    signer: Arc<Signer>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the form as a server must, though nothing in it is used.
    let _ = request.into_body().collect().await;
    let body = format!(
        r#"{{"access_token":"{}","token_type":"Bearer","expires_in":300}}"#,
        signer.token()
    );
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let signer = Arc::new(Signer::new());
    let raw = raw_sign::rate(args.raw_seconds);
    println!("raw ring ES256 signatures: {raw:.0}/s");
    let listener = tokio::net::TcpListener::bind(args.listen).await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let signer = signer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(signer.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
