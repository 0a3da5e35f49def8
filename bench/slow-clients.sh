#!/usr/bin/env bash
# What slow, idle and half-sent client connections cost the gateway, in resident memory.
#
#   bench/slow-clients.sh [CONNECTIONS] [KIND]
#
# CONNECTIONS (default 10000) connections from loopback, each of KIND (default `half`):
#   half   sends a partial request head, then one more header line every 5 s (slowloris);
#   idle   connects and sends nothing;
#   kept   sends a whole request, reads the answer, and keeps the connection idle (keep-alive);
#   hello  (TLS=1 only) sends a whole ClientHello and nothing more: it stalls in the handshake,
#          which the gateway cuts at header_timeout (Pingora alone: 60 s).
# The gateway runs from target/release with a config made here (its limits raised so that every
# connection from 127.0.0.1 is admitted). Printed: the gateway's RSS at start, with every
# connection open (measured before header_timeout closes the half-sent ones), the cost per
# connection, how many the gateway closed within header_timeout + 5 s, and its RSS once they
# are gone. A whole request on a fresh connection is sent throughout, and must keep answering.
#
# With TLS=1 the listener terminates TLS (a throwaway certificate made here) and the clients
# connect over TLS 1.3.
#
# Needs python3 and a release build (`cargo build --release`); raises its own open-files limit.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-10000}
kind=${2:-half}
case "$kind" in half | idle | kept) ;; hello) [ -n "${TLS:-}" ] || { echo "slow-clients: hello needs TLS=1" >&2; exit 2; } ;;
  *) echo "slow-clients: KIND is half, idle, kept or hello" >&2; exit 2 ;; esac
ulimit -n $((connections * 2 + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ -x target/release/portcullis ] || cargo build --release --locked --quiet
work=$(mktemp -d)
gateway=""
trap '[ -n "$gateway" ] && kill "$gateway" 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tls_keys=""
if [ -n "${TLS:-}" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  tls_keys=$(printf '[listener.tls]\n[[listener.tls.certificate]]\ncert = "%s"\nkey = "file:%s"' "$work/cert.pem" "$work/key.pem")
fi
cat > "$work/gateway.toml" <<TOML
[server]
allowed_hosts = ["localhost"]
max_connections = $((connections + 100))
max_connections_per_client = $((connections + 100))
threads = 1
[[listener]]
address = "127.0.0.1:$port"
$tls_keys
[[upstream]]
name = "echo"
targets = ["builtin:echo"]
[[route]]
path = "/"
upstream = "echo"
auth = "none"
TOML
RUST_LOG=warn ./target/release/portcullis run -c "$work/gateway.toml" 2>"$work/gateway.log" &
gateway=$!
python3 - "$port" "$gateway" "$connections" "$kind" "${TLS:+$work/cert.pem}" <<'PY'
import asyncio, ssl, sys, time

port, pid, total, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tls = None
if sys.argv[5]:
    tls = ssl.create_default_context(cafile=sys.argv[5])

async def connect():
    if tls:
        return await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="localhost")
    return await asyncio.open_connection("127.0.0.1", port)

async def stalled_handshake():
    """A TCP connection that has sent a real ClientHello, and will send nothing more."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = tls.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        hello.do_handshake()
    except ssl.SSLWantReadError:
        pass
    w.write(outgoing.read())
    return r, w
HEADER_TIMEOUT = 10  # the gateway's default server.header_timeout

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

async def wait_up():
    for _ in range(200):
        try:
            _, w = await connect()
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    sys.exit("slow-clients: the gateway did not start")

async def whole_request():
    r, w = await connect()
    w.write(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return data.startswith(b"HTTP/1.1 200")

closed_at = {}
writers = []

def open_fds():
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))

async def client(i, opened):
    try:
        r, w = await (stalled_handshake() if kind == "hello" else connect())
    except (OSError, ssl.SSLError):
        opened.append(False)
        return
    opened.append(True)
    writers.append(w)
    start = time.monotonic()
    try:
        if kind == "half":
            w.write(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n")
        elif kind == "kept":
            w.write(b"GET /kept HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
            await r.readexactly(length)
        while True:
            if kind == "half":
                w.write(b"X-Slow: %d\r\n" % i)
            data = await asyncio.wait_for(r.read(4096), 5)
            if not data:
                break
            if kind == "half":
                # The gateway's 408 arrived: read to the end.
                await r.read()
                break
    except asyncio.TimeoutError:
        # Nothing in 5 s: send the next line (or keep waiting), the connection is still open.
        return await keep(i, r, w, start)
    except (OSError, asyncio.IncompleteReadError):
        pass
    closed_at[i] = time.monotonic() - start
    w.close()

async def keep(i, r, w, start):
    try:
        while True:
            if kind == "half":
                w.write(b"X-Slow: %d\r\n" % i)
                await w.drain()
            try:
                data = await asyncio.wait_for(r.read(4096), 5)
            except asyncio.TimeoutError:
                continue
            if not data:
                break
    except (OSError, asyncio.IncompleteReadError):
        pass
    closed_at[i] = time.monotonic() - start
    w.close()

async def main():
    await wait_up()
    await asyncio.sleep(0.5)
    start_rss = rss_kib()
    opened = []
    began = time.monotonic()
    tasks = []
    for i in range(total):
        tasks.append(asyncio.create_task(client(i, opened)))
        if i % 200 == 199:
            await asyncio.sleep(0.01)
    while len(opened) < total:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)
    open_for = time.monotonic() - began
    loaded_rss = rss_kib()
    served = await whole_request()
    print(f"connections: {total} ({kind}), {opened.count(True)} accepted, opened within {open_for:.1f}s")
    print(f"gateway RSS at start:            {start_rss / 1024:.1f} MiB")
    print(f"gateway RSS, all open:           {loaded_rss / 1024:.1f} MiB")
    print(f"per connection:                  {(loaded_rss - start_rss) / max(total, 1):.1f} KiB")
    print(f"a whole request meanwhile:       {'200' if served else 'FAILED'}")
    if kind == "kept":
        for t in tasks:
            t.cancel()
    else:
        limit = HEADER_TIMEOUT
        await asyncio.sleep(limit + 5 - open_for)
        print(f"closed by the gateway within {limit + 5}s: {len(closed_at)} of {total}")
        if closed_at:
            times = sorted(closed_at.values())
            print(f"  closed after (median, slowest): {times[len(times) // 2]:.1f}s, {times[-1]:.1f}s")
        for t in tasks:
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in writers:
        w.close()
    await asyncio.sleep(3)
    print(f"gateway file descriptors now:    {open_fds()}")
    gone_rss = rss_kib()
    # mimalloc hands freed pages back to the system a moment after they are freed, at the
    # worker's next allocations: an idle gateway keeps them until its next requests.
    served_after = all([await whole_request() for _ in range(200)])
    await asyncio.sleep(2)
    served_after = served_after and await whole_request()
    print(f"gateway RSS once they are gone:  {gone_rss / 1024:.1f} MiB, idle since")
    print(f"  and after 200 more requests:   {rss_kib() / 1024:.1f} MiB (start {start_rss / 1024:.1f} MiB)")
    print(f"requests afterwards:             {'200' if served_after else 'FAILED'}")

asyncio.run(main())
PY
