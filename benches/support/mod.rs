//! What the benchmarks share: the settings of a server for bench traffic.

use std::path::Path;

use clap::Parser as _;
use tailpass::cli::{Cli, Command};
use tailpass::config::Settings;

/// `serve` settings in `dir`: the identity table `peers`, the agent policy `policy`, ES256
/// only, no rate limit to speak of, listening on `port` (0: any) of 127.0.0.1; `global` adds
/// options (a `--store`, say).
pub fn settings(dir: &Path, peers: &Path, policy: &Path, port: u16, global: &[String]) -> Settings {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let mut argv: Vec<String> = vec!["tailpass".to_owned()];
    argv.extend(global.iter().cloned());
    argv.extend([
        "--state-dir".into(),
        path(&dir.join("state")),
        "--keys-dir".into(),
        path(&dir.join("keys")),
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--issuer".into(),
        format!("http://127.0.0.1:{port}"),
        "--identity".into(),
        "local".into(),
        "--identity-file".into(),
        path(peers),
        "--policy".into(),
        path(policy),
        "--no-rs256".into(),
        "--rate-limit".into(),
        "1000000000".into(),
    ]);
    let cli = Cli::try_parse_from(argv).unwrap();
    let Command::Serve(serve) = cli.command else {
        unreachable!()
    };
    tailpass::config::resolve(&cli.global, &serve).unwrap()
}
