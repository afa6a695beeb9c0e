#!/usr/bin/env bash
# Soak (docs/benchmarks.md "Soak"): a mixed load on a release server for MINUTES minutes —
# agent grants, code flows, refreshes, exchanges, revocations, feed subscribers coming and
# going — sampling the server's RSS, open fds, database size and p99 every 10 s.
#   bench/soak.sh MINUTES [--rate N] [--out DIR] [--no-build] [-- soak options…]
# Writes DIR/soak.csv, DIR/soak.png (gnuplot) and DIR/server.log (default DIR: bench/out).
# Passes when RSS and fds at the end are within 10 % of their minute-2 values and nothing
# failed: no request error, no ERROR in the server's log. Server and load are pinned to
# different cores (taskset) when there are two.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: bench/soak.sh MINUTES [--rate N] [--out DIR] [--no-build] [-- soak options]}
shift
rate=1500
out=bench/out
build=1
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rate=*) rate=${1#--rate=} ;;
    --rate) rate=${2:?--rate needs a value}; shift ;;
    --out=*) out=${1#--out=} ;;
    --out) out=${2:?--out needs a value}; shift ;;
    --no-build) build=0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$minutes" in ''|*[!0-9]*) echo "MINUTES must be a whole number" >&2; exit 2 ;; esac

if ! command -v gnuplot >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y gnuplot-nox >&2 || { apt-get update >&2 && apt-get install -y gnuplot-nox >&2; }
  else sudo apt-get install -y gnuplot-nox >&2; fi
fi
target=${CARGO_TARGET_DIR:-target}
if [ "$build" = 1 ]; then
  cargo build --release --bin tailpass --bench soak >&2
fi
bin=$target/release/tailpass
soak=$(ls -t "$target"/release/deps/soak-* | grep -v '\.d$' | head -n1)

mkdir -p "$out"
work=$(mktemp -d)
server=
trap '[ -z "$server" ] || { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; }; rm -rf "$work"' EXIT
# The user's laptop is also named by its tailnet address, which a refresh asks about again.
cat > "$work/peers.json" <<JSON
{"127.0.0.2": $(cat tests/fixtures/whois-user.json), "100.101.102.103": $(cat tests/fixtures/whois-user.json),
 "127.0.0.3": $(cat tests/fixtures/whois-tagged.json)}
JSON
cp bench/policy.toml "$work/policy.toml"
# A free port: the kernel picks one, which is released for the server to take.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
issuer="http://127.0.0.1:$port"
server_cpu=() load_cpu=()
if [ "$(nproc)" -ge 2 ]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); fi
# Tokens live a minute and none longer than two: what is held for a token's lifetime (a
# revocation stays in the index and the feed's snapshots for the longest lifetime, 24 h by
# default) reaches its steady state within the first two minutes, so what grows after minute
# 2 is growth, not a working set still filling.
"${server_cpu[@]}" "$bin" --state-dir "$work/state" --keys-dir "$work/keys" serve \
  --issuer "$issuer" --listen "127.0.0.1:$port" --identity local --identity-file "$work/peers.json" \
  --policy "$work/policy.toml" --rate-limit 1000000000 \
  --token-lifetime 1m --agent-token-lifetime 1m --max-token-lifetime 2m \
  >"$work/server.out" 2>"$out/server.log" &
server=$!
for _ in $(seq 100); do curl -sf "$issuer/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$issuer/healthz" >/dev/null || { echo "the server did not start:" >&2; cat "$out/server.log" >&2; exit 1; }

redirect=http://127.0.0.1:9/cb
created=$("$bin" --state-dir "$work/state" --keys-dir "$work/keys" clients add --name soak \
  --redirect-uri "$redirect" --id-token-alg ES256)
id=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])')
secret=$(echo "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')

status=0
"${load_cpu[@]}" "$soak" --issuer "$issuer" --client-id "$id" --client-secret="$secret" \
  --redirect-uri "$redirect" --server-pid "$server" --state-dir "$work/state" \
  --csv "$out/soak.csv" --minutes "$minutes" --rate "$rate" "${extra[@]}" || status=$?

if ! kill -0 "$server" 2>/dev/null; then echo "FAIL: the server exited" >&2; status=1; fi
logged=$(grep -c ' ERROR ' "$out/server.log" || true)
echo "server log: $logged ERROR lines ($out/server.log)"
if [ "$logged" -gt 0 ]; then grep -m5 ' ERROR ' "$out/server.log" >&2; status=1; fi

gnuplot <<GNUPLOT
set datafile separator ","
set terminal pngcairo size 1200,900 font ",11"
set output "$out/soak.png"
set multiplot layout 2,1 title "tailpass soak: $minutes min at $rate requests/s offered"
set key top left opaque box
set grid
set xlabel "minutes"
set ylabel "RSS (MB)"
set y2label "open fds"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
plot "$out/soak.csv" using (\$1/60):(\$2/1024) skip 1 with linespoints title "RSS (MB)" axes x1y1, \
     "" using (\$1/60):3 skip 1 with linespoints title "open fds" axes x1y2
set ylabel "p99 (ms)"
set y2label "database (MB)"
plot "$out/soak.csv" using (\$1/60):6 skip 1 with linespoints title "p99 (ms)" axes x1y1, \
     "" using (\$1/60):(\$4/1048576) skip 1 with linespoints title "database, with WAL (MB)" axes x1y2
unset multiplot
GNUPLOT
echo "wrote $out/soak.csv and $out/soak.png"
exit "$status"
