#!/bin/bash
# Boots a real systemd (the host's /lib/systemd/systemd) as PID 1 of new PID and mount
# namespaces, on a copy-on-write overlay of the host's / whose writes go to a tmpfs. Packages
# can then be installed and services started there exactly as on a machine booted with systemd,
# while the host's files, processes and /run stay untouched. The network namespace is shared
# (the X server's abstract socket stays reachable). Needs root, overlayfs and cgroups.
#
#   systemd-sandbox.sh start DIR   boots; DIR (new, empty) holds the log and the cgroup name.
#                                  Prints PID 1's host pid when the boot has settled.
#   systemd-sandbox.sh run DIR CMD...   runs CMD inside (mount and PID namespaces of PID 1).
#   systemd-sandbox.sh stop DIR    powers off (SIGKILL to PID 1 after 20 s), removes the
#                                  sandbox's cgroups. Safe to call more than once.
set -eu

cmd="${1:?usage: systemd-sandbox.sh start|run|stop DIR [CMD...]}"
dir="${2:?usage: systemd-sandbox.sh start|run|stop DIR [CMD...]}"
shift 2

pid1() { cat "$dir/pid1" 2>/dev/null; }
alive() { local p; p="$(pid1)"; [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

# The sandbox's own cgroups, so the host's cgroup roots get nothing but one folder each.
cgroup_dirs() {
    local name; name="$(cat "$dir/cgroup" 2>/dev/null)" || return 0
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
        [ -d "$h/$name" ] && echo "$h/$name"
    done
    return 0
}

case "$cmd" in
start)
    mkdir -p "$dir"
    name="custos-sandbox-$$-$RANDOM"
    echo "$name" > "$dir/cgroup"
    # Inside the new namespaces: overlay root, API file systems, pivot_root, exec systemd.
    cat > "$dir/init.sh" <<'INIT'
#!/bin/bash
set -eu
dir="$1"; name="$2"
for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    if [ -f "$h/cgroup.procs" ]; then mkdir -p "$h/$name" && echo $$ > "$h/$name/cgroup.procs"; fi
done
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then   # pure cgroup v2 host
    mkdir -p "/sys/fs/cgroup/$name" && echo $$ > "/sys/fs/cgroup/$name/cgroup.procs"
fi
mkdir -p "$dir/layer" "$dir/root"
mount -t tmpfs -o mode=0755 tmpfs "$dir/layer"
mkdir -p "$dir/layer/upper" "$dir/layer/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/layer/upper,workdir=$dir/layer/work" "$dir/root"
r="$dir/root"
mount --rbind /dev "$r/dev"
mount --rbind /sys "$r/sys"
mount -t proc proc "$r/proc"
mkdir -p "$r/etc/systemd/system"
# Boot to an empty target: sysinit and basic only, then whatever the test starts.
printf '[Unit]\nDescription=Custos packaging test\nRequires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n' \
    > "$r/etc/systemd/system/custos-sandbox.target"
echo "custos-sandbox" > "$r/etc/hostname"
# Keep the host's /tmp as it is (the test's files, the X sockets): mask the boot-time cleanup
# of /tmp and /tmp/.X11-unix (it would only write whiteouts into the overlay anyway).
mkdir -p "$r/etc/tmpfiles.d"
# Container images ship /usr/sbin/policy-rc.d "exit 101" to block service starts from maintainer
# scripts; a booted machine has none. Removed from the overlay only.
rm -f "$r/usr/sbin/policy-rc.d"
ln -sf /dev/null "$r/etc/tmpfiles.d/tmp.conf"
ln -sf /dev/null "$r/etc/tmpfiles.d/x11.conf"
cd "$r"
mkdir -p .old-root
pivot_root . .old-root
umount -l /.old-root
rmdir /.old-root
export container=custos-sandbox
exec /lib/systemd/systemd --system --unit=custos-sandbox.target --log-target=console --show-status=no
INIT
    chmod 0755 "$dir/init.sh"
    setsid unshare --mount --uts --pid --fork --propagation private "$dir/init.sh" "$dir" "$name" \
        > "$dir/console.log" 2>&1 < /dev/null &
    echo $! > "$dir/unshare.pid"
    # PID 1 of the new namespace is unshare's only child.
    for _ in $(seq 1 100); do
        child="$(cat "/proc/$(cat "$dir/unshare.pid")/task/"*/children 2>/dev/null | tr -s ' ' '\n' | head -n 1)"
        [ -n "$child" ] && break
        sleep 0.1
    done
    [ -n "${child:-}" ] || { echo "systemd-sandbox: unshare did not start (see $dir/console.log)" >&2; exit 1; }
    echo "$child" > "$dir/pid1"
    # Wait for systemd's private socket, then for the boot to settle.
    for _ in $(seq 1 100); do
        nsenter -t "$child" -m -p test -S /run/systemd/private 2>/dev/null && break
        sleep 0.2
    done
    state="$(timeout 60 nsenter -t "$child" -m -p systemctl is-system-running --wait 2>/dev/null || true)"
    case "$state" in
        running|degraded) echo "$child" ;;
        *) echo "systemd-sandbox: boot did not settle (state '$state'; see $dir/console.log)" >&2; exit 1 ;;
    esac
    ;;
run)
    alive || { echo "systemd-sandbox: not running" >&2; exit 1; }
    exec nsenter -t "$(pid1)" -m -p "$@"
    ;;
stop)
    if alive; then
        p="$(pid1)"
        timeout 10 nsenter -t "$p" -m -p systemctl poweroff --no-block >/dev/null 2>&1 || true
        for _ in $(seq 1 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; sleep 0.5; fi
    fi
    if [ -f "$dir/unshare.pid" ]; then
        u="$(cat "$dir/unshare.pid")"
        for _ in $(seq 1 50); do kill -0 "$u" 2>/dev/null || break; sleep 0.1; done
    fi
    # Empty cgroups left by the sandbox's systemd: remove depth first.
    for c in $(cgroup_dirs); do
        find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    rm -f "$dir/pid1"
    ;;
*)
    echo "usage: systemd-sandbox.sh start|run|stop DIR [CMD...]" >&2; exit 2 ;;
esac
