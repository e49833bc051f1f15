# Sourced by Benchmarks/video.sh, agent.sh and bytes-per-hour.sh (not executable, so `make bench`
# does not run it): issue 13's two scenes on a real 1920x1080x24 Xvfb (-noreset), one place.
#   desktop:  patterned root, xclock ticking every second, xlogo, an xterm being typed into
#   document: light root, a white xterm being typed into
# The caller sets WORK (a private temporary directory) and `pids=()`; every process started here
# is appended to pids, and `stop_children` ends them (the caller's EXIT trap calls it).

# start_display TAG: starts Xvfb (display number chosen by Xvfb through -displayfd), exports
# DISPLAY; TAG names its file in WORK.
start_display() {
  local tag=$1
  Xvfb -displayfd 3 -screen 0 1920x1080x24 -nolisten tcp -noreset 3>"$WORK/display-$tag" >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 100); do [ -s "$WORK/display-$tag" ] && break; sleep 0.1; done
  [ -s "$WORK/display-$tag" ] || { echo "$0: Xvfb did not start" >&2; return 1; }
  export DISPLAY=":$(head -1 "$WORK/display-$tag")"
}

# start_scene desktop|document: the scene's root and clients on $DISPLAY; the xterm is titled
# "notes" and has the input focus.
start_scene() {
  case $1 in
    desktop)
      xsetroot -mod 6 6 -fg '#3465a4' -bg '#729fcf'
      xlogo -geometry 500x400+80+80 >/dev/null 2>&1 & pids+=($!)
      xclock -geometry 300x300+1500+80 -update 1 >/dev/null 2>&1 & pids+=($!)
      xterm -T notes -geometry 120x40+650+300 -e cat >/dev/null 2>&1 & pids+=($!) ;;
    document)
      xsetroot -solid '#eeeeec'
      xterm -T notes -bg white -fg black -fa Monospace -fs 11 -geometry 140x50+200+60 -e cat >/dev/null 2>&1 & pids+=($!) ;;
    *) echo "$0: unknown scene $1" >&2; return 1 ;;
  esac
  local win=
  for _ in $(seq 50); do win=$(xdotool search --name '^notes$' 2>/dev/null | head -1) && [ -n "$win" ] && break; sleep 0.1; done
  [ -n "$win" ] || { echo "$0: the notes xterm did not appear" >&2; return 1; }
  sleep 1  # let the clients draw
  xdotool windowfocus --sync "$win" 2>/dev/null || true
}

# start_typing SECONDS: types into the focused xterm for SECONDS, in the background. Real key
# events through XTEST (xterm ignores XSendEvent, which `xdotool type --window` would use).
start_typing() {
  local seconds=$1
  # Each xdotool runs in the background and is waited for, so TERM ends the loop and its child.
  ( child=
    trap '[ -n "$child" ] && kill "$child" 2>/dev/null; exit 0' TERM
    end=$(( $(date +%s) + seconds ))
    while [ "$(date +%s)" -lt $end ]; do
      xdotool type --delay 120 "the quick brown fox jumps over the lazy dog 0123456789 " 2>/dev/null & child=$!; wait $child || true
      xdotool key Return 2>/dev/null & child=$!; wait $child || true
    done ) & pids+=($!)
}

# forget_children PID...: drops PIDs the caller has already waited for from pids.
forget_children() {
  local keep=() p q
  for p in "${pids[@]}"; do
    for q in "$@"; do [ "$p" = "$q" ] && continue 2; done
    keep+=("$p")
  done
  pids=("${keep[@]}")
}

# stop_children: ends every process in pids (TERM, then waits for it), and empties pids.
stop_children() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
