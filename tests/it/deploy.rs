//! The deploy files stay true to the binary: systemd accepts the units, every flag and
//! environment variable they use is one `tailpass` knows, and the container files keep keys
//! and state out of the image.

use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_tailpass");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}

/// The `ExecStart=` command of a unit, continuation lines joined, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_units_commands_parse_as_tailpass_commands() {
    for unit in [
        "deploy/systemd/tailpass.service",
        "deploy/systemd/tailpass-gateway.service",
    ] {
        let mut argv = exec_start(&read(unit));
        assert_eq!(argv[0], "/usr/local/bin/tailpass");
        argv[0] = "tailpass".into();
        for word in &mut argv {
            *word = word.replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/x");
        }
        let parsed = <tailpass::cli::Cli as clap::Parser>::try_parse_from(&argv);
        assert!(parsed.is_ok(), "{unit}: {}", parsed.err().unwrap());
    }
}

#[tokio::test]
async fn systemd_accepts_the_units() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed here; .ci/run installs it");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["tailpass.service", "tailpass-gateway.service"] {
        let text = read(&format!("deploy/systemd/{name}")).replace("/usr/local/bin/tailpass", BIN);
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = tokio::process::Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains(".service:"),
        "systemd-analyze complains: {stderr}"
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[tokio::test]
async fn every_environment_variable_in_the_deploy_files_is_one_tailpass_reads() {
    let help = tokio::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut checked = 0;
    for file in [
        "deploy/Dockerfile",
        "deploy/compose.yaml",
        "deploy/kubernetes/tailpass.yaml",
    ] {
        let text = read(file);
        for (i, _) in text.match_indices("TAILPASS_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            assert!(
                help.contains(&format!("env: {name}=")),
                "{file} sets {name}, which `tailpass serve` does not read"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "the deploy files configure tailpass by environment"
    );
}

#[test]
fn images_run_as_non_root_and_never_carry_keys_or_state() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("USER 65532"));
    assert!(dockerfile.contains("AS build"), "multi-stage");
    let ignore = read(".dockerignore");
    for private in ["keys/*", ".tailpass", "target"] {
        assert!(
            ignore.lines().any(|l| l.trim() == private),
            ".dockerignore lacks {private}"
        );
    }
    let kube = read("deploy/kubernetes/tailpass.yaml");
    for hardening in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "secretKeyRef",
    ] {
        assert!(kube.contains(hardening), "{hardening}");
    }
}

/// The `TAILPASS_*` settings a deploy file gives, in order, as (variable, value).
fn environment_of(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line
            .trim()
            .trim_start_matches("ENV ")
            .trim_end_matches('\\')
            .trim();
        // compose `KEY: value`, Dockerfile `KEY=value`, Kubernetes `- {name: KEY, value: V}`.
        let pair = if let Some(rest) = line.strip_prefix("- {name: ") {
            rest.split_once(", value: ").map(|(k, v)| {
                (
                    k.to_owned(),
                    v.trim_end_matches('}').trim_matches('"').to_owned(),
                )
            })
        } else {
            line.split_once(": ")
                .or_else(|| line.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        };
        if let Some((key, value)) = pair
            && key.starts_with("TAILPASS_")
            && key.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            found.push((key, value));
        }
    }
    found
}

/// Paths inside the images and hosts, mapped to the files they are made from here.
fn local_path(value: &str) -> String {
    match value {
        "/etc/tailpass/policy.toml" => repo("deploy/policy.example.toml").display().to_string(),
        "/etc/tailpass/tailpass.toml" => repo("deploy/tailpass.example.toml").display().to_string(),
        other => other.to_owned(),
    }
}

/// Runs `argv` through `tailpass serve`'s own parsing and validation.
fn validate(what: &str, argv: &[String]) {
    let cli = <tailpass::cli::Cli as clap::Parser>::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let tailpass::cli::Command::Serve(args) = cli.command else {
        panic!("{what}: not a serve command");
    };
    if let Err(e) = tailpass::config::resolve(&cli.global, &args) {
        panic!("{what}: `tailpass serve` refuses these settings: {e}");
    }
}

#[test]
fn every_deploy_configuration_passes_serve_validation_as_shipped() {
    // The image's own environment comes first; compose and Kubernetes add theirs.
    let image = environment_of(&read("deploy/Dockerfile"));
    assert!(!image.is_empty());
    for file in ["deploy/compose.yaml", "deploy/kubernetes/tailpass.yaml"] {
        // Like environment variables, a later value replaces an earlier one.
        let mut env: std::collections::BTreeMap<String, String> = image.iter().cloned().collect();
        let own = environment_of(&read(file));
        assert!(!own.is_empty(), "{file} configures tailpass");
        env.extend(own);
        // Each TAILPASS_<FLAG> is the flag --<flag> (the CLI contract), so the settings go
        // through the same parser as the variables would.
        let mut argv = vec!["tailpass".to_owned(), "serve".to_owned()];
        for (key, value) in env {
            let flag = key["TAILPASS_".len()..]
                .to_ascii_lowercase()
                .replace('_', "-");
            argv.push(format!("--{flag}={}", local_path(&value)));
        }
        validate(file, &argv);
    }
    let unit = "deploy/systemd/tailpass.service";
    let mut argv = exec_start(&read(unit));
    argv[0] = "tailpass".into();
    let argv: Vec<String> = argv.iter().map(|w| local_path(w)).collect();
    validate(unit, &argv);
}
