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
        "deploy/compose.replicas.yaml",
        "deploy/kubernetes/tailpass.yaml",
        "deploy/kubernetes/tailpass-replicas.yaml",
    ] {
        let text = read(file);
        for (i, _) in text.match_indices("TAILPASS_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            // A variable whose values are hidden (a URL with a password) shows no `=`.
            assert!(
                help.contains(&format!("env: {name}=")) || help.contains(&format!("env: {name}]")),
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
    for file in [
        "deploy/compose.yaml",
        "deploy/compose.replicas.yaml",
        "deploy/kubernetes/tailpass.yaml",
        "deploy/kubernetes/tailpass-replicas.yaml",
    ] {
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

/// Every YAML document of a deploy file.
fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .collect()
}

/// The port of an `ADDR:PORT` value.
fn port_of(listen: &str) -> &str {
    listen.rsplit_once(':').map(|(_, port)| port).unwrap()
}

/// A container's `env` as a map of the plain values, and the names taken from secrets.
fn container_env(
    container: &serde_yaml::Value,
) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
    let mut plain = std::collections::BTreeMap::new();
    let mut secret = Vec::new();
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        match var["value"].as_str() {
            Some(value) => {
                plain.insert(name, value.to_owned());
            }
            None => {
                assert!(var["valueFrom"]["secretKeyRef"].is_mapping(), "{name}");
                secret.push(name);
            }
        }
    }
    (plain, secret)
}

#[test]
fn the_kubernetes_replicas_share_a_store_a_key_encryption_key_and_one_service_name() {
    let docs = yaml_documents("deploy/kubernetes/tailpass-replicas.yaml");
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap();
    let deployment = kind("Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 3);
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let budget = kind("PodDisruptionBudget");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    assert!(budget["spec"]["minAvailable"].as_u64().unwrap() >= 2);

    let containers = pod["containers"].as_sequence().unwrap();
    let tailpass = containers.iter().find(|c| c["name"] == "tailpass").unwrap();
    let (env, from_secrets) = container_env(tailpass);
    assert!(
        from_secrets.contains(&"TAILPASS_STORE".to_owned()),
        "the store URL holds a password"
    );
    // Probes reach the health listener, by the port it listens on.
    let health = port_of(&env["TAILPASS_HEALTH_LISTEN"]);
    let health_port = tailpass["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == tailpass["readinessProbe"]["httpGet"]["port"])
        .unwrap();
    assert_eq!(
        health_port["containerPort"].as_u64().unwrap().to_string(),
        health
    );
    assert_eq!(tailpass["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(tailpass["livenessProbe"]["httpGet"]["path"], "/healthz");
    // The key-encryption key comes from a Secret volume, not readable by others.
    let kek = &env["TAILPASS_KEY_ENCRYPTION_KEY_FILE"];
    let mount = tailpass["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| kek.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap();
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["secret"]["secretName"].is_string());
    assert_eq!(volume["secret"]["defaultMode"].as_u64(), Some(0o440));
    // Each pod's own tailscaled hosts the one Service, proxying to this replica's proxy
    // listener on loopback.
    let sidecar = pod["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tailscale")
        .unwrap();
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    let script = sidecar["args"][0].as_str().unwrap();
    assert!(script.contains("--service=svc:idp"), "{script}");
    let proxy = &env["TAILPASS_PROXY_LISTEN"];
    assert!(proxy.starts_with("127.0.0.1:"));
    assert!(script.contains(&format!("http://{proxy}")), "{script}");
    assert_eq!(env["TAILPASS_IDENTITY"], "tailscaled");
}

#[test]
fn the_compose_replicas_share_one_database_and_each_serves_the_service_through_its_own_node() {
    let compose = yaml_documents("deploy/compose.replicas.yaml").remove(0);
    let services = compose["services"].as_mapping().unwrap();
    let replicas: Vec<&str> = services
        .keys()
        .filter_map(|k| k.as_str())
        .filter(|k| k.starts_with("tailpass-"))
        .collect();
    assert!(replicas.len() >= 2, "{replicas:?}");
    let mut stores = std::collections::BTreeSet::new();
    for name in replicas {
        let replica = &services[name];
        let env = &replica["environment"];
        let store = env["TAILPASS_STORE"].as_str().unwrap();
        assert!(store.starts_with("postgres://"), "{name}: {store}");
        stores.insert(store.to_owned());
        assert!(env["TAILPASS_KEY_ENCRYPTION_KEY_FILE"].is_string());
        // The replica shares its node's network namespace, and that node's serve step
        // proxies the Service to this replica's proxy listener.
        let node = replica["network_mode"].as_str().unwrap();
        let serve = services
            .values()
            .find(|s| {
                s["network_mode"] == node
                    && s["command"][0]
                        .as_str()
                        .is_some_and(|c| c.contains("serve"))
            })
            .unwrap_or_else(|| panic!("nothing serves {name}'s node"));
        let command = serve["command"][0].as_str().unwrap();
        assert!(command.contains("--service=svc:idp"), "{command}");
        let proxy = env["TAILPASS_PROXY_LISTEN"].as_str().unwrap();
        assert!(command.contains(&format!("http://{proxy}")), "{command}");
    }
    assert_eq!(stores.len(), 1, "one database for every replica");
    assert!(services.contains_key("postgres"));
}
