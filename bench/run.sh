#!/usr/bin/env bash
# Load benchmark: Portcullis beside the upstream alone and nginx as a plain reverse proxy, on
# loopback, with wrk.
#
#   bench/run.sh [seconds per run, default 8] [runs per configuration, default 3]
#
# The proxy under test runs on core 0 (one worker thread); wrk and the upstream (nginx returning
# a fixed 2-byte body) share core 1. Every configuration is pinned the same way, and runs are
# interleaved (A B C ... A B C ...) so drift in the machine hits them all alike. Prints a table of
# requests/s and p50/p99 latency (medians over the runs) with ratios to Portcullis' plain route
# and to nginx. Installs what it needs (nginx, wrk) on Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-8}"
RUNS="${2:-3}"
CONNECTIONS=50

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if ((${#need[@]})); then
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

echo "bench: building (release)" >&2
cargo build --release --quiet --bin portcullis --example mint_token
BIN="$PWD/target/release/portcullis"
MINT="$PWD/target/release/examples/mint_token"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/upstream.pid" ] && kill "$(cat "$WORK/upstream.pid")" 2>/dev/null || true
  [ -f "$WORK/nginx-proxy.pid" ] && kill "$(cat "$WORK/nginx-proxy.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

UPSTREAM=127.0.0.1:18000
LISTEN=127.0.0.1:18080

# The upstream: nginx answering "ok" from memory, keep-alive, no logs, on core 1.
cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
error_log /dev/null crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen $UPSTREAM; location / { return 200 "ok"; } }
}
EOF
taskset -c 1 "$NGINX" -c "$WORK/upstream.conf" -p "$WORK"

# nginx as the reference proxy: plain proxy_pass with upstream keep-alive.
cat >"$WORK/nginx-proxy.conf" <<EOF
worker_processes 1;
pid $WORK/nginx-proxy.pid;
daemon off;
error_log /dev/null crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server $UPSTREAM; keepalive 256; }
  server {
    listen $LISTEN;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF

# Credentials: an API key, an HMAC secret, an RSA and an EC key pair.
KEY="pcs_$(openssl rand -hex 32)"
HASH="sha256:$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
openssl rand -base64 48 | tr -d '\n' >"$WORK/hmac.secret"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.key" 2>/dev/null
openssl pkey -in "$WORK/rsa.key" -pubout -out "$WORK/rsa.pub"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/ec.key" 2>/dev/null
openssl pkey -in "$WORK/ec.key" -pubout -out "$WORK/ec.pub"
HS256="$("$MINT" HS256 "$WORK/hmac.secret" bench-hs api)"
RS256="$("$MINT" RS256 "$WORK/rsa.key" bench-rs api)"
ES256="$("$MINT" ES256 "$WORK/ec.key" bench-es api)"

# Portcullis: the plain route, and the full pipeline.
cat >"$WORK/plain.toml" <<EOF
[server]
allowed_hosts = ["*"]
threads = 1
[[listener]]
address = "$LISTEN"
[[upstream]]
name = "api"
targets = ["$UPSTREAM"]
[[route]]
path = "/"
upstream = "api"
auth = "none"
EOF
cat >"$WORK/full.toml" <<EOF
[server]
allowed_hosts = ["localhost", "127.0.0.1", "*.example.com"]
threads = 1
auth_failure_limit = "off"
[[listener]]
address = "$LISTEN"
[cors]
allowed_origins = ["https://app.example.com"]
[[rate_limit]]
name = "per-client"
key = "client"
limit = "100000000/minute"
[[rate_limit]]
name = "per-identity"
key = "identity"
limit = "100000000/minute"
[[upstream]]
name = "api"
targets = ["$UPSTREAM"]
[[route]]
path = "/"
upstream = "api"
permissions = ["bench"]
rate_limits = ["per-client", "per-identity"]
[auth]
[[auth.api_key]]
id = "bench"
hash = "$HASH"
permissions = ["bench"]
[[auth.jwt]]
name = "hs"
issuer = "bench-hs"
audiences = ["api"]
algorithms = ["HS256"]
secret = "file:$WORK/hmac.secret"
[[auth.jwt]]
name = "rs"
issuer = "bench-rs"
audiences = ["api"]
algorithms = ["RS256"]
public_key_file = "$WORK/rsa.pub"
[[auth.jwt]]
name = "es"
issuer = "bench-es"
audiences = ["api"]
algorithms = ["ES256"]
public_key_file = "$WORK/ec.pub"
EOF
"$BIN" check -c "$WORK/plain.toml" >/dev/null
"$BIN" check -c "$WORK/full.toml" >/dev/null

# name | how to start the proxy ("-" for none) | extra wrk headers
CONFIGS=(
  "upstream direct|-|"
  "nginx proxy_pass|nginx|"
  "portcullis, route only|$WORK/plain.toml|"
  "portcullis full, API key|$WORK/full.toml|X-API-Key: $KEY"
  "portcullis full, HS256 JWT|$WORK/full.toml|Authorization: Bearer $HS256"
  "portcullis full, RS256 JWT|$WORK/full.toml|Authorization: Bearer $RS256"
  "portcullis full, ES256 JWT|$WORK/full.toml|Authorization: Bearer $ES256"
)

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench: nothing listens on $1" >&2; exit 1
}

# Converts wrk's latency ("812.00us", "1.20ms", "2.00s") to microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
    else print v }'
}

run_one() {
  local name="$1" start="$2" header="$3" target="$LISTEN" pid=""
  case "$start" in
    -) target="$UPSTREAM" ;;
    nginx) taskset -c 0 "$NGINX" -c "$WORK/nginx-proxy.conf" -p "$WORK" & pid=$! ;;
    *) taskset -c 0 "$BIN" run -c "$start" >/dev/null 2>"$WORK/stderr.log" & pid=$! ;;
  esac
  [ -n "$pid" ] && PIDS+=("$pid")
  wait_port "$target"
  local args=(-t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -H "Host: localhost" -H "Origin: https://app.example.com")
  [ -n "$header" ] && args+=(-H "$header")
  # Warm-up (connections, caches), then the measured run.
  taskset -c 1 wrk "${args[@]/-d${SECONDS_PER_RUN}s/-d1s}" "http://$target/api/v1/models" >/dev/null
  local out; out="$(taskset -c 1 wrk "${args[@]}" "http://$target/api/v1/models")"
  if echo "$out" | grep -q 'Non-2xx'; then
    echo "bench: $name answered errors:" >&2; echo "$out" >&2; exit 1
  fi
  local rps p50 p99
  rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  p50="$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')")"
  p99="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')")"
  echo "$name|$rps|$p50|$p99" >>"$WORK/results"
  if [ -n "$pid" ]; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  sleep 0.5
}

: >"$WORK/results"
for run in $(seq 1 "$RUNS"); do
  for config in "${CONFIGS[@]}"; do
    IFS='|' read -r name start header <<<"$config"
    echo "bench: run $run/$RUNS: $name" >&2
    run_one "$name" "$start" "$header"
  done
done

# Medians per configuration, then the table.
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
declare -A RPS P50 P99
for config in "${CONFIGS[@]}"; do
  name="${config%%|*}"
  RPS[$name]="$(awk -F'|' -v n="$name" '$1 == n {print $2}' "$WORK/results" | median)"
  P50[$name]="$(awk -F'|' -v n="$name" '$1 == n {print $3}' "$WORK/results" | median)"
  P99[$name]="$(awk -F'|' -v n="$name" '$1 == n {print $4}' "$WORK/results" | median)"
done
plain="${RPS[portcullis, route only]}"
nginx="${RPS[nginx proxy_pass]}"
echo
echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); proxy on core 0, wrk and upstream on core 1;"
echo "wrk -t1 -c$CONNECTIONS, ${SECONDS_PER_RUN}s per run, median of $RUNS runs"
echo
echo "| configuration | requests/s | p50 | p99 | vs route only | vs nginx |"
echo "|---|---|---|---|---|---|"
for config in "${CONFIGS[@]}"; do
  name="${config%%|*}"
  awk -v n="$name" -v r="${RPS[$name]}" -v p50="${P50[$name]}" -v p99="${P99[$name]}" -v plain="$plain" -v nginx="$nginx" \
    'BEGIN { printf "| %s | %.0f | %.0f µs | %.0f µs | %.2f | %.2f |\n", n, r, p50, p99, r / plain, r / nginx }'
done
