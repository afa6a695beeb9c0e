#!/usr/bin/env bash
# Benchmarks over HTTP, with the server and the load generator pinned to different cores
# (taskset), as docs/design.md asks. Prints one line per measurement. Needs two cores.
#   bench/run.sh code-flow [--seconds N] [--concurrency N]   authorize + token + userinfo
#   bench/run.sh agent [--seconds N] [--concurrency N]       the agent grant over HTTP
#   bench/run.sh agent-inproc [--seconds N]                  the agent grant in-process, beside
#                                                            raw ring ES256 signing, one core
#   bench/run.sh gateway [--seconds N] [--requests N]        verification vs raw ring verify,
#                                                            latency added, revoke-to-refusal
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-code-flow}; shift || true

if [ "$scenario" = gateway ]; then
  cargo build --release --bench gateway >&2
  exec "$(ls -t target/release/deps/gateway-* | grep -v '\.d$' | head -n1)" "$@"
fi
if [ "$scenario" = agent-inproc ]; then
  cargo build --release --bench agent >&2
  exec taskset -c 0 "$(ls -t target/release/deps/agent-* | grep -v '\.d$' | head -n1)" "$@"
fi

cargo build --release --bin tailpass --bench load >&2
bin=target/release/tailpass
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -n1)

work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/peers.json" <<JSON
{"127.0.0.2": $(cat tests/fixtures/whois-user.json), "127.0.0.3": $(cat tests/fixtures/whois-tagged.json)}
JSON
cp bench/policy.toml "$work/policy.toml"
port=18765
issuer="http://127.0.0.1:$port"
taskset -c 0 "$bin" --state-dir "$work/state" --keys-dir "$work/keys" serve \
  --issuer "$issuer" --listen 127.0.0.1:$port --identity local --identity-file "$work/peers.json" \
  --policy "$work/policy.toml" --rate-limit 1000000000 \
  >"$work/server.out" 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do curl -sf "$issuer/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

case "$scenario" in
  code-flow)
    redirect=http://127.0.0.1:9/cb
    created=$("$bin" --state-dir "$work/state" --keys-dir "$work/keys" clients add --name bench \
      --redirect-uri "$redirect" --id-token-alg ES256)
    id=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])')
    secret=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
    taskset -c 1 "$load" code-flow --issuer "$issuer" --client-id "$id" --client-secret "$secret" \
      --redirect-uri "$redirect" "$@"
    ;;
  agent)
    taskset -c 1 "$load" agent --issuer "$issuer" --audience https://gateway.tail1234.ts.net "$@"
    ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
