#!/usr/bin/env bash
# make demo: the main job end to end on real input.
#
# Starts an Xvfb with visible content, makes a KEK pair with the standard openssl commands,
# starts custos-collector on 127.0.0.1 with a self-signed certificate, pins it, and starts
# custos-agent (enable-encryption=1) BEFORE the collector knows the KEK: captures wait in the
# spool while uploads are refused. Then it registers the KEK with the documented SQL insert, watches the
# backlog flush, types text with xdotool, stops the agent, proves no plaintext is stored, lists
# captures as <Encrypted>, and decrypts with the passphrase. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$(swift build --show-bin-path)}
OUT=${DEMO_OUT:-$ROOT/demo-out}
PASS="demo passphrase $(date +%s)"
TYPED="Custos demo: the quick brown fox 42"

# The collector writes to its database too: give the sqlite3 CLI a busy timeout.
db()   { sqlite3 -cmd '.timeout 10000' "$OUT/collector/collector.db" "$@"; }
say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\033[31mDEMO FAILED: %s\033[0m\n' "$*" >&2; exit 1; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

rm -rf "$OUT"; mkdir -p "$OUT"/{keys,collector,agent/certs,agent/spool,decrypted}
chmod 700 "$OUT"

say "1. An X display with visible content"
for n in $(seq 90 140); do [ -e /tmp/.X$n-lock ] || [ -e /tmp/.X11-unix/X$n ] || { DNUM=$n; break; }; done
export DISPLAY=:$DNUM
Xvfb "$DISPLAY" -screen 0 1280x720x24 -nolisten tcp >"$OUT/xvfb.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done
xdpyinfo >/dev/null 2>&1 || fail "Xvfb did not start on $DISPLAY"
xsetroot -solid '#204a87'
xlogo -geometry 300x220+60+60 >/dev/null 2>&1 & pids+=($!)
xterm -T "Custos demo notes" -geometry 70x12+420+300 -e cat >/dev/null 2>&1 & pids+=($!)
sleep 1
echo "Xvfb on $DISPLAY (1280x720x24), root painted, an xlogo and an xterm window open"

say "2. A KEK pair, made with the standard openssl commands"
printf '%s' "$PASS" > "$OUT/keys/pass"; chmod 600 "$OUT/keys/pass"
openssl genrsa -aes256 -passout file:"$OUT/keys/pass" -out "$OUT/keys/keypair.pem" 2048 2>/dev/null
openssl rsa -in "$OUT/keys/keypair.pem" -passin file:"$OUT/keys/pass" -pubout -out "$OUT/keys/publickey.crt" 2>/dev/null
head -1 "$OUT/keys/keypair.pem"; head -1 "$OUT/keys/publickey.crt"
KEKID=$("$BIN/custos" keys id "$OUT/keys/publickey.crt")
echo "KEK id: $KEKID"

say "3. The collector on 127.0.0.1 with a self-signed certificate"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$OUT/collector/tls.key" -out "$OUT/collector/tls.crt" 2>/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$OUT/collector/collector.cfg" <<CFG
listen=127.0.0.1:$PORT
tls-cert=tls.crt
tls-key=tls.key
database=collector.db
CFG
TOKEN=$("$BIN/custos" agents add --db "$OUT/collector/collector.db" --id demo-pc | tail -1)
"$BIN/custos-collector" --config "$OUT/collector/collector.cfg" >"$OUT/collector/collector.log" 2>&1 & COLLECTOR=$!; pids+=($COLLECTOR)
PIN="sha256/$(openssl x509 -in "$OUT/collector/tls.crt" -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64)"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
echo "collector on https://127.0.0.1:$PORT, SPKI pin $PIN"

say "4. The agent, enable-encryption=1, started BEFORE the collector knows its KEK"
cp "$OUT/keys/publickey.crt" "$OUT/agent/certs/kek.pem"
cat > "$OUT/agent/config.cfg" <<CFG
enable-encryption=1
agent-id=demo-pc
agent-token=$TOKEN
server-url=https://localhost:$PORT
server-pin=$PIN
display=$DISPLAY
screen-interval-ms=1000
keystroke-idle-ms=700
spool-dir=$OUT/agent/spool
spool-max-mb=64
CFG
"$BIN/custos-agent" --config "$OUT/agent/config.cfg" --check-config || fail "check-config"
CUSTOS_LOG_LEVEL=info "$BIN/custos-agent" --config "$OUT/agent/config.cfg" 2>"$OUT/agent/agent.log" & AGENT=$!; pids+=($AGENT)
# The screen changes while the KEK is unknown: each change is a new sealed frame in the spool.
for c in '#4e9a06' '#c4a000' '#a40000' '#5c3566' '#204a87'; do xsetroot -solid "$c"; sleep 1.2; done
echo "--- agent log: the collector refuses the unknown KEK, data stays spooled"
grep -E 'unknown-kek|refused' "$OUT/agent/agent.log" | head -3 || true
"$BIN/custos-agent" status --config "$OUT/agent/config.cfg"
SPOOLED_BEFORE=$(db 'select count(*) from captures')
echo "captures at the collector so far: $SPOOLED_BEFORE"
[ "$SPOOLED_BEFORE" = 0 ] || fail "collector stored captures before the KEK was registered"

say "5. Register the KEK with the documented SQL insert"
SQL="insert into encryption_kek (active, priv_encrypted, pub_datafile, priv_datafile) values (true, true, '$OUT/keys/publickey.crt', '$OUT/keys/keypair.pem');"
echo "sqlite3 collector.db \"$SQL\""
db "$SQL"
kill -HUP "$COLLECTOR" 2>/dev/null || true
for i in $(seq 60); do
  n=$(db 'select count(*) from captures')
  [ "$n" -gt 0 ] && break; sleep 0.5
done
echo "backlog flushed: $n capture(s) at the collector"
[ "$n" -gt 0 ] || fail "backlog did not flush"

say "6. Type into a window with xdotool"
WIN=$(xdotool search --name "Custos demo notes" | head -1)
xdotool windowfocus --sync "$WIN" 2>/dev/null || true
xdotool type --delay 40 "$TYPED"
xdotool key Return
sleep 2.5
echo "typed \"$TYPED\" + Enter into window \"Custos demo notes\""

say "7. Stop the agent (SIGTERM) and let the last upload land"
kill -TERM "$AGENT"; wait "$AGENT" || true
"$BIN/custos-agent" status --config "$OUT/agent/config.cfg"

say "8. No plaintext at rest"
leaks=0
for f in "$OUT"/collector/collector.db* "$OUT"/collector/collector.db.blobs/* "$OUT"/agent/spool/*; do
  [ -f "$f" ] || continue
  if grep -a -q "quick brown fox" "$f"; then echo "PLAINTEXT TEXT in $f"; leaks=1; fi
  if LC_ALL=C grep -a -q $'\x89PNG' "$f"; then echo "PNG signature in $f"; leaks=1; fi
  if LC_ALL=C grep -a -q 'CVPK' "$f"; then echo "video packet magic (CVPK) in $f"; leaks=1; fi
done
[ $leaks = 0 ] || fail "plaintext found at rest"
echo "typed text, PNG signatures and video packet headers: not found in the collector database, its blob files or the agent's spool"

say "9. Captures listed without decrypting"
"$BIN/custos" captures list --db "$OUT/collector/collector.db" > "$OUT/captures.txt"
# The first rows, then the count line (the list ends with "N captures, … sealed").
if [ "$(wc -l < "$OUT/captures.txt")" -gt 9 ]; then head -8 "$OUT/captures.txt"; echo "…"; tail -1 "$OUT/captures.txt"
else cat "$OUT/captures.txt"; fi

say "10. Decrypt on the admin's side, with the passphrase"
# The screen was recorded as AV1 video (screen-format=video, the default): one WebM file per
# monitor and stream, plus a PNG still every 5 s of capture time (--stills).
"$BIN/custos" decrypt --db "$OUT/collector/collector.db" --key "$OUT/keys/keypair.pem" \
  --passphrase-file "$OUT/keys/pass" --out "$OUT/decrypted" --stills 5
VIDEO1=$(find "$OUT/decrypted" -name '*.webm' | sort | tail -1)
[ -n "$VIDEO1" ] || fail "no video decrypted"
FRAMES=0
for f in $(find "$OUT/decrypted" -name '*.webm'); do
  n=$(ffprobe -v error -count_packets -select_streams v:0 -show_entries stream=nb_read_packets -of csv=p=0 "$f")
  FRAMES=$((FRAMES + n))
done
STILLS=$(find "$OUT/decrypted" -name '*.png' | wc -l)
# The last frame was captured after the root was last painted #204a87: check a pixel of it
# with an independent decoder (ffmpeg), away from the xlogo window. Video is lossy: each
# channel within 8 levels.
# (A 2x2 crop: 4:2:0 video cannot be cropped to one pixel; the last frame's first pixel.)
PIXEL=$(ffmpeg -v error -i "$VIDEO1" -vf "crop=2:2:10:10" -f rawvideo -pix_fmt rgb24 - | tail -c 12 | head -c 3 | od -An -tx1 | tr -d ' \n')
echo "last video: $(basename "$VIDEO1"), pixel (10,10) of its last frame = #$PIXEL"
near() { local a=$((16#$1)) b=$((16#$2)); [ $((a > b ? a - b : b - a)) -le 8 ]; }
PIXEL_OK=no
if [ ${#PIXEL} = 6 ] && near "${PIXEL:0:2}" 20 && near "${PIXEL:2:2}" 4a && near "${PIXEL:4:2}" 87; then PIXEL_OK=yes; fi
GOT=$(cat "$OUT"/decrypted/keystrokes.jsonl | python3 -c 'import sys,json; print("".join(json.loads(l)["text"] for l in sys.stdin))')
echo "recovered text: $GOT"
case "$GOT" in *"$TYPED"*) TEXT_OK=yes;; *) TEXT_OK=no;; esac
echo "--- wrong passphrase is refused:"
printf 'wrong' > "$OUT/keys/wrong"
if "$BIN/custos" decrypt --db "$OUT/collector/collector.db" --key "$OUT/keys/keypair.pem" \
     --passphrase-file "$OUT/keys/wrong" --out "$OUT/wrong-out" 2>&1; then fail "wrong passphrase accepted"; fi

say "Summary"
printf '%-44s %s\n' "KEK id" "$KEKID" \
  "captures at collector before KEK registered" "$SPOOLED_BEFORE" \
  "captures at collector at the end" "$(db 'select count(*) from captures')" \
  "plaintext found at rest" "none" \
  "video frames decrypted (WebM, AV1)" "$FRAMES (e.g. ${VIDEO1#$OUT/})" \
  "PNG stills (--stills 5)" "$STILLS" \
  "pixel (10,10) of the last frame" "#$PIXEL (painted: #204a87, within 8 levels: $PIXEL_OK)" \
  "typed text recovered exactly" "$TEXT_OK"
[ "$TEXT_OK" = yes ] || fail "typed text not recovered"
[ "$FRAMES" -gt 0 ] || fail "no frames decrypted"
[ "$STILLS" -gt 0 ] || fail "no stills decoded"
[ "$PIXEL_OK" = yes ] || fail "last frame pixel #$PIXEL is not the painted #204a87"
echo "demo output kept in $OUT"

# The same captures in the reviewer's dashboard (decrypted in the browser): a consistent copy
# (sqlite3 .backup, which includes what is still in the -wal file) served on 127.0.0.1.
db ".backup '$OUT/review.db'"
say "Review in the browser (optional)"
echo "  $BIN/custos dashboard --db $OUT/review.db --dashboard-dir $ROOT/dashboard --one-time-login"
echo "  then open the printed https://127.0.0.1:8444/ address, log in with the printed one-time account,"
echo "  press Decrypt and pick $OUT/keys/keypair.pem (passphrase: in $OUT/keys/pass). Ctrl-C stops it."
