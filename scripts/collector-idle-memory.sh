#!/bin/sh
# Measures the collector's resident memory (VmRSS, /proc/PID/status) before, with and after N idle
# TLS connections, twice (the second burst shows whether freed memory is reused), then idle.
# Usage: scripts/collector-idle-memory.sh [COLLECTOR-BINARY] [N]   (default .build/debug/custos-collector, 2000)
# Needs openssl and python3. Not a test: figures vary by machine; docs/API.md has this machine's.
set -eu
BIN=${1:-.build/debug/custos-collector}
N=${2:-2000}
DIR=$(mktemp -d /tmp/custos-idle-mem.XXXXXX)
PID=; trap '[ -n "$PID" ] && kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$DIR/key.pem" -out "$DIR/cert.pem" -days 1 -subj /CN=127.0.0.1 2>/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$DIR/collector.cfg" <<CFG
listen=127.0.0.1:$PORT
tls-cert=$DIR/cert.pem
tls-key=$DIR/key.pem
database=$DIR/collector.db
idle-timeout-seconds=600
max-connections=$((N + 100))
CFG
ulimit -n "$(ulimit -Hn)"
: > "$DIR/log"
"$BIN" --config "$DIR/collector.cfg" 2>"$DIR/log" &
PID=$!
i=0; until grep -q "collector listening" "$DIR/log"; do i=$((i + 1)); [ $i -lt 300 ] || { cat "$DIR/log"; exit 1; }; sleep 0.1; done
rss() { awk '/VmRSS/ { printf "%.1f MB", $2 / 1024 }' /proc/$PID/status; }
python3 - "$PORT" "$N" "$PID" <<'PY'
import socket, ssl, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
# One request first, so the baseline includes what the first connection initialises.
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); s.recv(4096); s.close()
time.sleep(1)
base = rss(); print(f"before: {base:.1f} MB")
for burst in (1, 2):
    held = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) for _ in range(n)]
    time.sleep(1)
    peak = rss(); print(f"burst {burst}: {n} idle TLS connections: {peak:.1f} MB ({(peak - base) * 1024 / n:.1f} KB each)")
    for c in held: c.close()
    time.sleep(3)
    print(f"burst {burst}: 3 s after they closed: {rss():.1f} MB")
time.sleep(10)
print(f"10 s later: {rss():.1f} MB")
PY
