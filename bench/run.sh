#!/usr/bin/env bash
# Benchmarks over HTTP, with the server and the load generator pinned to different cores
# (taskset), as docs/design.md asks. Prints one line per measurement. Needs two cores.
#   bench/run.sh code-flow [--seconds N] [--concurrency N]   authorize + token + userinfo
#   bench/run.sh agent [--seconds N] [--concurrency N]       the agent grant over HTTP
#     (TAILPASS_BENCH_STORE=postgres://… TAILPASS_BENCH_REPLICAS=2 for replicas on PostgreSQL)
#   bench/run.sh floor [--seconds N] [--concurrency N]       GET /healthz: what any request costs
#   bench/run.sh agent-inproc [--seconds N]                  the agent grant in-process, beside
#                                                            raw ring ES256 signing, one core
#   bench/run.sh ceiling [--seconds N] [--concurrency N]     the agent load against a bare server
#                                                            that only signs (benches/ceiling.rs):
#                                                            the HTTP/1.1 ceiling, beside raw ring
#   bench/run.sh gateway [--seconds N] [--requests N]        verification vs raw ring verify,
#                                                            latency added, revoke-to-refusal
#   bench/run.sh peer [--seconds N] [--concurrency N] [--rounds N]
#                                                            client_credentials against tailpass
#                                                            and panva's oidc-provider, alternating
# Every server listens on a free port picked at start; secrets reach the load generator as
# --client-secret=VALUE (a secret may begin with `-`). CARGO_TARGET_DIR is honoured;
# TAILPASS_BENCH_BIN=PATH serves with that tailpass binary, unbuilt (to compare two builds back
# to back), the load generator as last built.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-code-flow}; shift || true
release=${CARGO_TARGET_DIR:-target}/release

if [ "$scenario" = gateway ]; then
  cargo build --release --bench gateway >&2
  exec "$(ls -t "$release"/deps/gateway-* | grep -v '\.d$' | head -n1)" "$@"
fi
if [ "$scenario" = ceiling ]; then
  cargo build --release --bench ceiling --bench load >&2
  ceiling=$(ls -t "$release"/deps/ceiling-* | grep -v '\.d$' | head -n1)
  load=$(ls -t "$release"/deps/load-* | grep -v '\.d$' | head -n1)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  out=$(mktemp)
  taskset -c 0 "$ceiling" --listen "127.0.0.1:$port" >"$out" &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$out"' EXIT
  for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.1; done
  grep 'raw ring' "$out"
  taskset -c 1 "$load" agent --issuer "http://127.0.0.1:$port" \
    --audience https://gateway.tail1234.ts.net "$@" | sed 's/^agent tokens over HTTP/bare signing server over HTTP/'
  exit 0
fi
if [ "$scenario" = agent-inproc ]; then
  cargo build --release --bench agent >&2
  exec taskset -c 0 "$(ls -t "$release"/deps/agent-* | grep -v '\.d$' | head -n1)" "$@"
fi

if [ -n "${TAILPASS_BENCH_BIN:-}" ]; then
  bin=$TAILPASS_BENCH_BIN
else
  cargo build --release --bin tailpass --bench load >&2
  bin=$release/tailpass
fi
load=$(ls -t "$release"/deps/load-* | grep -v '\.d$' | head -n1)

# A TCP port nothing listens on at ADDR now (the kernel's pick).
free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"
}

work=$(mktemp -d)
servers=()
trap 'for s in "${servers[@]}"; do kill "$s" 2>/dev/null || true; wait "$s" 2>/dev/null || true; done; rm -rf "$work"' EXIT
cat > "$work/peers.json" <<JSON
{"127.0.0.2": $(cat tests/fixtures/whois-user.json), "127.0.0.3": $(cat tests/fixtures/whois-tagged.json)}
JSON
cp bench/policy.toml "$work/policy.toml"
# TAILPASS_BENCH_STORE=postgres://… runs the server(s) on that database (keys sealed under a
# throwaway key-encryption key); TAILPASS_BENCH_REPLICAS=N runs N replicas of one issuer on
# 127.0.1.1…N, all pinned to core 0, and the load generator spreads requests over them.
store=${TAILPASS_BENCH_STORE:-}
replicas=${TAILPASS_BENCH_REPLICAS:-1}
global=()
if [ -n "$store" ]; then
  global+=(--store "$store")
  "$bin" keys new-kek > "$work/kek" && chmod 0600 "$work/kek"
  global+=(--key-encryption-key-file "$work/kek")
fi
if [ "$replicas" -gt 1 ]; then
  port=$(free_port 127.0.1.1)
  issuer="http://idp.bench:$port"
else
  port=$(free_port 127.0.0.1)
  issuer="http://127.0.0.1:$port"
fi
# `peer` serves its confidential client from a [[client]] table: a fresh random secret, of
# which the file holds only the SHA-256.
serve_extra=()
if [ "$scenario" = peer ]; then
  [ "$replicas" -eq 1 ] || { echo "peer runs one tailpass replica" >&2; exit 2; }
  cc_id=bench-cc
  cc_resource=https://api.bench.example
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$work/cc-secret"
  chmod 0600 "$work/cc-secret"
  cat > "$work/tailpass.toml" <<TOML
[[client]]
client_id = "$cc_id"
client_name = "bench client_credentials"
secret_sha256 = "$(tr -d '\n' < "$work/cc-secret" | sha256sum | cut -d' ' -f1)"
token_endpoint_auth_method = "client_secret_basic"
grant_types = ["client_credentials"]
resources = ["$cc_resource"]
TOML
  serve_extra+=(--config "$work/tailpass.toml")
fi
targets=()
for i in $(seq "$replicas"); do
  if [ "$replicas" -gt 1 ]; then addr="127.0.1.$i:$port"; else addr="127.0.0.1:$port"; fi
  targets+=(--replica "$addr")
  taskset -c 0 "$bin" --state-dir "$work/state$i" --keys-dir "$work/keys" "${global[@]}" \
    "${serve_extra[@]}" serve --issuer "$issuer" --listen "$addr" --identity local --identity-file "$work/peers.json" \
    --policy "$work/policy.toml" --rate-limit 1000000000 \
    >"$work/server$i.out" 2>"$work/server$i.log" &
  servers+=($!)
  for _ in $(seq 100); do curl -sf "http://$addr/healthz" -H "Host: ${issuer#http://}" >/dev/null 2>&1 && break; sleep 0.1; done
done
[ "$replicas" -gt 1 ] || targets=()

# The Node.js that runs bench/peer: this machine's if it is 20 or newer (oidc-provider needs
# globalThis.crypto, which Node 18 lacks), else npm's node@20 package installed beside it.
peer_node() {
  local dir=bench/peer
  if ! command -v npm >/dev/null; then
    local sudo_=""
    [ "$(id -u)" = 0 ] || sudo_=sudo
    { $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get -y -qq install nodejs npm; } >&2
  fi
  [ -d "$dir/node_modules/oidc-provider" ] || (cd "$dir" && npm ci --no-audit --no-fund) >&2
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -ge 20 ]; then
    command -v node
    return
  fi
  [ -x "$dir/node_modules/.bin/node" ] ||
    (cd "$dir" && npm install --no-save --no-audit --no-fund node@20) >&2
  echo "$dir/node_modules/.bin/node"
}

# One token from TOKEN_URL with the bench client's secret (read from its file, never argv);
# prints its header's alg and typ, and fails unless a token came back.
token_header() {
  python3 - "$1" "$cc_id" "$work/cc-secret" "$cc_resource" <<'PY'
import base64, json, sys, urllib.parse, urllib.request
url, client, secret_file, resource = sys.argv[1:5]
secret = open(secret_file).read().strip()
basic = base64.b64encode(f"{client}:{secret}".encode()).decode()
body = urllib.parse.urlencode({"grant_type": "client_credentials", "resource": resource}).encode()
req = urllib.request.Request(url, data=body, headers={"Authorization": f"Basic {basic}"})
token = json.load(urllib.request.urlopen(req, timeout=10))["access_token"]
head = token.split(".")[0]
header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
print(header.get("alg"), header.get("typ"))
PY
}

# `peer`: the same client_credentials load against tailpass and oidc-provider, alternating
# for --rounds rounds, each server on core 0 and the load on core 1; per round each one's
# rate, p50, p99 and RSS, then the medians and the ratios.
peer_main() {
  local seconds=10 concurrency=32 rounds=3
  while [ $# -gt 0 ]; do
    case "$1" in
      --seconds=*) seconds=${1#*=} ;;
      --seconds) seconds=$2; shift ;;
      --concurrency=*) concurrency=${1#*=} ;;
      --concurrency) concurrency=$2; shift ;;
      --rounds=*) rounds=${1#*=} ;;
      --rounds) rounds=$2; shift ;;
      *) echo "peer: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
  done
  local node peer_port peer_pid peer_url tailpass_url
  node=$(peer_node)
  peer_port=$(free_port 127.0.0.1)
  peer_url="http://127.0.0.1:$peer_port"
  NODE_ENV=production taskset -c 0 "$node" bench/peer/provider.mjs --port="$peer_port" \
    --client-id="$cc_id" --client-secret-file="$work/cc-secret" --resource="$cc_resource" \
    >"$work/peer.out" 2>"$work/peer.log" &
  peer_pid=$!
  servers+=("$peer_pid")
  for _ in $(seq 100); do
    curl -sf "$peer_url/.well-known/openid-configuration" >/dev/null 2>&1 && break
    sleep 0.1
  done
  tailpass_url=$issuer/token
  local alg
  for target in "tailpass $tailpass_url" "peer $peer_url/token"; do
    set -- $target
    alg=$(token_header "$2") || { echo "peer: $1 gave no token" >&2; cat "$work/peer.log" >&2; exit 1; }
    echo "$1: access token header alg/typ $alg"
    [ "${alg%% *}" = ES256 ] || { echo "peer: $1 does not sign ES256" >&2; exit 1; }
  done
  echo "tailpass $("$bin" --version 2>/dev/null || echo '?') | oidc-provider" \
    "$("$node" -p 'require("./bench/peer/node_modules/oidc-provider/package.json").version')" \
    "on node $("$node" --version) | $concurrency workers, ${seconds}s per run, $rounds rounds"
  local secret line rss results=$work/peer-results
  secret=$(cat "$work/cc-secret")
  : >"$results"
  for round in $(seq "$rounds"); do
    for target in "tailpass ${servers[0]} $tailpass_url" "peer $peer_pid $peer_url/token"; do
      set -- $target
      line=$(taskset -c 1 "$load" client-credentials --token-url "$3" --client-id "$cc_id" \
        --client-secret="$secret" --resource "$cc_resource" --seconds "$seconds" \
        --concurrency "$concurrency")
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$2/status")
      echo "$round $1 $rss $line" >>"$results"
      python3 - "$round" "$1" "$rss" "$line" <<'PY'
import re, sys
rnd, name, rss, line = sys.argv[1:5]
m = re.search(r"([\d.]+)/s .*?(\d+) errors.*p50 ([\d.]+).*p99 ([\d.]+)", line)
rate, errors, p50, p99 = m.groups()
if float(rate) == 0:
    sys.exit(f"peer: {name} answered no token in round {rnd}")
print(f"round {rnd}  {name:<8} {float(rate):>8.0f}/s  p50 {p50} ms  p99 {p99} ms  "
      f"rss {int(rss) / 1024:.1f} MiB" + (f"  ({errors} errors)" if errors != "0" else ""))
PY
    done
  done
  python3 - "$results" <<'PY'
import re, statistics, sys
runs = {}
for row in open(sys.argv[1]):
    _, name, rss, line = row.split(" ", 3)
    m = re.search(r"([\d.]+)/s .*p50 ([\d.]+).*p99 ([\d.]+)", line)
    rate, p50, p99 = map(float, m.groups())
    runs.setdefault(name, []).append((rate, p50, p99, int(rss) / 1024))
med = {n: [statistics.median(col) for col in zip(*r)] for n, r in runs.items()}
for name, (rate, p50, p99, rss) in med.items():
    print(f"median   {name:<8} {rate:>8.0f}/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  rss {rss:.1f} MiB")
t, p = med["tailpass"], med["peer"]
print(f"rate tailpass/peer = {t[0] / p[0]:.1f}×")
print(f"p99 peer/tailpass = {p[2] / t[2]:.1f}×")
PY
}

case "$scenario" in
  code-flow)
    redirect=http://127.0.0.1:9/cb
    created=$("$bin" --state-dir "$work/state1" --keys-dir "$work/keys" "${global[@]}" clients add --name bench \
      --redirect-uri "$redirect" --id-token-alg ES256)
    id=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])')
    secret=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
    taskset -c 1 "$load" code-flow --issuer "$issuer" --client-id "$id" --client-secret="$secret" \
      --redirect-uri "$redirect" "$@"
    ;;
  agent)
    taskset -c 1 "$load" agent --issuer "$issuer" --audience https://gateway.tail1234.ts.net \
      "${targets[@]}" "$@"
    ;;
  floor)
    taskset -c 1 "$load" floor --issuer "$issuer" "$@"
    ;;
  peer)
    peer_main "$@"
    ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
