//! Test harness: a real tailpass server in-process, and HTTP clients that connect from a chosen
//! loopback address, i.e. as a chosen tailnet peer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use clap::Parser as _;
use tailpass::cli::{Cli, Command};
use tailpass::clock::{Clock, ManualClock, SystemClock};
use tailpass::keys::{KeyRing, KeySettings};
use tailpass::server::Running;
use tailpass_verify::{Alg, UnixTime};
use tempfile::TempDir;

/// Alice: a person, with the tsidp grant (admin UI, DCR, extra claims).
pub const ALICE: u8 = 2;
/// A tagged CI runner: no user, no grants.
pub const CI: u8 = 3;
/// Bob: a person without any grant.
pub const BOB: u8 = 4;
/// Carol: a person with two tsidp grants whose claims merge, and a resource grant.
pub const CAROL: u8 = 5;
/// Mallory: a person whose grant tries to override a standard claim.
pub const MALLORY: u8 = 6;
/// A second CI runner (`tag:ci`), another node.
pub const CI2: u8 = 7;
/// A gateway node (`tag:gateway`).
pub const GATEWAY_NODE: u8 = 8;
/// An address that is not on the tailnet.
pub const STRANGER: u8 = 9;

/// The gateway resource Carol's grant allows.
pub const GATEWAY: &str = "https://gateway.tail1234.ts.net";

pub fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// The WhoIs answer of Bob: a user, no capability grants.
pub fn bob_whois() -> serde_json::Value {
    serde_json::json!({
        "Node": {"ID": 1004, "StableID": "nBob4CNTRL", "Name": "bob-desktop.tail1234.ts.net.",
                 "User": 77, "Key": "nodekey:0b", "Addresses": ["100.64.0.4/32"], "Tags": null},
        "UserProfile": {"ID": 77, "LoginName": "bob@example.com", "DisplayName": "Bob", "ProfilePicURL": ""},
        "CapMap": {}
    })
}

/// A tagged node's WhoIs answer.
pub fn tagged_whois(id: u64, stable: &str, tags: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "Node": {"ID": id, "StableID": stable, "Name": format!("{stable}.tail1234.ts.net."),
                 "User": 9000, "Addresses": [format!("100.64.0.{}/32", id % 250)], "Tags": tags},
        "UserProfile": {"ID": 9000, "LoginName": "tagged-devices", "DisplayName": "tagged devices"},
        "CapMap": null
    })
}

fn user_whois(id: u64, login: &str, stable: &str, caps: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "Node": {"ID": id, "StableID": stable, "Name": format!("{stable}.tail1234.ts.net."),
                 "User": id, "Key": "nodekey:0c", "Addresses": [format!("100.64.1.{}/32", id % 250)], "Tags": []},
        "UserProfile": {"ID": id, "LoginName": login, "DisplayName": login, "ProfilePicURL": ""},
        "CapMap": caps
    })
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The identity table of the test tailnet: each peer under its loopback address, and under
/// its node's tailnet addresses too, as tailscaled answers WhoIs for those (a refresh finds
/// the session's node again by its tailnet address).
pub fn peers_table() -> serde_json::Value {
    with_tailnet_addresses(loopback_peers())
}

/// `table` with each entry also under the addresses of its node.
pub fn with_tailnet_addresses(table: serde_json::Value) -> serde_json::Value {
    let mut all = table.as_object().unwrap().clone();
    for whois in table.as_object().unwrap().values() {
        for prefix in whois["Node"]["Addresses"].as_array().into_iter().flatten() {
            let ip = prefix.as_str().unwrap().split('/').next().unwrap();
            all.entry(ip).or_insert_with(|| whois.clone());
        }
    }
    serde_json::Value::Object(all)
}

/// The peers by loopback address.
pub fn loopback_peers() -> serde_json::Value {
    serde_json::json!({
        ip(ALICE).to_string(): fixture("whois-user.json"),
        ip(CI).to_string(): fixture("whois-tagged.json"),
        ip(BOB).to_string(): bob_whois(),
        ip(CAROL).to_string(): user_whois(0x5c, "carol@example.com", "nCarol5CNTRL", serde_json::json!({
            "tailscale.com/cap/tsidp": [
                {"users": ["carol@example.com"], "resources": [GATEWAY],
                 "extraClaims": {"team": "data", "envs": ["dev"], "groups": ["analysts"]}, "includeInUserInfo": true},
                {"users": ["*"], "extraClaims": {"team": "ignored", "envs": ["prod", "dev"], "groups": ["oncall"]}}
            ]
        })),
        ip(CI2).to_string(): tagged_whois(1007, "nCiRunner7CNTRL", &["tag:ci"]),
        ip(GATEWAY_NODE).to_string(): tagged_whois(1008, "nGateway8CNTRL", &["tag:gateway"]),
        ip(MALLORY).to_string(): user_whois(0x6d, "mallory@example.com", "nMallory6CNTRL", serde_json::json!({
            "tailscale.com/cap/tsidp": [{"extraClaims": {"email": "ceo@example.com"}}]
        })),
    })
}

/// Key directories generated once per set of algorithms and copied into each test, so that
/// tests do not each wait for RSA key generation.
pub fn keys_template(algs: &[Alg]) -> PathBuf {
    static TEMPLATES: OnceLock<Mutex<HashMap<Vec<Alg>, TempDir>>> = OnceLock::new();
    let mut algs = algs.to_vec();
    algs.sort();
    let map = TEMPLATES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap();
    map.entry(algs.clone())
        .or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let settings = KeySettings {
                enabled: algs.iter().copied().collect(),
                retire_after: 86_460,
                rotation_interval: None,
            };
            KeyRing::open(dir.path(), settings, Arc::new(SystemClock)).unwrap();
            dir
        })
        .path()
        .to_owned()
}

pub fn copy_dir(from: &Path, to: &Path) {
    tailpass::private_fs::ensure_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Which algorithms a command line enables, to pick the key template.
fn algs_of(args: &[String]) -> Vec<Alg> {
    let signing = args
        .iter()
        .position(|a| a == "--signing-alg")
        .and_then(|i| args.get(i + 1))
        .map(|a| a.parse().unwrap())
        .unwrap_or(Alg::ES256);
    let mut algs = vec![signing];
    if !args.iter().any(|a| a == "--no-rs256") && signing != Alg::RS256 {
        algs.push(Alg::RS256);
    }
    for (i, arg) in args.iter().enumerate() {
        if arg == "--enable-alg" {
            algs.push(args[i + 1].parse().unwrap());
        }
    }
    algs.sort();
    algs.dedup();
    algs
}

pub struct TestServer {
    pub running: Option<Running>,
    pub base: String,
    pub dir: TempDir,
    pub clock: Arc<ManualClock>,
    /// The certificate of an HTTPS server, for clients to trust.
    pub ca_pem: Option<String>,
    /// For a replica reached by the issuer's name: that name, and this replica's address.
    pub resolve: Option<(String, std::net::SocketAddr)>,
}

impl TestServer {
    /// A server on the test tailnet with default settings.
    pub async fn start() -> TestServer {
        TestServer::with_args(&[]).await
    }

    /// A server speaking HTTPS with a throwaway certificate for 127.0.0.1; clients from
    /// [`TestServer::peer`] trust it.
    pub async fn https(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        let table = dir.path().join("peers.json");
        std::fs::write(&table, peers_table().to_string()).unwrap();
        let mut args: Vec<&str> = extra.to_vec();
        let (cert, key) = (
            cert.to_str().unwrap().to_owned(),
            key.to_str().unwrap().to_owned(),
        );
        args.extend(["--tls-cert", &cert, "--tls-key", &key]);
        let mut server =
            TestServer::in_dir(dir, &args, &["--identity-file", table.to_str().unwrap()]).await;
        server.ca_pem = Some(generated.cert.pem());
        server
    }

    /// An HTTP client from peer `n` that trusts this server's certificate.
    pub fn peer(&self, n: u8) -> reqwest::Client {
        self.client_builder().local_address(ip(n)).build().unwrap()
    }

    /// A client builder that trusts this server and does not follow redirects.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some((name, addr)) = &self.resolve {
            builder = builder.resolve(name, *addr);
        }
        if let Some(pem) = &self.ca_pem {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        builder
    }

    /// A server with extra `serve` flags.
    pub async fn with_args(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("peers.json");
        std::fs::write(&table, peers_table().to_string()).unwrap();
        TestServer::in_dir(dir, extra, &["--identity-file", table.to_str().unwrap()]).await
    }

    /// A server in `dir` (state in `dir/state`, keys in `dir/keys`) with an identity source
    /// given by `identity` flags.
    pub async fn in_dir(dir: TempDir, extra: &[&str], identity: &[&str]) -> TestServer {
        let state = dir.path().join("state");
        let keys = dir.path().join("keys");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !keys.exists() {
            copy_dir(&keys_template(&algs_of(&extra)), &keys);
        }
        let mut argv: Vec<String> = vec![
            "tailpass".into(),
            "--dev".into(),
            "--state-dir".into(),
            state.to_str().unwrap().into(),
            "--keys-dir".into(),
            keys.to_str().unwrap().into(),
            "serve".into(),
        ];
        if !extra.iter().any(|a| a == "--listen") {
            argv.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        argv.extend(identity.iter().map(|s| s.to_string()));
        argv.extend(extra);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        let settings = tailpass::config::resolve(&cli.global, &args).unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime::now()));
        let running = tailpass::server::start(settings, clock.clone() as Arc<dyn Clock>)
            .await
            .unwrap();
        let base = running.issuer().to_owned();
        TestServer {
            running: Some(running),
            base,
            dir,
            clock,
            ca_pem: None,
            resolve: None,
        }
    }

    /// Moves the clock past the current minute and has the server write that minute's
    /// aggregate of unidentified denials, as its upkeep does each minute.
    pub async fn end_the_minute(&self) {
        self.clock.advance(60);
        let state = self.state();
        state
            .audit
            .flush_aggregates(Some(state.now()))
            .await
            .unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn state(&self) -> &tailpass::state::AppState {
        self.running().state().unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Stops the server and hands back its directory, for a restart.
    pub async fn stop(mut self) -> TempDir {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.dir
    }
}

/// An HTTP client connecting from 127.0.0.`n`: tailnet peer `n`. It does not follow redirects.
pub fn peer(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip(n))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A JSON body and status.
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}

/// `GET url` from peer `from`, as JSON.
pub async fn get_json(from: u8, url: &str) -> (u16, serde_json::Value) {
    json(peer(from).get(url).send().await.unwrap()).await
}

/// Calls the admin API over the server's admin socket.
pub async fn admin(
    server: &TestServer,
    method: axum::http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let request = tailpass::unix_http::UnixRequest {
        method,
        path,
        host: "tailpass-admin",
        json: body.map(|b| b.to_string().into_bytes()),
        max_answer: 1 << 20,
        timeout: std::time::Duration::from_secs(30),
    };
    let (status, bytes) = tailpass::unix_http::send(server.running().admin_socket(), request)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, value)
}

/// The Python of the official SDKs' venv (`tests/sdk/`), or `None` (and a note on stderr)
/// when it is not built; `TAILPASS_REQUIRE_SDK=1` (set by `.ci/run`) makes its absence a
/// failure, so CI never skips the SDK tests.
pub fn sdk_python() -> Option<std::path::PathBuf> {
    let python = std::env::var_os("TAILPASS_SDK_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/.venv/bin/python")
        });
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var("TAILPASS_REQUIRE_SDK").as_deref() != Ok("1"),
        "TAILPASS_REQUIRE_SDK=1 but {} is missing (see tests/sdk/README.md)",
        python.display()
    );
    eprintln!(
        "skipped: no SDK venv at {} (see tests/sdk/README.md)",
        python.display()
    );
    None
}

/// Runs `tests/sdk/SCRIPT` with the SDKs' Python, `env` set, for at most 120 s: its exit
/// status and its stdout parsed as one JSON document (the script's report), stderr shown on
/// failure.
pub async fn run_sdk_script(
    python: &std::path::Path,
    script: &str,
    env: &[(&str, String)],
) -> (bool, serde_json::Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let mut command = tokio::process::Command::new(python);
    command.arg(&path).kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("{script} ran longer than 120 s"))
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        eprintln!(
            "{script} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (
        output.status.success(),
        serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null),
    )
}
