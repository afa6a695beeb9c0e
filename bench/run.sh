#!/usr/bin/env bash
# Benchmarks over HTTP, with the server and the load generator pinned to different cores
# (taskset), as docs/design.md asks. Prints one line per measurement. Needs two cores.
#   bench/run.sh code-flow [--seconds N] [--concurrency N]   authorize + token + userinfo
#   bench/run.sh agent [--seconds N] [--concurrency N]       the agent grant over HTTP
#     (TAILPASS_BENCH_STORE=postgres://… TAILPASS_BENCH_REPLICAS=2 for replicas on PostgreSQL)
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
servers=()
trap 'for s in "${servers[@]}"; do kill "$s" 2>/dev/null || true; wait "$s" 2>/dev/null || true; done; rm -rf "$work"' EXIT
cat > "$work/peers.json" <<JSON
{"127.0.0.2": $(cat tests/fixtures/whois-user.json), "127.0.0.3": $(cat tests/fixtures/whois-tagged.json)}
JSON
cp bench/policy.toml "$work/policy.toml"
port=18765
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
  issuer="http://idp.bench:$port"
else
  issuer="http://127.0.0.1:$port"
fi
targets=()
for i in $(seq "$replicas"); do
  if [ "$replicas" -gt 1 ]; then addr="127.0.1.$i:$port"; else addr="127.0.0.1:$port"; fi
  targets+=(--replica "$addr")
  taskset -c 0 "$bin" --state-dir "$work/state$i" --keys-dir "$work/keys" "${global[@]}" serve \
    --issuer "$issuer" --listen "$addr" --identity local --identity-file "$work/peers.json" \
    --policy "$work/policy.toml" --rate-limit 1000000000 \
    >"$work/server$i.out" 2>"$work/server$i.log" &
  servers+=($!)
  for _ in $(seq 100); do curl -sf "http://$addr/healthz" -H "Host: ${issuer#http://}" >/dev/null 2>&1 && break; sleep 0.1; done
done
[ "$replicas" -gt 1 ] || targets=()

case "$scenario" in
  code-flow)
    redirect=http://127.0.0.1:9/cb
    created=$("$bin" --state-dir "$work/state1" --keys-dir "$work/keys" "${global[@]}" clients add --name bench \
      --redirect-uri "$redirect" --id-token-alg ES256)
    id=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])')
    secret=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
    taskset -c 1 "$load" code-flow --issuer "$issuer" --client-id "$id" --client-secret "$secret" \
      --redirect-uri "$redirect" "$@"
    ;;
  agent)
    taskset -c 1 "$load" agent --issuer "$issuer" --audience https://gateway.tail1234.ts.net \
      "${targets[@]}" "$@"
    ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
