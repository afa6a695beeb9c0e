//! The `tailpass` binary as a user runs it: `serve --dev` in a fresh directory, the CLI against
//! a running server, and what ends up on disk and in the logs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::support::{json, peer};

const BIN: &str = env!("CARGO_BIN_EXE_tailpass");
/// Generous: a first start generates RSA keys in a debug build.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct Served {
    child: Child,
    pub(crate) issuer: String,
    stdout: Vec<String>,
    log: PathBuf,
}

/// Starts `tailpass serve --dev` in `cwd` on an ephemeral port and waits for its banner.
async fn serve_dev(cwd: &Path, log_name: &str) -> Served {
    serve_dev_with(cwd, log_name, &[]).await
}

/// [`serve_dev`] with extra `serve` flags.
pub(crate) async fn serve_dev_with(cwd: &Path, log_name: &str, extra: &[&str]) -> Served {
    let log = cwd.join(log_name);
    let mut child = Command::new(BIN)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .args(extra)
        .current_dir(cwd)
        .env("TAILPASS_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = Vec::new();
    let banner = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.trim_start().starts_with("curl");
            stdout.push(line);
            if done {
                return;
            }
        }
        panic!("tailpass exited before printing its endpoints: {stdout:?}");
    };
    tokio::time::timeout(START_TIMEOUT, banner)
        .await
        .expect("tailpass did not start in time");
    let issuer = stdout
        .iter()
        .find_map(|l| l.trim().strip_prefix("issuer").map(|s| s.trim().to_owned()))
        .unwrap();
    Served {
        child,
        issuer,
        stdout,
        log,
    }
}

impl Served {
    /// SIGTERM, then the exit status.
    pub(crate) async fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(START_TIMEOUT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        (
            status.success(),
            std::fs::read_to_string(&self.log).unwrap(),
        )
    }
}

pub(crate) async fn cli(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--dev")
        .args(args)
        .current_dir(cwd)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `tailpass policy explain --json` with `args` and returns its exit code and answer.
async fn explain(cwd: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["policy", "explain", "--json"];
    all.extend_from_slice(args);
    let (code, out) = cli_status(cwd, &all).await;
    (code, serde_json::from_str(&out).unwrap_or_default())
}

/// Runs the CLI in `cwd` (with `--dev`) and returns its exit code and standard output.
async fn cli_status(cwd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("--dev")
        .args(args)
        .current_dir(cwd)
        .output()
        .await
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[tokio::test]
async fn policy_explain_names_the_deciding_rule_live_and_offline() {
    let cwd = tempfile::tempdir().unwrap();
    let policy = cwd.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nscopes = [\"llm\"]\n\
         max_lifetime = 600\nclaims = { models = [\"small\"] }\n\
         [[rule]]\nsrc = [\"*\"]\naudiences = [\"*\"]\nscopes = [\"*\"]\n",
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    let served = serve_dev_with(cwd.path(), "server.log", &["--policy", policy]).await;
    // Live: the server resolves 127.0.0.1 through its own identity source (the dev user).
    let (code, live) = explain(
        cwd.path(),
        &["--as", "127.0.0.1", "--audience", "https://gw"],
    )
    .await;
    assert_eq!(
        (code, live["decision"].as_str()),
        (Some(0), Some("allowed")),
        "{live}"
    );
    assert_eq!(
        live["rule"], "policy rule 2",
        "the dev user is no tag:ci node: {live}"
    );
    let (code, refused) = explain(
        cwd.path(),
        &[
            "--as",
            "tag:ci",
            "--audience",
            "https://gw",
            "--scope",
            "admin",
        ],
    )
    .await;
    assert_eq!(
        (code, refused["decision"].as_str()),
        (Some(1), Some("refused"))
    );
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("policy rule 1"),
        "no fall-through to the catch-all: {refused}"
    );
    drop(served);
    // Offline, from the file alone.
    let (code, offline) = explain(
        cwd.path(),
        &[
            "--policy",
            policy,
            "--as",
            "tag:ci",
            "--audience",
            "https://gw",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{offline}");
    assert_eq!(
        (
            &offline["rule"],
            &offline["lifetime"],
            &offline["claims"]["models"]
        ),
        (
            &serde_json::json!("policy rule 1"),
            &serde_json::json!(600),
            &serde_json::json!(["small"])
        )
    );
    let (code, _) = cli_status(
        cwd.path(),
        &[
            "policy",
            "explain",
            "--policy",
            policy,
            "--as",
            "10.1.2.3",
            "--audience",
            "https://gw",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "an address needs the running server");

    let (code, out) = cli_status(cwd.path(), &["policy", "check", policy]).await;
    assert_eq!(code, Some(0), "{out}");
    let tie = cwd.path().join("tie.toml");
    std::fs::write(
        &tie,
        "[[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\n\
         [[rule]]\nsrc = [\"tag:ci\"]\naudiences = [\"https://gw\"]\nmax_lifetime = 5\n",
    )
    .unwrap();
    let (code, out) = cli_status(cwd.path(), &["policy", "check", tie.to_str().unwrap()]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("rules 1 and 2 tie"), "{out}");
    std::fs::write(
        &tie,
        "[[rule]]\nsrc = [\"tag:ci\"]\naudience = [\"https://gw\"]\n",
    )
    .unwrap();
    let (code, _) = cli_status(cwd.path(), &["policy", "check", tie.to_str().unwrap()]).await;
    assert_eq!(code, Some(2), "unknown key");
}

#[tokio::test]
async fn dev_mode_starts_prints_endpoints_and_keeps_its_keys() {
    let cwd = tempfile::tempdir().unwrap();
    let served = serve_dev(cwd.path(), "first.log").await;
    let text = served.stdout.join("\n");
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json",
        "/register",
    ] {
        assert!(
            text.contains(&format!("{}{path}", served.issuer)),
            "banner names {path}: {text}"
        );
    }
    let client = peer(1);
    let (status, discovery) = json(
        client
            .get(format!(
                "{}/.well-known/openid-configuration",
                served.issuer
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, discovery["issuer"].as_str()),
        (200, Some(served.issuer.as_str()))
    );
    let first_keys = client
        .get(format!("{}/.well-known/jwks.json", served.issuer))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (clean_exit, _) = served.terminate().await;
    assert!(clean_exit, "SIGTERM is a clean shutdown");
    assert!(cwd.path().join(".tailpass/tailpass.db").exists());
    assert!(
        !cwd.path().join(".tailpass/admin.sock").exists(),
        "the socket is removed on shutdown"
    );
    assert!(cwd.path().join("keys/manifest.json").exists());

    let served = serve_dev(cwd.path(), "second.log").await;
    let second_keys = client
        .get(format!("{}/.well-known/jwks.json", served.issuer))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(first_keys, second_keys, "a second start reuses the keys");
    served.terminate().await;
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn clients_add_goes_through_the_running_server_and_no_secret_is_kept_in_clear() {
    let cwd = tempfile::tempdir().unwrap();
    let served = serve_dev(cwd.path(), "server.log").await;
    let issuer = served.issuer.clone();

    // The CLI prints the secret once, as JSON.
    let (ok, stdout, stderr) = cli(
        cwd.path(),
        &[
            "clients",
            "add",
            "--name",
            "Grafana",
            "--redirect-uri",
            "https://grafana.example/cb",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let client_id = printed["client_id"].as_str().unwrap().to_owned();
    let cli_secret = printed["client_secret"].as_str().unwrap().to_owned();

    // The running server knows it at once.
    let (status, clients) = json(
        peer(1)
            .get(format!("{issuer}/admin/api/clients"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        clients
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == client_id.as_str())
    );

    // A dynamic registration: a second secret and a registration access token.
    let (status, registered) = json(
        peer(1)
            .post(format!("{issuer}/register"))
            .json(&serde_json::json!({"redirect_uris": ["https://wiki.example/cb"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let dcr_secret = registered["client_secret"].as_str().unwrap().to_owned();
    let registration_token = registered["registration_access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let (listed_ok, listed, _) = cli(cwd.path(), &["clients", "list"]).await;
    assert!(listed_ok && listed.contains(&client_id));
    assert!(!listed.contains(&cli_secret));

    let (_, log) = served.terminate().await;
    assert!(
        log.contains("path=/admin/api/clients") && log.contains("method=POST"),
        "the server itself handled clients add"
    );
    let mut state_bytes = Vec::new();
    for entry in std::fs::read_dir(cwd.path().join(".tailpass")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            state_bytes.extend(std::fs::read(path).unwrap());
        }
    }
    for secret in [&cli_secret, &dcr_secret, &registration_token] {
        assert!(!log.contains(secret.as_str()), "a secret reached the log");
        assert!(
            !contains(&state_bytes, secret),
            "a secret is stored in clear"
        );
    }
    // What is stored is the hash: proof that the bytes searched are the right ones.
    let hash = tailpass::secret::SecretHash::of(&cli_secret).to_hex();
    assert!(contains(&state_bytes, &hash));
}

#[tokio::test]
async fn with_no_server_running_the_cli_opens_the_state_itself() {
    let cwd = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = cli(
        cwd.path(),
        &[
            "clients",
            "add",
            "--name",
            "cli",
            "--public",
            "--redirect-uri",
            "http://127.0.0.1:7000/cb",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        printed["client_secret"].is_null(),
        "public clients have no secret"
    );
    let (ok, listed, _) = cli(cwd.path(), &["clients", "list", "--json"]).await;
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["client_id"], printed["client_id"]);
    assert_eq!(listed[0]["public"], true);
    let (ok, keys, _) = cli(cwd.path(), &["keys", "list", "--json"]).await;
    assert!(ok);
    let keys: serde_json::Value = serde_json::from_str(&keys).unwrap();
    assert_eq!(
        keys.as_array().unwrap().len(),
        4,
        "ES256 and RS256, active and next"
    );
    let (ok, _, stderr) = cli(cwd.path(), &["clients", "rm", "no-such-client"]).await;
    assert!(!ok && stderr.contains("no such client"), "{stderr}");
}

#[tokio::test]
async fn the_cli_mints_revokes_and_audits_a_run() {
    let cwd = tempfile::tempdir().unwrap();
    let served = serve_dev(cwd.path(), "server.log").await;
    let curl_line = served
        .stdout
        .iter()
        .find(|l| l.contains("curl"))
        .unwrap()
        .clone();
    assert!(
        curl_line.contains("grant_type=client_credentials"),
        "the banner shows the agent grant: {curl_line}"
    );

    let key = cwd.path().join("agent-dpop.pem");
    let out = Command::new(BIN)
        .args([
            "token",
            "--issuer",
            &served.issuer,
            "--audience",
            "https://api.example",
            "--run-label",
            "cli test",
            "--json",
            "--dpop-key",
        ])
        .arg(&key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["token_type"], "DPoP");
    let claims = crate::authorize::claims(response["access_token"].as_str().unwrap());
    assert_eq!(claims["run_label"], "cli test");
    assert!(claims["cnf"]["jkt"].is_string());
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "the DPoP key is private"
        );
    }
    let run = claims["run_id"].as_str().unwrap().to_owned();

    // Plain output is the token alone, for TOKEN=$(tailpass token ...).
    let plain = Command::new(BIN)
        .args([
            "token",
            "--issuer",
            &served.issuer,
            "--audience",
            "https://api.example",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(plain.stdout).unwrap();
    assert_eq!(text.trim().split('.').count(), 3, "{text}");

    // `tailpass verify -` checks it as a resource server would: claims out, or the reason.
    let verify = |token: String| {
        let issuer = served.issuer.clone();
        async move {
            let mut child = Command::new(BIN)
                .args(["verify", "-", "--issuer", &issuer])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stdin, token.as_bytes())
                .await
                .unwrap();
            drop(stdin);
            child.wait_with_output().await.unwrap()
        }
    };
    let out = verify(text.clone()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plain_run = verified["run_id"].as_str().unwrap().to_owned();
    assert_eq!(verified["aud"], "https://api.example");
    let mut tampered = text.trim().to_owned();
    tampered.push('A');
    let out = verify(tampered).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _, stderr) = cli(cwd.path(), &["revoke", "--run", &plain_run]).await;
    assert!(ok, "{stderr}");
    let out = verify(text.clone()).await;
    let reason = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && reason.contains("revoked"),
        "{reason}"
    );

    let (ok, stdout, stderr) = cli(cwd.path(), &["revoke", "--run", &run]).await;
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["revocation"]["value"], run.as_str());

    let (ok, stdout, stderr) = cli(cwd.path(), &["audit", "--run", &run, "--json"]).await;
    assert!(ok, "{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["agent_token", "revocation"]);
    let (_, human, _) = cli(cwd.path(), &["audit", "--run", &run]).await;
    assert!(
        human.contains("agent_token") && human.contains("label=cli test"),
        "{human}"
    );
    served.terminate().await;
}

/// `tailpass token --helper`, as Claude Code's `apiKeyHelper` or an SDK's key callback runs
/// it before each request: the token alone on standard output, the same one while it has long
/// enough to live, kept private in the runtime directory; a new one once the cached token is in
/// its expiry window (a 60 s token is in it from the start: at least a minute must be left);
/// no cache without `XDG_RUNTIME_DIR`; errors on standard error only.
#[tokio::test]
async fn the_token_helper_reuses_its_token_until_its_expiry_window() {
    use std::os::unix::fs::PermissionsExt as _;

    let cwd = tempfile::tempdir().unwrap();
    let served = serve_dev(cwd.path(), "server.log").await;
    let runtime = tempfile::tempdir().unwrap();
    let helper = |runtime: Option<&Path>, extra: &[&str]| {
        let mut command = Command::new(BIN);
        command.args([
            "token",
            "--helper",
            "--issuer",
            &served.issuer,
            "--audience",
            "https://api.example",
        ]);
        command.args(extra);
        match runtime {
            Some(dir) => command.env("XDG_RUNTIME_DIR", dir),
            None => command.env_remove("XDG_RUNTIME_DIR"),
        };
        async move {
            let out = command.output().await.unwrap();
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert!(out.status.success(), "{stderr}");
            assert_eq!(stderr, "", "nothing but the token is said");
            let stdout = String::from_utf8(out.stdout).unwrap();
            let token = stdout.strip_suffix('\n').unwrap().to_owned();
            assert!(!token.contains(char::is_whitespace), "{stdout:?}");
            assert_eq!(token.split('.').count(), 3, "{stdout:?}");
            token
        }
    };

    let first = helper(Some(runtime.path()), &[]).await;
    assert_eq!(helper(Some(runtime.path()), &[]).await, first, "reused");
    let dir = runtime.path().join("tailpass");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);
    let name = files[0].file_name().unwrap().to_str().unwrap();
    assert!(!name.contains("api.example"), "the name is a hash: {name}");
    // Another request is another token.
    let scoped = helper(Some(runtime.path()), &["--run-label", "other"]).await;
    assert_ne!(scoped, first);
    assert_eq!(helper(Some(runtime.path()), &[]).await, first);

    // A 60 s token is in its expiry window at once: each call mints anew.
    let short = helper(Some(runtime.path()), &["--expires-in", "60"]).await;
    let claims = crate::authorize::claims(&short);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
    let again = helper(Some(runtime.path()), &["--expires-in", "60"]).await;
    assert_ne!(again, short, "a token about to expire is not handed out");
    assert_ne!(crate::authorize::claims(&again)["run_id"], claims["run_id"]);

    // A DPoP-bound token is useless without its key: never cached.
    let key = cwd.path().join("helper-dpop.pem");
    let key = key.to_str().unwrap();
    let bound = helper(Some(runtime.path()), &["--dpop-key", key]).await;
    assert!(crate::authorize::claims(&bound)["cnf"]["jkt"].is_string());
    assert_ne!(
        helper(Some(runtime.path()), &["--dpop-key", key]).await,
        bound
    );
    let cached = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        cached, 3,
        "the plain, labelled and 60 s requests' files only"
    );

    // Without a runtime directory nothing is kept: every call mints.
    let bare = helper(None, &[]).await;
    assert_ne!(bare, first);
    assert_ne!(helper(None, &[]).await, bare);

    // Errors go to standard error, with a failing status and nothing on standard output.
    let out = Command::new(BIN)
        .args(["token", "--helper", "--issuer", "http://127.0.0.1:9"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(!out.stderr.is_empty());
    let out = Command::new(BIN)
        .args(["token", "--helper", "--json", "--issuer", &served.issuer])
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "--helper prints the token alone, never JSON"
    );
    served.terminate().await;
}

/// The admin UI in headless Chromium (tests/browser/admin.mjs, playwright-core). `.ci/run`
/// installs Chromium and playwright-core and sets TAILPASS_REQUIRE_BROWSER, so CI never skips
/// it; elsewhere it is skipped, saying so, when they are missing.
#[tokio::test]
async fn the_admin_ui_works_in_a_real_browser() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let ready = Path::new("/usr/bin/chromium").exists()
        && browser_dir.join("node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var_os("TAILPASS_REQUIRE_BROWSER").is_none(),
            "chromium or playwright-core missing, and the browser test is required"
        );
        eprintln!("skipped: needs /usr/bin/chromium and `npm install` in tests/browser");
        return;
    }
    let cwd = tempfile::tempdir().unwrap();
    let served = serve_dev(cwd.path(), "server.log").await;
    let run = Command::new("node")
        .arg(browser_dir.join("admin.mjs"))
        .arg(&served.issuer)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the browser test finished within 3 minutes")
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
    served.terminate().await;
}
