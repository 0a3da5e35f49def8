#!/usr/bin/env bash
# Instructions per request under callgrind: a figure that does not move with the machine's noise,
# for comparing two versions of the gateway.
#
#   bench/callgrind.sh [requests, default 20000] [binary, default target/release/portcullis]
#
# For the route only and the full pipeline with an API key (the configurations of bench/run.sh):
# starts nginx answering "ok" as the upstream, the gateway under valgrind's callgrind (one
# worker), warms it up with 2,000 requests, zeroes the counters, sends the requests with
# `h2load --h1 -c 50`, and prints the user-space instructions counted, divided by the requests.
# Installs valgrind, nginx and h2load on Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${1:-20000}"
BIN="${2:-$PWD/target/release/portcullis}"

need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
if ((${#need[@]})); then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$BIN" ] || cargo build --release --quiet --bin portcullis

WORK="$(mktemp -d)"
GATEWAY_PID=""
cleanup() {
  [ -n "$GATEWAY_PID" ] && kill "$GATEWAY_PID" 2>/dev/null || true
  [ -f "$WORK/upstream.pid" ] && kill "$(cat "$WORK/upstream.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

UPSTREAM=127.0.0.1:18100
LISTEN=127.0.0.1:18180
cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
error_log /dev/null crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/client-body;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fastcgi;
  uwsgi_temp_path $WORK/uwsgi;
  scgi_temp_path $WORK/scgi;
  server { listen $UPSTREAM; location / { return 200 "ok"; } }
}
EOF
"$NGINX" -c "$WORK/upstream.conf" -p "$WORK"

KEY="pcs_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
HASH="sha256:$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
cat >"$WORK/route.toml" <<EOF
[server]
allowed_hosts = ["*"]
threads = 1
[admin]
address = "127.0.0.1:0"
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
[admin]
address = "127.0.0.1:0"
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
EOF

# $1: configuration, $2: extra header (may be empty). Prints instructions per request.
measure() {
  local out="$WORK/callgrind.out" header=()
  [ -n "$2" ] && header=(-H "$2")
  rm -f "$out"*
  valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" run -c "$1" >"$WORK/gateway.log" 2>&1 &
  GATEWAY_PID=$!
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "${header[@]}" "http://$LISTEN/" 2>/dev/null && break
    sleep 0.1
  done
  h2load --h1 -n 2000 -c 50 "${header[@]}" "http://$LISTEN/" >/dev/null
  callgrind_control -z "$GATEWAY_PID" >/dev/null 2>&1
  local sent
  sent="$(h2load --h1 -n "$REQUESTS" -c 50 "${header[@]}" "http://$LISTEN/" | awk '/^status codes:/ {print $3}')"
  callgrind_control -d "$GATEWAY_PID" >/dev/null 2>&1
  kill "$GATEWAY_PID"
  wait "$GATEWAY_PID" 2>/dev/null || true
  GATEWAY_PID=""
  # The dump asked for after zeroing is part 1 ("$out.1"); the one at exit is "$out".
  local total
  total="$(awk '/^(summary|totals):/ {print $2; exit}' "$out.1")"
  awk -v t="$total" -v n="$sent" 'BEGIN { printf "%.1fk instructions per request (%d requests answered 2xx)\n", t / n / 1000, n }'
}

printf 'route only:               '
measure "$WORK/route.toml" ""
printf 'full pipeline, API key:   '
measure "$WORK/full.toml" "X-API-Key: $KEY"
