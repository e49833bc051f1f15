#!/bin/bash
# Packaging checks run by `make test`:
#  - builds the .deb (build-deb.sh) and checks its control data and every entry's mode/owner;
#  - lintian (no errors), systemd-analyze verify and security (exposure score) on the unit;
#  - installs, upgrades, removes and purges it in throwaway roots with the real dpkg
#    (dpkg --root=DIR --force-script-chrootless; the maintainer scripts honour DPKG_ROOT), with
#    and without CUSTOS_ENCRYPTION=1 and /etc/custos/install.env;
#  - live: boots a sandboxed systemd (systemd-sandbox.sh) and installs the package with apt,
#    enables, reloads, upgrades, stops and purges the service, which captures from an Xvfb;
#    the service, configured as an administrator would, uploads to a real custos-collector on
#    127.0.0.1 (captures listed there), and so does the packaged agent run as a non-root user
#    with the unit's capability set (setpriv); the packaged collector with admin-listen on serves
#    the packaged dashboard (custos-dashboard) and logs in an admin made with the packaged custos.
# Needs root (dpkg sets owners; namespaces), dpkg-dev, lintian, systemd, python3, Xvfb, xauth,
# x11-utils, xdotool, openssl, util-linux, passwd (useradd, in the sandbox only), curl.
#
# Binaries: AGENT_BIN / CUSTOS_BIN if set; else .build/release/{custos-agent,custos} if both
# exist and are not older than the debug ones (make deb builds them statically linked); else
# the debug build, packaged as a test package (Swift runtime linked dynamically).
# COLLECTOR_BIN (packaged as custos-collector, and the live upload's host peer): if unset, .build/release/custos-collector
# when not older than the debug one, else .build/debug/custos-collector.
# Prints "N passed, N failed" last; exits non-zero on any failure; removes everything it creates
# (temp files, the sandbox and its cgroups, the Xvfb and the collector it started).
set -u
set -o pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PASS=0
FAIL=0
HOST_NAME_BEFORE="$(hostname)"
ok()   { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad()  { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
# check NAME COMMAND...: passes when COMMAND succeeds; its output is shown on failure only.
check() {
    local name="$1"; shift
    local out
    if out="$("$@" 2>&1)"; then ok "$name"; else bad "$name"; printf '%s\n' "$out" | sed 's/^/       /' | tail -n 25; fi
}
finish() {
    echo "$PASS passed, $FAIL failed"
    [ "$FAIL" -eq 0 ]
    exit $?
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/custos-pkgtest.XXXXXX")"
XVFB_PID=""
XVFB_AUTH=""
COLLECTOR_PID=""
cleanup() {
    [ -f "$WORK/sandbox/pid1" ] && "$HERE/systemd-sandbox.sh" stop "$WORK/sandbox"
    [ -n "$COLLECTOR_PID" ] && kill "$COLLECTOR_PID" 2>/dev/null && wait "$COLLECTOR_PID" 2>/dev/null
    [ -n "$XVFB_PID" ] && kill "$XVFB_PID" 2>/dev/null && wait "$XVFB_PID" 2>/dev/null
    [ -n "$XVFB_AUTH" ] && rm -f "$XVFB_AUTH"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ---------------------------------------------------------------------------
missing=""
for tool in dpkg dpkg-deb dpkg-shlibdeps dpkg-query lintian systemd-analyze python3 strip objdump; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then bad "required tools present (missing:$missing; run make deps)"; finish; fi
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        rm -rf "$WORK"; trap - EXIT
        exec sudo -n --preserve-env=AGENT_BIN,CUSTOS_BIN,COLLECTOR_BIN,CI "$0" "$@"
    fi
    bad "running as root (dpkg --root sets file owners; namespaces)"; finish
fi
ok "required tools present"

if [ -z "${AGENT_BIN:-}" ] && [ -z "${CUSTOS_BIN:-}" ]; then
    rel="$REPO/.build/release" dbg="$REPO/.build/debug"
    # Release binaries (make deb) only when both are at least as new as the debug ones.
    if [ -x "$rel/custos-agent" ] && [ -x "$rel/custos" ] \
        && ! [ "$dbg/custos-agent" -nt "$rel/custos-agent" ] && ! [ "$dbg/custos" -nt "$rel/custos" ]; then
        AGENT_BIN="$REPO/.build/release/custos-agent"; CUSTOS_BIN="$REPO/.build/release/custos"
    else
        AGENT_BIN="$REPO/.build/debug/custos-agent"; CUSTOS_BIN="$REPO/.build/debug/custos"
    fi
fi
if [ -z "${COLLECTOR_BIN:-}" ]; then
    COLLECTOR_BIN="$REPO/.build/debug/custos-collector"
    [ -x "$REPO/.build/release/custos-collector" ] && ! [ "$COLLECTOR_BIN" -nt "$REPO/.build/release/custos-collector" ] \
        && COLLECTOR_BIN="$REPO/.build/release/custos-collector"
fi
export AGENT_BIN CUSTOS_BIN COLLECTOR_BIN
export ALLOW_SWIFT_RUNTIME_DEPS=1   # a debug build may be what we have; reported below
export DEB_COMPRESS="-Zgzip -z1"    # speed: the shipped package uses xz (build-deb.sh default)
echo "# agent binary:  $AGENT_BIN"
echo "# custos binary: $CUSTOS_BIN"
echo "# collector:     $COLLECTOR_BIN"
if objdump -p "$AGENT_BIN" 2>/dev/null | grep -c 'NEEDED *libswiftCore' >/dev/null; then
    echo "# note: Swift runtime linked dynamically (debug build): a test package, not for shipping"
fi

SAMPLE="$REPO/config.cfg.sample"
# Version 2 of the shipped config differs, so an upgrade has a conffile change to resolve.
SAMPLE2="$WORK/config.cfg.sample.v2"
{ cat "$SAMPLE"; printf '\n# (0.2.1) a comment added by the upgrade under test\n'; } > "$SAMPLE2"

# --- build -----------------------------------------------------------------------------------
DEB1="$WORK/out/custos-agent_0.2.0_amd64.deb"
DEB2="$WORK/out/custos-agent_0.2.1_amd64.deb"
check "build-deb.sh builds custos-agent_0.2.0_amd64.deb" \
    env VERSION=0.2.0 OUT_DIR="$WORK/out" CONFIG_SAMPLE="$SAMPLE" "$HERE/build-deb.sh"
check "build-deb.sh builds custos-agent_0.2.1_amd64.deb (changed conffile)" \
    env VERSION=0.2.1 OUT_DIR="$WORK/out" CONFIG_SAMPLE="$SAMPLE2" "$HERE/build-deb.sh"
if [ ! -f "$DEB1" ] || [ ! -f "$DEB2" ]; then finish; fi
check "dpkg-deb --build refuses a VERSION that is not a Debian version" \
    bash -c '! env VERSION=v1 OUT_DIR="$1" "$2" >/dev/null 2>&1' _ "$WORK/bad" "$HERE/build-deb.sh"

# Package metadata and the archive's file list: owner root/root and modes as designed.
field() { dpkg-deb -f "$DEB1" "$1"; }
check "control: Package custos-agent, Version 0.2.0, Architecture amd64" \
    test "$(field Package) $(field Version) $(field Architecture)" = "custos-agent 0.2.0 amd64"
check "control: Depends lists libc6 (from dpkg-shlibdeps)" bash -c '[[ "$1" == *libc6* ]]' _ "$(field Depends)"
check "control: conffiles lists exactly /etc/custos/config.cfg" \
    test "$(dpkg-deb --ctrl-tarfile "$DEB1" | tar -xO ./conffiles)" = "/etc/custos/config.cfg"
listing="$(dpkg-deb -c "$DEB1" | awk '{print $1, $2, $6}')"
expect_entry() { grep -qxF -e "$1" <<<"$listing" || { echo "not in archive: $1"; echo "$listing"; return 1; }; }
for e in "-rwxr-xr-x root/root ./usr/bin/custos-agent" \
         "-rw-r--r-- root/root ./lib/systemd/system/custos-agent.service" \
         "drwxr-xr-x root/root ./etc/custos/" \
         "-rw------- root/root ./etc/custos/config.cfg" \
         "drwxr-xr-x root/root ./etc/custos/certs/" \
         "-rw-r--r-- root/root ./usr/share/doc/custos-agent/copyright"; do
    check "archive has $e" expect_entry "$e"
done
check "archive: every entry is owned by root/root" \
    bash -c '! grep -v " root/root " <<<"$1"' _ "$listing"
check "the agent package no longer holds the admin tool (package custos)" bash -c '! grep -q " ./usr/bin/custos$" <<<"$1"' _ "$listing"

# --- the collector and admin packages --------------------------------------------------------
DEBC="$WORK/out/custos-collector_0.2.0_amd64.deb"
DEBA="$WORK/out/custos_0.2.0_amd64.deb"
DEBD="$WORK/out/custos-dashboard_0.2.0_all.deb"
check "build-deb.sh builds custos-collector_0.2.0_amd64.deb" \
    env PACKAGE=custos-collector VERSION=0.2.0 OUT_DIR="$WORK/out" "$HERE/build-deb.sh"
check "build-deb.sh builds custos_0.2.0_amd64.deb (the admin tool)" \
    env PACKAGE=custos VERSION=0.2.0 OUT_DIR="$WORK/out" "$HERE/build-deb.sh"
check "build-deb.sh builds custos-dashboard_0.2.0_all.deb (the dashboard's static files)" \
    env PACKAGE=custos-dashboard VERSION=0.2.0 OUT_DIR="$WORK/out" "$HERE/build-deb.sh"
check "build-deb.sh refuses an unknown PACKAGE" \
    bash -c '! env PACKAGE=custos-server OUT_DIR="$1" "$2" >/dev/null 2>&1' _ "$WORK/bad" "$HERE/build-deb.sh"
if [ ! -f "$DEBC" ] || [ ! -f "$DEBA" ] || [ ! -f "$DEBD" ]; then finish; fi
check "control: custos-collector Depends on a sysusers provider (its postinst makes the user)" \
    bash -c '[[ "$1" == *"systemd | systemd-standalone-sysusers | systemd-sysusers"* ]]' _ "$(dpkg-deb -f "$DEBC" Depends)"
check "control: custos Replaces and Breaks custos-agent (<< 0.2.0), which shipped /usr/bin/custos" \
    test "$(dpkg-deb -f "$DEBA" Replaces) / $(dpkg-deb -f "$DEBA" Breaks)" = "custos-agent (<< 0.2.0) / custos-agent (<< 0.2.0)"
check "control: custos-collector and custos Depend on custos-dashboard (= 0.2.0), which is Architecture all" \
    bash -c '[[ "$1" == *"custos-dashboard (= 0.2.0)"* && "$2" == *"custos-dashboard (= 0.2.0)"* && "$3" == all ]]' \
    _ "$(dpkg-deb -f "$DEBC" Depends)" "$(dpkg-deb -f "$DEBA" Depends)" "$(dpkg-deb -f "$DEBD" Architecture)"
# The dashboard package: exactly the files of dashboard/ the collector serves, 644 root/root.
served_files() { (cd "$1" && find . -type f ! -path '*/.*' \( -name '*.html' -o -name '*.js' -o -name '*.css' -o -name '*.svg' \
    -o -name '*.png' -o -name '*.ico' -o -name '*.woff2' \) | sed 's|^\./||' | LC_ALL=C sort); }
check "dashboard archive: dashboard/'s served files (index.html among them) in /usr/share/custos/dashboard, each 644 root/root" \
    bash -c 'want="$(sed "s|^|-rw-r--r-- root/root ./usr/share/custos/dashboard/|" <<<"$2")"
             got="$(dpkg-deb -c "$1" | awk "\$1 ~ /^-/ {print \$1, \$2, \$6}" | grep " ./usr/share/custos/dashboard/" | LC_ALL=C sort)"
             grep -qx "index.html" <<<"$2" && [ "$got" = "$want" ] || { diff <(echo "$want") <(echo "$got"); false; }' \
    _ "$DEBD" "$(served_files "$REPO/dashboard")"
check "collector package: collector.cfg documents admin-listen, off (commented out), and dashboard-dir=/usr/share/custos/dashboard" \
    bash -c 'c="$(dpkg-deb --fsys-tarfile "$1" | tar -xO ./etc/custos/collector.cfg)"
             grep -q "^#admin-listen=" <<<"$c" && ! grep -Eq "^[[:space:]]*admin-listen[[:space:]]*=" <<<"$c" &&
             grep -qx "#dashboard-dir=/usr/share/custos/dashboard" <<<"$c"' _ "$DEBC"
check "control: custos-collector conffiles lists exactly /etc/custos/collector.cfg" \
    test "$(dpkg-deb --ctrl-tarfile "$DEBC" | tar -xO ./conffiles)" = "/etc/custos/collector.cfg"
clisting="$(dpkg-deb -c "$DEBC" | awk '{print $1, $2, $6}')"
for e in "-rwxr-xr-x root/root ./usr/bin/custos-collector" \
         "-rw-r--r-- root/root ./lib/systemd/system/custos-collector.service" \
         "-rw-r----- root/root ./etc/custos/collector.cfg" \
         "-rw-r--r-- root/root ./usr/lib/sysusers.d/custos-collector.conf" \
         "-rw-r--r-- root/root ./usr/share/man/man8/custos-collector.8.gz"; do
    check "collector archive has $e" bash -c 'grep -qxF -e "$1" <<<"$2" || { echo "$2"; false; }' _ "$e" "$clisting"
done
check "collector package: database= is in the service's state directory" \
    bash -c 'dpkg-deb --fsys-tarfile "$1" | tar -xO ./etc/custos/collector.cfg | grep -qx "database=/var/lib/custos-collector/collector.db"' _ "$DEBC"
check "admin archive has -rwxr-xr-x root/root ./usr/bin/custos and its man page" \
    bash -c 'l="$(dpkg-deb -c "$1" | awk "{print \$1, \$2, \$6}")"; grep -qxF -- "-rwxr-xr-x root/root ./usr/bin/custos" <<<"$l" && grep -q "custos.1.gz" <<<"$l"' _ "$DEBA"
for deb in "$DEBC" "$DEBA" "$DEBD"; do
    name="$(dpkg-deb -f "$deb" Package)"
    lint="$(lintian --tag-display-limit 0 "$deb" 2>&1)"; lint_rc=$?
    echo "# lintian $name (exit $lint_rc):"; printf '%s\n' "$lint" | sed 's/^/#   /'
    check "lintian reports no errors for $name" bash -c '! grep -q "^E:" <<<"$1" && [ "$2" = 0 ]' _ "$lint" "$lint_rc"
done

# --- lintian ---------------------------------------------------------------------------------
lint="$(lintian --tag-display-limit 0 "$DEB1" 2>&1)"; lint_rc=$?
echo "# lintian (exit $lint_rc):"; printf '%s\n' "$lint" | sed 's/^/#   /'
check "lintian reports no errors" bash -c '! grep -q "^E:" <<<"$1" && [ "$2" = 0 ]' _ "$lint" "$lint_rc"

# --- systemd-analyze -------------------------------------------------------------------------
# The unit is checked as installed from the package: a root holding the extracted .deb and the
# host's targets (the unit's default dependencies), so verify also finds ExecStart's binary.
VROOT="$WORK/verify-root"
mkdir -p "$VROOT/lib/systemd/system" "$VROOT/bin"
dpkg-deb -x "$DEB1" "$VROOT"
cp -a /lib/systemd/system/*.target "$VROOT/lib/systemd/system/"
cp /bin/kill "$VROOT/bin/kill"
verify_out="$WORK/verify.out"
check "systemd-analyze verify accepts the unit (no warnings)" \
    bash -c 'systemd-analyze verify --root="$1" custos-agent.service >"$2" 2>&1 && ! [ -s "$2" ] || { cat "$2"; false; }' \
    _ "$VROOT" "$verify_out"
check "systemd-analyze verify rejects a broken copy of the unit (the check can fail)" \
    bash -c 'sed "s/^Type=notify/Type=notifyy/" "$1/lib/systemd/system/custos-agent.service" \
                 > "$1/lib/systemd/system/custos-broken.service"
             out="$(systemd-analyze verify --root="$1" custos-broken.service 2>&1)"
             rm -f "$1/lib/systemd/system/custos-broken.service"; [ -n "$out" ]' _ "$VROOT"
for d in "Type=notify" "ExecStart=/usr/bin/custos-agent --config /etc/custos/config.cfg" \
         "ExecReload=/bin/kill -HUP \$MAINPID" "Restart=on-failure" "StateDirectory=custos" \
         "StateDirectoryMode=0700" "NoNewPrivileges=yes" "ProtectSystem=strict" \
         "ProtectHome=read-only" "MemoryDenyWriteExecute=yes" "LockPersonality=yes" \
         "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK" \
         "SystemCallFilter=@system-service" "BindReadOnlyPaths=-/tmp/.X11-unix"; do
    check "unit sets $d" grep -qxF "$d" "$HERE/custos-agent.service"
done
security="$(systemd-analyze security --offline=yes --root="$VROOT" --no-pager custos-agent.service 2>&1)"
score_line="$(grep -o 'Overall exposure level for custos-agent.service: .*' <<<"$security")"
echo "# systemd-analyze security: ${score_line:-<no score>}"
score="$(sed -n 's/.*: \([0-9.]*\) .*/\1/p' <<<"$score_line")"
check "systemd-analyze security exposure ≤ 3.0 (README documents it)" \
    python3 -c 'import sys; s=sys.argv[1]; sys.exit(0 if s and float(s) <= 3.0 else 1)' "$score"
check "README states the measured exposure score $score" grep -qF "exposure level $score" "$HERE/README.md"
CROOT="$WORK/verify-root-collector"
mkdir -p "$CROOT/lib/systemd/system" "$CROOT/bin"
dpkg-deb -x "$DEBC" "$CROOT"
cp -a /lib/systemd/system/*.target "$CROOT/lib/systemd/system/"
cp /bin/kill "$CROOT/bin/kill"
check "systemd-analyze verify accepts the collector's unit (no warnings)" \
    bash -c 'systemd-analyze verify --root="$1" custos-collector.service >"$2" 2>&1 && ! [ -s "$2" ] || { cat "$2"; false; }' \
    _ "$CROOT" "$WORK/verify-collector.out"
for d in "User=custos-collector" "StateDirectory=custos-collector" "StateDirectoryMode=0700" "CapabilityBoundingSet=" \
         "NoNewPrivileges=yes" "ProtectSystem=strict" "ProtectHome=yes" "PrivateUsers=yes" "MemoryDenyWriteExecute=yes" \
         "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" "SystemCallFilter=@system-service"; do
    check "collector unit sets $d" grep -qxF "$d" "$HERE/custos-collector.service"
done
csecurity="$(systemd-analyze security --offline=yes --root="$CROOT" --no-pager custos-collector.service 2>&1)"
cscore_line="$(grep -o 'Overall exposure level for custos-collector.service: .*' <<<"$csecurity")"
echo "# systemd-analyze security (collector): ${cscore_line:-<no score>}"
cscore="$(sed -n 's/.*: \([0-9.]*\) .*/\1/p' <<<"$cscore_line")"
check "systemd-analyze security exposure of the collector ≤ 2.5 (issue 14)" \
    python3 -c 'import sys; s=sys.argv[1]; sys.exit(0 if s and float(s) <= 2.5 else 1)' "$cscore"
check "README states the collector's measured exposure score $cscore" grep -qF "collector: exposure level $cscore" "$HERE/README.md"

# --- throwaway roots -------------------------------------------------------------------------
# A root with an empty dpkg database plus the status entries of exactly the packages the .deb
# Depends on (taken from this machine), so dpkg's own dependency check passes for real.
dep_pkgs="$(for d in "$DEB1" "$DEBC" "$DEBA"; do dpkg-deb -f "$d" Depends; echo ,; done \
    | tr ',' '\n' | sed 's/(.*//; s/|.*//; s/[[:space:]]//g' | grep -v '^$' | sort -u)"
new_root() {
    local r="$WORK/root-$1"
    mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/var/lib/dpkg/triggers"
    # Present on every systemd machine (owned by systemd): deb-systemd-helper's state lives there.
    mkdir -p "$r/etc/systemd/system" "$r/var/lib/systemd"
    : > "$r/var/lib/dpkg/status"
    local p
    for p in $dep_pkgs; do
        dpkg-query -s "$p" >> "$r/var/lib/dpkg/status" 2>/dev/null && echo >> "$r/var/lib/dpkg/status"
        local list; list="$(ls /var/lib/dpkg/info/ | grep -E "^${p//+/\\+}(:[a-z0-9]+)?\.list$" | head -n 1)"
        [ -n "$list" ] && : > "$r/var/lib/dpkg/info/$list"
    done
    echo "$r"
}
# Runs dpkg against root $1 with the remaining arguments; stdin is not a terminal.
DPKG() { local r="$1"; shift; dpkg --root="$r" --force-script-chrootless "$@" </dev/null; }
snapshot() { (cd "$1" && find . -path ./var/lib/dpkg -prune -o -print | LC_ALL=C sort); }
# mode_of ROOT PATH -> "mode user:group"
mode_of() { stat -c '%a %U:%G' "$1$2"; }
active_lines() { grep -Ev '^[[:space:]]*([#;]|$)' "$1"; }
status_of() { dpkg-query --root="$1" -W -f='${Status} ${Version}' custos-agent 2>/dev/null; }

expect_layout() {
    local r="$1"
    check "[$2] /usr/bin/custos-agent 755 root:root" test "$(mode_of "$r" /usr/bin/custos-agent)" = "755 root:root"
    check "[$2] unit 644 root:root" test "$(mode_of "$r" /lib/systemd/system/custos-agent.service)" = "644 root:root"
    check "[$2] /etc/custos 755 root:root" test "$(mode_of "$r" /etc/custos)" = "755 root:root"
    check "[$2] /etc/custos/config.cfg 600 root:root" test "$(mode_of "$r" /etc/custos/config.cfg)" = "600 root:root"
    check "[$2] /etc/custos/certs 755 root:root" test "$(mode_of "$r" /etc/custos/certs)" = "755 root:root"
    check "[$2] dpkg status: install ok installed" bash -c '[[ "$1" == "install ok installed "* ]]' _ "$(status_of "$r")"
    check "[$2] config.cfg registered as a conffile" \
        bash -c 'dpkg-query --root="$1" -W -f="\${Conffiles}" custos-agent | grep -q "^ /etc/custos/config.cfg [0-9a-f]\{32\}$"' _ "$r"
    check "[$2] installed binary runs (custos-agent --help) under prctl(PR_SET_MDWE) like MemoryDenyWriteExecute=yes" \
        python3 -c '
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:          # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("prctl(PR_SET_MDWE): " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])' "$r/usr/bin/custos-agent" --help
}

# 1. Install without the flag: the config is the shipped sample, byte for byte.
R="$(new_root plain)"; before="$(snapshot "$R")"
check "[plain] dpkg -i 0.2.0 without CUSTOS_ENCRYPTION" env -u CUSTOS_ENCRYPTION dpkg --root="$R" --force-script-chrootless -i "$DEB1"
expect_layout "$R" plain
check "[plain] config.cfg equals config.cfg.sample" cmp "$R/etc/custos/config.cfg" "$SAMPLE"
check "[plain] service not enabled on install (no wants symlink)" \
    test ! -e "$R/etc/systemd/system/multi-user.target.wants/custos-agent.service"
# Upgrade of an unmodified conffile: dpkg installs the new version silently.
check "[plain] upgrade to 0.2.1 (conffile unmodified)" DPKG "$R" -i "$DEB2"
check "[plain] unmodified conffile replaced by 0.2.1's" cmp "$R/etc/custos/config.cfg" "$SAMPLE2"
check "[plain] status after upgrade: installed 0.2.1" test "$(status_of "$R")" = "install ok installed 0.2.1"
check "[plain] purge" DPKG "$R" --purge custos-agent
check "[plain] purge leaves nothing behind" test "$(snapshot "$R")" = "$before"
check "[plain] package unknown to dpkg after purge" bash -c '[ -z "$(dpkg-query --root="$1" -W custos-agent 2>/dev/null)" ]' _ "$R"

# 2. Install with CUSTOS_ENCRYPTION=1: exactly one enable-encryption line, set to 1; the rest
#    of the config unchanged.
R="$(new_root flag)"; before="$(snapshot "$R")"
check "[flag] CUSTOS_ENCRYPTION=1 dpkg -i 0.2.0" env CUSTOS_ENCRYPTION=1 dpkg --root="$R" --force-script-chrootless -i "$DEB1"
expect_layout "$R" flag
check "[flag] config has exactly one enable-encryption line, =1" \
    test "$(grep -E '^[[:space:]]*enable-encryption[[:space:]]*=' "$R/etc/custos/config.cfg")" = "enable-encryption=1"
check "[flag] every other line as shipped" \
    diff <(grep -v '^enable-encryption=' "$R/etc/custos/config.cfg") <(grep -v '^enable-encryption=' "$SAMPLE")
# The admin edits the config; an upgrade (with CUSTOS_ENCRYPTION=0 in the environment, which
# must not matter after the first install) keeps the edit and puts the new one aside.
printf 'screen-interval-ms=2000\n' >> "$R/etc/custos/config.cfg"
sed -i '0,/^screen-interval-ms=1000$/{/^screen-interval-ms=1000$/d}' "$R/etc/custos/config.cfg"
cp "$R/etc/custos/config.cfg" "$WORK/edited.cfg"
mkdir -p "$R/var/lib/custos" && echo sealed > "$R/var/lib/custos/spool.sqlite"
check "[flag] upgrade to 0.2.1 with --force-confdef --force-confold (apt -o Dpkg::Options)" \
    env CUSTOS_ENCRYPTION=0 dpkg --root="$R" --force-script-chrootless --force-confdef --force-confold -i "$DEB2" </dev/null
check "[flag] upgrade keeps the modified conffile" cmp "$R/etc/custos/config.cfg" "$WORK/edited.cfg"
check "[flag] upgrade leaves the new conffile as config.cfg.dpkg-dist" cmp "$R/etc/custos/config.cfg.dpkg-dist" "$SAMPLE2"
check "[flag] kept conffile still mode 600 root:root" test "$(mode_of "$R" /etc/custos/config.cfg)" = "600 root:root"
check "[flag] status after upgrade: installed 0.2.1" test "$(status_of "$R")" = "install ok installed 0.2.1"
# Remove keeps config and spool; reinstalling does not re-apply the flag.
check "[flag] remove" DPKG "$R" --remove custos-agent
check "[flag] remove deletes the binaries and the unit" \
    bash -c '! [ -e "$1/usr/bin/custos-agent" ] && ! [ -e "$1/lib/systemd/system/custos-agent.service" ]' _ "$R"
check "[flag] remove keeps config.cfg and the spool" \
    bash -c 'cmp -s "$1/etc/custos/config.cfg" "$2" && [ -f "$1/var/lib/custos/spool.sqlite" ]' _ "$R" "$WORK/edited.cfg"
check "[flag] status after remove: deinstall ok config-files" \
    bash -c '[[ "$1" == "deinstall ok config-files "* ]]' _ "$(status_of "$R")"
check "[flag] reinstall after remove (CUSTOS_ENCRYPTION=0) keeps the kept config" \
    bash -c 'env CUSTOS_ENCRYPTION=0 dpkg --root="$1" --force-script-chrootless --force-confdef --force-confold -i "$2" </dev/null && cmp "$1/etc/custos/config.cfg" "$3"' \
    _ "$R" "$DEB2" "$WORK/edited.cfg"
# Purge removes everything, including what the admin and the agent added.
echo "-----BEGIN PUBLIC KEY-----" > "$R/etc/custos/certs/kek.pem"
echo "CUSTOS_ENCRYPTION=1" > "$R/etc/custos/install.env"
check "[flag] purge" DPKG "$R" --purge custos-agent
check "[flag] purge leaves nothing behind (config, .dpkg-dist, certs, spool, systemd state)" \
    bash -c 'diff <(echo "$1") <(echo "$2")' _ "$before" "$(snapshot "$R")"

# 3. The provisioning fallback: /etc/custos/install.env, overridden by the environment.
R="$(new_root envfile)"
mkdir -p "$R/etc/custos" && printf '# written by provisioning\nCUSTOS_ENCRYPTION=1\n' > "$R/etc/custos/install.env"
check "[envfile] dpkg -i with /etc/custos/install.env CUSTOS_ENCRYPTION=1" env -u CUSTOS_ENCRYPTION dpkg --root="$R" --force-script-chrootless -i "$DEB1"
check "[envfile] config has enable-encryption=1" \
    test "$(active_lines "$R/etc/custos/config.cfg" | grep enable-encryption)" = "enable-encryption=1"
check "[envfile] purge" DPKG "$R" --purge custos-agent
R="$(new_root envwins)"
mkdir -p "$R/etc/custos" && printf 'CUSTOS_ENCRYPTION=1\n' > "$R/etc/custos/install.env"
check "[envwins] CUSTOS_ENCRYPTION=0 in the environment beats install.env" \
    bash -c 'env CUSTOS_ENCRYPTION=0 dpkg --root="$1" --force-script-chrootless -i "$2" </dev/null && cmp "$1/etc/custos/config.cfg" "$3"' \
    _ "$R" "$DEB1" "$SAMPLE"
check "[envwins] purge" DPKG "$R" --purge custos-agent

# 4. The collector, the admin tool and the dashboard beside the agent: no file in two packages; the
#    collector's user is made by its postinst (systemd-sysusers --root), the config is given to
#    its group; purge keeps the database (the organisation's recordings).
R="$(new_root collector)"
check "[collector] dpkg -i custos-agent, custos-collector, custos and custos-dashboard 0.2.0 together" DPKG "$R" -i "$DEB1" "$DEBC" "$DEBA" "$DEBD"
check "[collector] the dashboard is in /usr/share/custos/dashboard (collector.cfg's default dashboard-dir), as in dashboard/" \
    bash -c '[ "$(cd "$2" && find . -type f | sed "s|^\./||" | LC_ALL=C sort)" = "$3" ] &&
             while read -r f; do cmp "$1/$f" "$2/$f" || exit 1; done <<<"$3"' \
    _ "$REPO/dashboard" "$R/usr/share/custos/dashboard" "$(served_files "$REPO/dashboard")"
check "[collector] the postinst made the system user custos-collector (nologin, home its state directory)" \
    bash -c 'grep -Eq "^custos-collector:x:[0-9]+:[0-9]+:Custos collector:/var/lib/custos-collector:/usr/sbin/nologin$" "$1/etc/passwd" || cat "$1/etc/passwd"' _ "$R"
cgid="$(awk -F: '$1 == "custos-collector" { print $3 }' "$R/etc/group" 2>/dev/null)"
check "[collector] /etc/custos/collector.cfg is root:custos-collector 0640 (gid ${cgid:-?})" \
    test "$(stat -c '%a %u:%g' "$R/etc/custos/collector.cfg")" = "640 0:${cgid:-x}"
check "[collector] service not enabled on install" test ! -e "$R/etc/systemd/system/multi-user.target.wants/custos-collector.service"
check "[collector] the installed admin tool runs (custos --help)" "$R/usr/bin/custos" --help
check "[collector] the installed collector runs (custos-collector --help)" "$R/usr/bin/custos-collector" --help
mkdir -p "$R/var/lib/custos-collector" && echo sealed > "$R/var/lib/custos-collector/collector.db"
check "[collector] purge custos-collector" DPKG "$R" --purge custos-collector
check "[collector] purge removed the unit, the binary and the conffile, kept the database" \
    bash -c '! [ -e "$1/lib/systemd/system/custos-collector.service" ] && ! [ -e "$1/usr/bin/custos-collector" ] &&
             ! [ -e "$1/etc/custos/collector.cfg" ] && [ -f "$1/var/lib/custos-collector/collector.db" ]' _ "$R"
check "[collector] the agent, the admin tool and the dashboard (custos dashboard needs it) are untouched" \
    bash -c '[ -x "$1/usr/bin/custos-agent" ] && [ -x "$1/usr/bin/custos" ] && [ -f "$1/etc/custos/config.cfg" ] &&
             [ -f "$1/usr/share/custos/dashboard/index.html" ]' _ "$R"

# --- live: the package under a real systemd ------------------------------------------------
# systemd-sandbox.sh boots the host's systemd as PID 1 of new namespaces on an overlay of /, so
# dpkg runs the maintainer scripts' systemd branches and the service runs with the unit's full
# sandbox (seccomp, namespaces, MemoryDenyWriteExecute, StateDirectory) against a real Xvfb.
SBX="$WORK/sandbox"
in_sbx() { "$HERE/systemd-sandbox.sh" run "$SBX" "$@"; }
sbx_prop() { in_sbx systemctl show -P "$1" custos-agent.service 2>/dev/null; }
live_ok=1
for tool in unshare nsenter setpriv Xvfb xauth xdpyinfo mcookie openssl xdotool useradd curl; do
    command -v "$tool" >/dev/null 2>&1 || { live_ok=0; echo "# live systemd checks: $tool missing"; }
done
[ -x "$COLLECTOR_BIN" ] || { live_ok=0; echo "# live systemd checks: collector $COLLECTOR_BIN missing (swift build)"; }
if [ "$live_ok" = 1 ]; then
    # The X server runs on the host, started before the sandbox so its socket is in the overlay.
    # It demands a MIT-MAGIC-COOKIE-1 (a wildcard entry: any display number, any address). It
    # runs as the desktop user (uid 4242, made in the sandbox as custos-desk), so its socket is
    # theirs and display=auto finds their session (setpriv execs it: the pid is the server's).
    ( umask 077; echo "ffff 0000  0000  0012 4d49542d4d414749432d434f4f4b49452d31 0010 $(mcookie)" \
        | xauth -q -f "$WORK/xauthority" nmerge - 2>/dev/null )
    XVFB_AUTH="$(mktemp /tmp/custos-pkgtest-xauth.XXXXXX)"
    cp "$WORK/xauthority" "$XVFB_AUTH" && chown 4242:4242 "$XVFB_AUTH"
    exec 3>"$WORK/xdisplay"
    setpriv --reuid=4242 --regid=4242 --clear-groups -- \
        Xvfb -displayfd 3 -nolisten tcp -auth "$XVFB_AUTH" -screen 0 640x480x24 >"$WORK/xvfb.log" 2>&1 &
    XVFB_PID=$!
    exec 3>&-
    for _ in $(seq 1 100); do [ -s "$WORK/xdisplay" ] && break; sleep 0.1; done
    DISPLAY_NUM="$(tr -d '[:space:]' < "$WORK/xdisplay")"
fi
if [ "$live_ok" = 1 ] && ! "$HERE/systemd-sandbox.sh" start "$SBX" >"$WORK/sbx-start.log" 2>&1; then
    live_ok=0; echo "# live systemd checks: sandbox did not boot:"; sed 's/^/#   /' "$WORK/sbx-start.log" | tail -n 20
fi
if [ "$live_ok" = 0 ]; then
    if [ "${CI:-}" = true ]; then bad "live systemd sandbox available (required under CI=true)"
    else echo "# SKIPPED live systemd checks (not under CI=true)"; fi
else
    ok "systemd boots as PID 1 of a sandbox (overlay root, new PID and mount namespaces)"
    check "Xvfb started (display :$DISPLAY_NUM)" test -n "$DISPLAY_NUM"
    check "control: Xvfb :$DISPLAY_NUM accepts a client with the cookie, refuses one without" \
        bash -c 'DISPLAY=":$1" XAUTHORITY="$2" xdpyinfo >/dev/null && ! DISPLAY=":$1" XAUTHORITY=/dev/null xdpyinfo >/dev/null 2>&1' \
        _ "$DISPLAY_NUM" "$WORK/xauthority"
    openssl genrsa -out "$WORK/kek-keypair.pem" 2048 2>/dev/null
    openssl rsa -in "$WORK/kek-keypair.pem" -pubout -out "$WORK/kek.pem" 2>/dev/null

    # The documented command: apt passes its environment down to dpkg and the postinst.
    check "[systemd] CUSTOS_ENCRYPTION=1 apt-get install ./custos-agent_0.2.0_amd64.deb on a systemd machine" \
        in_sbx env CUSTOS_ENCRYPTION=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$DEB1"
    check "[systemd] the flag reached the postinst through apt: enable-encryption=1" \
        test "$(in_sbx grep '^enable-encryption=' /etc/custos/config.cfg)" = "enable-encryption=1"
    check "[systemd] unit known to systemd after install, not enabled, not started" \
        test "$(sbx_prop UnitFileState) $(sbx_prop ActiveState)" = "disabled inactive"
    # The desktop user (uid 4242, whose X server runs on the host) and their cookie: 0600 in a
    # 0700 home, as on a real desktop.
    in_sbx useradd -u 4242 -M -d /home/custos-desk -s /usr/sbin/nologin custos-desk
    in_sbx install -d -m 0700 -o 4242 -g 4242 /home/custos-desk
    in_sbx install -m 0600 -o 4242 -g 4242 "$WORK/xauthority" /home/custos-desk/.Xauthority
    check "[systemd] control: root without CAP_DAC_READ_SEARCH/CAP_DAC_OVERRIDE cannot read that cookie" \
        in_sbx sh -c '! setpriv --bounding-set -dac_read_search,-dac_override -- cat /home/custos-desk/.Xauthority >/dev/null 2>&1'
    # The endpoint's id at the collector is set before the first start, as an administrator
    # would: the spool's records carry it, and the collector refuses those of another id.
    # display= and xauthority= keep their defaults: display=auto finds the desktop user's
    # session from its socket and the cookie in their home.
    UNIT_AGENT=pkgtest-unit
    check "[systemd] the packaged config records every graphical session (display=auto, no xauthority=)" \
        test "$(in_sbx grep -E '^#?(display|xauthority)=' /etc/custos/config.cfg | tr '\n' ' ')" = "display=auto #xauthority= "
    in_sbx sed -i -e "s|^#agent-id=\$|agent-id=$UNIT_AGENT|" \
        -e 's|^screen-interval-ms=1000$|screen-interval-ms=500|' /etc/custos/config.cfg
    in_sbx install -m 0644 "$WORK/kek.pem" /etc/custos/certs/kek.pem
    check "[systemd] systemctl enable --now custos-agent (Type=notify: returns after READY=1)" \
        in_sbx timeout 60 systemctl enable --now custos-agent.service
    check "[systemd] service active/running, enabled" \
        test "$(sbx_prop ActiveState)/$(sbx_prop SubState) $(sbx_prop UnitFileState)" = "active/running enabled"
    check "[systemd] sd_notify STATUS says it is capturing (KEK usable)" \
        test "$(sbx_prop StatusText)" = "capturing"
    check "[systemd] StateDirectory /var/lib/custos is 700 root:root" \
        test "$(in_sbx stat -c '%a %U:%G' /var/lib/custos)" = "700 root:root"
    frames=0
    for _ in $(seq 1 40); do
        frames="$(in_sbx custos-agent status --config /etc/custos/config.cfg 2>/dev/null \
            | sed -n 's/^spool by kind:.*screen \([0-9]*\) .*/\1/p')"
        [ "${frames:-0}" -gt 0 ] 2>/dev/null && break
        sleep 0.5
    done
    check "[systemd] sandboxed agent reaches the X display (cookie read through ProtectHome=read-only and CAP_DAC_READ_SEARCH) and spools sealed frames ($frames)" \
        test "${frames:-0}" -gt 0 2>/dev/null
    check "[systemd] display=auto found the desktop user's session (its socket's owner) and their cookie file in their home" \
        bash -c '"$1" run "$2" journalctl --no-pager -o cat -u custos-agent.service | grep "recording session" |
                 grep "capture.display=:$3" | grep "capture.user=custos-desk" | grep -q "capture.xauthority=/home/custos-desk/.Xauthority"' \
        _ "$HERE/systemd-sandbox.sh" "$SBX" "$DISPLAY_NUM"
    pid_before="$(sbx_prop MainPID)"
    # Look into the service's own mount namespace: the X socket is there, the host's /tmp is not,
    # and /etc is read-only.
    check "[systemd] service sees /tmp/.X11-unix/X$DISPLAY_NUM (BindReadOnlyPaths) but not the host's /tmp" \
        in_sbx nsenter -t "$pid_before" -m sh -c "test -S /tmp/.X11-unix/X$DISPLAY_NUM && ! test -e '$WORK'"
    check "[systemd] service's /etc is read-only (ProtectSystem=strict)" \
        in_sbx nsenter -t "$pid_before" -m sh -c '! touch /etc/custos/probe 2>/dev/null'
    check "[systemd] systemctl reload (SIGHUP) keeps the same process running" \
        bash -c '"$1" run "$2" timeout 20 systemctl reload custos-agent.service && sleep 1 &&
                 [ "$("$1" run "$2" systemctl show -P MainPID custos-agent.service)" = "$3" ] &&
                 [ "$("$1" run "$2" systemctl show -P ActiveState custos-agent.service)" = active ]' \
        _ "$HERE/systemd-sandbox.sh" "$SBX" "$pid_before"
    check "[systemd] Restart=on-failure: after SIGKILL systemd starts it again (NRestarts=1, new PID)" \
        bash -c 'S="$1"; D="$2"; old="$3"
                 "$S" run "$D" systemctl kill -s KILL custos-agent.service || exit 1
                 for _ in $(seq 1 100); do
                     [ "$("$S" run "$D" systemctl show -P NRestarts custos-agent.service)" = 1 ] &&
                     [ "$("$S" run "$D" systemctl show -P ActiveState custos-agent.service)" = active ] && break
                     sleep 0.2
                 done
                 "$S" run "$D" systemctl show -p NRestarts -p ActiveState -p MainPID custos-agent.service
                 [ "$("$S" run "$D" systemctl show -P NRestarts custos-agent.service)" = 1 ] &&
                 [ "$("$S" run "$D" systemctl show -P ActiveState custos-agent.service)" = active ] &&
                 [ "$("$S" run "$D" systemctl show -P MainPID custos-agent.service)" != "$old" ]' \
        _ "$HERE/systemd-sandbox.sh" "$SBX" "$pid_before"

    # --- upload: the service, configured as an administrator would, reaches a real collector ---
    # The collector runs on the host (the sandbox shares its network namespace) with a
    # self-signed certificate for 127.0.0.1 that the agent pins (docs/API.md), the KEK of
    # /etc/custos/certs/kek.pem registered and one agent id per agent under test.
    COLL="$WORK/collector"
    mkdir -p "$COLL"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$COLL/collector.key" -out "$COLL/collector.crt" >/dev/null 2>&1
    PIN="sha256/$(openssl x509 -in "$COLL/collector.crt" -pubkey -noout | openssl pkey -pubin -outform DER \
        | openssl dgst -sha256 -binary | base64)"
    printf 'listen=127.0.0.1:0\ntls-cert=%s\ntls-key=%s\ndatabase=collector.db\n' \
        "$COLL/collector.crt" "$COLL/collector.key" > "$COLL/collector.cfg"
    NONROOT_AGENT=pkgtest-nonroot
    UNIT_TOKEN="$("$CUSTOS_BIN" agents add --db "$COLL/collector.db" --id "$UNIT_AGENT" 2>>"$COLL/admin.log")"
    NONROOT_TOKEN="$("$CUSTOS_BIN" agents add --db "$COLL/collector.db" --id "$NONROOT_AGENT" 2>>"$COLL/admin.log")"
    check "custos agents add: a token for $UNIT_AGENT and for $NONROOT_AGENT" \
        bash -c '[ -n "$1" ] && [ -n "$2" ] || { cat "$3"; false; }' _ "$UNIT_TOKEN" "$NONROOT_TOKEN" "$COLL/admin.log"
    check "custos keys register: the agents' KEK (kek.pem) is active at the collector" \
        "$CUSTOS_BIN" keys register --db "$COLL/collector.db" --public "$WORK/kek.pem" --private "$WORK/kek-keypair.pem"
    "$COLLECTOR_BIN" --config "$COLL/collector.cfg" >/dev/null 2>"$COLL/collector.log" &
    COLLECTOR_PID=$!
    PORT=""
    for _ in $(seq 1 100); do
        PORT="$(sed -n 's/.*collector\.port=\([0-9][0-9]*\).*/\1/p' "$COLL/collector.log" | head -n 1)"
        [ -n "$PORT" ] && break
        kill -0 "$COLLECTOR_PID" 2>/dev/null || break
        sleep 0.1
    done
    check "custos-collector listens on 127.0.0.1:${PORT:-?} (HTTPS, pinned self-signed certificate)" \
        bash -c '[ -n "$1" ] || { cat "$2"; false; }' _ "$PORT" "$COLL/collector.log"
    # captures_at AGENT KIND -> how many captures the collector holds for AGENT of KIND.
    captures_at() {
        "$CUSTOS_BIN" captures list --db "$COLL/collector.db" --agent "$1" --kind "$2" 2>/dev/null \
            | sed -n 's/^\([0-9][0-9]*\) captures\{0,1\}, .*/\1/p'
    }
    # type_keys: keystrokes on the X display, as the desktop user would type them.
    type_keys() { DISPLAY=":$DISPLAY_NUM" XAUTHORITY="$WORK/xauthority" xdotool type --delay 20 "custos upload" 2>/dev/null; }
    spooled_before="$(in_sbx custos-agent status --config /etc/custos/config.cfg 2>/dev/null \
        | sed -n 's/^spool by kind:.*screen \([0-9]*\) .*/\1/p')"

    in_sbx sed -i -e "s|^#agent-token=\$|agent-token=$UNIT_TOKEN|" \
        -e "s|^#server-url=\$|server-url=https://127.0.0.1:$PORT|" -e "s|^#server-pin=\$|server-pin=$PIN|" \
        -e 's|^keystroke-idle-ms=2000$|keystroke-idle-ms=300|' /etc/custos/config.cfg
    # --check-config as the service would run it: a transient unit with the [Service] settings
    # of the installed unit (capability bounding set, user, namespaces, seccomp filter, ...).
    # TODO(issue 12): once --check-config makes a real TLS connection (handshake and pin check),
    # also require its server line to say the collector was reached.
    unit_props=()
    while IFS= read -r line; do unit_props+=(-p "$line"); done < <(in_sbx awk '
        /^\[Service\]/ { s = 1; next } /^\[/ { s = 0 }
        s && /^[A-Za-z]/ && !/^(Type|NotifyAccess|ExecStart|ExecReload|Restart|RestartSec|TimeoutStopSec)=/' \
        /lib/systemd/system/custos-agent.service)
    cc_out="$(in_sbx systemd-run --wait --pipe --quiet --collect "${unit_props[@]}" \
        /usr/bin/custos-agent --config /etc/custos/config.cfg --check-config 2>&1)"; cc_rc=$?
    echo "# custos-agent --check-config under the unit's settings (exit $cc_rc):"
    printf '%s\n' "$cc_out" | sed 's/^/#   /'
    check "[systemd] custos-agent --check-config under the unit's settings passes (exit 0, no FAIL)" \
        bash -c '[ "$1" = 0 ] && ! grep -q "^FAIL" <<<"$2"' _ "$cc_rc" "$cc_out"
    check "[systemd] systemctl restart with server-url, server-pin, agent-id, agent-token set" \
        in_sbx timeout 60 systemctl restart custos-agent.service
    invocation="$(sbx_prop InvocationID)"
    screens=0 keys=0 spooled="" last_upload=""
    for i in $(seq 1 60); do
        [ $((i % 10)) = 1 ] && type_keys
        screens="$(captures_at "$UNIT_AGENT" screen)" keys="$(captures_at "$UNIT_AGENT" keystrokes)"
        st="$(in_sbx custos-agent status --config /etc/custos/config.cfg 2>/dev/null)"
        spooled="$(sed -n 's/^spooled: *\([0-9]*\) records.*/\1/p' <<<"$st")"
        last_upload="$(sed -n 's/^last upload: *//p' <<<"$st")"
        [ "${screens:-0}" -ge "${spooled_before:-1}" ] && [ "${keys:-0}" -gt 0 ] && [ "$spooled" = 0 ] \
            && [ -n "$last_upload" ] && [ "$last_upload" != - ] && break
        sleep 0.5
    done
    check "[systemd] the service's screen frames arrive at the collector, the $spooled_before spooled before the restart included (captures list --agent $UNIT_AGENT: ${screens:-0})" \
        test "${screens:-0}" -ge "${spooled_before:-1}" -a "${screens:-0}" -gt 0
    check "[systemd] the service's keystroke chunks arrive at the collector (${keys:-0})" test "${keys:-0}" -gt 0
    check "[systemd] custos-agent status: spool drained (spooled: ${spooled:-?} records), last upload set (${last_upload:-?})" \
        bash -c '[ "$1" = 0 ] && [ -n "$2" ] && [ "$2" != - ]' _ "$spooled" "$last_upload"
    # connect_errors < LOG: the lines that report a refused socket call, a failed connection or
    # upload, refused records, or any other error. The one expected errno=13 line is libdispatch's
    # thread priority (CAP_SYS_NICE; README).
    connect_errors() {
        grep -v "Failed to set thread priority" | grep -Ei \
            "EACCES|errno=13|permission denied|cannot connect|upload failed|cannot open another upload connection|refused|(^|>)(error|critical):"
    }
    unit_errors="$(in_sbx journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID="$invocation" 2>&1 | connect_errors)"
    check "[systemd] the service's journal since the restart: no EACCES, no failed connect or upload, no error" \
        bash -c '[ -z "$1" ] || { echo "$1"; false; }' _ "$unit_errors"

    # --- upload: the packaged agent as a non-root user with the unit's capability set ---------
    # setpriv drops to a system user made in the sandbox (the host's user database is untouched)
    # and to the unit's CapabilityBoundingSet, without systemd: what the issue's reproduction did.
    NR_DIR=/var/tmp/custos-nonroot
    in_sbx useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin custos-nonroot
    in_sbx install -d -m 0700 -o custos-nonroot -g custos-nonroot "$NR_DIR" "$NR_DIR/spool"
    in_sbx install -m 0600 -o custos-nonroot -g custos-nonroot "$WORK/xauthority" "$NR_DIR/xauthority"
    in_sbx install -m 0644 "$WORK/kek.pem" "$NR_DIR/kek.pem"
    printf '%s\n' enable-encryption=1 kek-file=kek.pem "agent-id=$NONROOT_AGENT" "agent-token=$NONROOT_TOKEN" \
        "server-url=https://127.0.0.1:$PORT" "server-pin=$PIN" "display=:$DISPLAY_NUM" "xauthority=$NR_DIR/xauthority" \
        screen-interval-ms=500 keystroke-idle-ms=300 "spool-dir=$NR_DIR/spool" > "$WORK/nonroot.cfg"
    in_sbx install -m 0600 -o custos-nonroot -g custos-nonroot "$WORK/nonroot.cfg" "$NR_DIR/config.cfg"
    rm -f "$WORK/nonroot.cfg"
    nonroot_as=(setpriv --reuid=custos-nonroot --regid=custos-nonroot --init-groups
                --bounding-set=-all,+dac_read_search,+ipc_lock --inh-caps=-all --)
    # The shell's pid (in the sandbox) becomes the agent's: setpriv and the agent replace it.
    in_sbx sh -c 'echo $$ > /run/custos-nonroot.pid; exec "$@"' _ "${nonroot_as[@]}" \
        custos-agent --config "$NR_DIR/config.cfg" >"$WORK/nonroot-agent.log" 2>&1 &
    nonroot_nsenter=$!
    screens=0 keys=0
    for i in $(seq 1 60); do
        [ $((i % 10)) = 3 ] && type_keys
        screens="$(captures_at "$NONROOT_AGENT" screen)" keys="$(captures_at "$NONROOT_AGENT" keystrokes)"
        [ "${screens:-0}" -gt 0 ] && [ "${keys:-0}" -gt 0 ] && break
        kill -0 "$nonroot_nsenter" 2>/dev/null || break
        sleep 0.5
    done
    check "[non-root] the packaged agent as custos-nonroot (bounding set dac_read_search,ipc_lock) uploads screen frames (${screens:-0}) and keystroke chunks (${keys:-0})" \
        bash -c '[ "${1:-0}" -gt 0 ] && [ "${2:-0}" -gt 0 ] || { tail -n 20 "$3"; false; }' _ "$screens" "$keys" "$WORK/nonroot-agent.log"
    check "[non-root] it ran as uid custos-nonroot with no effective capability" \
        bash -c 'p="$("$1" run "$2" cat /run/custos-nonroot.pid)" &&
                 "$1" run "$2" grep -qE "^Uid:[[:space:]]+$3[[:space:]]" "/proc/$p/status" &&
                 "$1" run "$2" grep -qx "CapEff:[[:space:]]*0*" "/proc/$p/status"' \
        _ "$HERE/systemd-sandbox.sh" "$SBX" "$(in_sbx id -u custos-nonroot)"
    in_sbx sh -c 'kill -TERM "$(cat /run/custos-nonroot.pid)"'
    for _ in $(seq 1 100); do kill -0 "$nonroot_nsenter" 2>/dev/null || break; sleep 0.1; done
    nonroot_errors="$(connect_errors < "$WORK/nonroot-agent.log")"
    check "[non-root] agent stopped on SIGTERM; its log has no EACCES, no failed connect or upload, no error" \
        bash -c '! kill -0 "$1" 2>/dev/null && { [ -z "$2" ] || { echo "$2"; false; }; }' _ "$nonroot_nsenter" "$nonroot_errors"
    wait "$nonroot_nsenter" 2>/dev/null

    # --- the packaged collector under its own unit, and the agent service uploading to it ------
    # Installed with apt beside the agent, with the same certificate as the host's collector,
    # the database in its state directory, and the agent switched over to it.
    sbx_cprop() { in_sbx systemctl show -P "$1" custos-collector.service 2>/dev/null; }
    check "[collector] apt-get install ./custos-collector_0.2.0_amd64.deb ./custos_0.2.0_amd64.deb ./custos-dashboard_0.2.0_all.deb on a systemd machine" \
        in_sbx env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$DEBC" "$DEBA" "$DEBD"
    check "[collector] unit known, not enabled, not started; user custos-collector exists" \
        bash -c '[ "$("$1" run "$2" systemctl show -P UnitFileState custos-collector.service) $("$1" run "$2" systemctl show -P ActiveState custos-collector.service)" = "disabled inactive" ] &&
                 "$1" run "$2" id custos-collector' _ "$HERE/systemd-sandbox.sh" "$SBX"
    CPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    in_sbx install -m 0644 "$COLL/collector.crt" /etc/custos/collector.crt
    in_sbx install -m 0640 -o root -g custos-collector "$COLL/collector.key" /etc/custos/collector.key
    APORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # The dashboard's admin listener on, as an administrator turns it on (the shipped line commented out).
    in_sbx sed -i -e "s|^listen=.*|listen=127.0.0.1:$CPORT|" -e "s|^#admin-listen=.*|admin-listen=127.0.0.1:$APORT|" /etc/custos/collector.cfg
    check "[collector] systemctl enable --now custos-collector" in_sbx timeout 60 systemctl enable --now custos-collector.service
    for _ in $(seq 1 100); do bash -c "exec 3<>/dev/tcp/127.0.0.1/$CPORT" 2>/dev/null && break; sleep 0.1; done
    for _ in $(seq 1 100); do bash -c "exec 3<>/dev/tcp/127.0.0.1/$APORT" 2>/dev/null && break; sleep 0.1; done
    check "[collector] service active/running as user custos-collector, listening on 127.0.0.1:$CPORT" \
        bash -c '[ "$("$1" run "$2" systemctl show -P ActiveState custos-collector.service)" = active ] &&
                 p="$("$1" run "$2" systemctl show -P MainPID custos-collector.service)" &&
                 [ "$("$1" run "$2" stat -c %U "/proc/$p")" = custos-collector ] && exec 3<>"/dev/tcp/127.0.0.1/$3"' \
        _ "$HERE/systemd-sandbox.sh" "$SBX" "$CPORT"
    check "[collector] StateDirectory /var/lib/custos-collector is 700 custos-collector, holding the SQLite database" \
        bash -c '[ "$("$1" run "$2" stat -c "%a %U" /var/lib/custos-collector)" = "700 custos-collector" ] &&
                 "$1" run "$2" test -f /var/lib/custos-collector/collector.db' _ "$HERE/systemd-sandbox.sh" "$SBX"
    cpid="$(sbx_cprop MainPID)"
    check "[collector] service's /etc and /home are out of reach (ProtectSystem=strict, ProtectHome=yes)" \
        in_sbx nsenter -t "$cpid" -m sh -c '! touch /etc/custos/probe 2>/dev/null && ! ls /home/custos-desk >/dev/null 2>&1'
    # The admin, on the collector host, as the service's user (the database is that user's).
    as_collector=(runuser -u custos-collector --)
    in_sbx install -m 0644 "$WORK/kek.pem" /var/tmp/custos-kek.pem
    PKG_TOKEN="$(in_sbx "${as_collector[@]}" custos agents add --db /var/lib/custos-collector/collector.db --id "$UNIT_AGENT" 2>"$WORK/pkg-admin.log")"
    check "[collector] custos agents add (as custos-collector) gives a token for $UNIT_AGENT" \
        bash -c '[ -n "$1" ] || { cat "$2"; false; }' _ "$PKG_TOKEN" "$WORK/pkg-admin.log"
    check "[collector] custos keys register stores the agents' KEK in the packaged collector's database" \
        in_sbx "${as_collector[@]}" custos keys register --db /var/lib/custos-collector/collector.db --public /var/tmp/custos-kek.pem
    in_sbx sed -i -e "s|^agent-token=.*|agent-token=$PKG_TOKEN|" -e "s|^server-url=.*|server-url=https://127.0.0.1:$CPORT|" \
        /etc/custos/config.cfg

    # --- the dashboard: an admin made with the packaged custos logs in over HTTPS (curl) ------
    ( umask 077; echo "a packaged dashboard password" > "$WORK/admin.pw"
      echo '{"name":"pkg-reviewer","password":"a packaged dashboard password"}' > "$WORK/admin-login.json" )
    in_sbx install -m 0600 -o custos-collector -g custos-collector "$WORK/admin.pw" /var/tmp/custos-admin.pw
    check "[dashboard] custos admins add --password-file (as custos-collector) makes the viewer pkg-reviewer" \
        in_sbx "${as_collector[@]}" custos admins add --db /var/lib/custos-collector/collector.db --name pkg-reviewer \
            --role viewer --password-file /var/tmp/custos-admin.pw
    in_sbx rm -f /var/tmp/custos-admin.pw
    AURL="https://127.0.0.1:$APORT"
    # acurl OUT PATH [CURL-ARGS...]: prints the status; the body to OUT, headers (CR removed) to OUT.hdr.
    acurl() {
        local out="$1" path="$2"; shift 2
        curl -sS --max-time 30 --cacert "$COLL/collector.crt" -c "$WORK/admin.jar" -b "$WORK/admin.jar" \
            -D "$out.hdr.raw" -o "$out" -w '%{http_code}' "$@" "$AURL$path"
        tr -d '\r' < "$out.hdr.raw" > "$out.hdr"
    }
    st="$(acurl "$WORK/login" /api/v1/login -H "Origin: $AURL" -H 'Content-Type: application/json' --data-binary @"$WORK/admin-login.json")"
    check "[dashboard] POST /api/v1/login on admin-listen over HTTPS: 200, role viewer, cookie HttpOnly; Secure; SameSite=Strict" \
        bash -c '[ "$1" = 200 ] && grep -q "\"role\":\"viewer\"" "$2" &&
                 grep -Eqi "^set-cookie: custos_session=[A-Za-z0-9_-]{43}; Path=/; HttpOnly; Secure; SameSite=Strict$" "$2.hdr" ||
                 { echo "status $1"; cat "$2" "$2.hdr"; false; }' _ "$st" "$WORK/login"
    st="$(acurl "$WORK/session" /api/v1/session)"
    check "[dashboard] GET /api/v1/session with that cookie: pkg-reviewer" \
        bash -c '[ "$1" = 200 ] && grep -q "\"name\":\"pkg-reviewer\"" "$2" || { echo "status $1"; cat "$2"; false; }' _ "$st" "$WORK/session"
    st="$(acurl "$WORK/index" /)"
    in_sbx cat /usr/share/custos/dashboard/index.html > "$WORK/index.installed"
    check "[dashboard] GET / is /usr/share/custos/dashboard/index.html byte for byte (custos-dashboard, the default dashboard-dir)" \
        bash -c '[ "$1" = 200 ] && [ -s "$3" ] && cmp "$2" "$3"' _ "$st" "$WORK/index" "$WORK/index.installed"
    csp="default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    check "[dashboard] GET / carries the Content-Security-Policy of docs/API.md (frame-ancestors 'none') and nosniff" \
        bash -c 'grep -qixF "content-security-policy: $2" "$1" && grep -qix "x-content-type-options: nosniff" "$1" || { cat "$1"; false; }' \
        _ "$WORK/index.hdr" "$csp"
    # The admin listener needs nothing of the unit: the running service's exposure (online,
    # as systemd sees it now) is the packaged unit's measured above, and no drop-in was added.
    live_score="$(in_sbx systemd-analyze security --no-pager custos-collector.service 2>&1 \
        | sed -n 's/.*Overall exposure level for custos-collector.service: \([0-9.]*\) .*/\1/p')"
    check "[dashboard] with admin-listen on, the running unit's exposure is the packaged unit's (${live_score:-?} = $cscore), no drop-in" \
        bash -c '[ -n "$1" ] && [ "$1" = "$2" ] && [ -z "$("$3" run "$4" systemctl show -P DropInPaths custos-collector.service)" ]' \
        _ "$live_score" "$cscore" "$HERE/systemd-sandbox.sh" "$SBX"
    check "[collector] the agent service restarts with server-url pointing at the packaged collector" \
        in_sbx timeout 60 systemctl restart custos-agent.service
    pkg_screens=0 pkg_keys=0
    # Up to 60 s: the restarted agent's keystroke recorder needs a moment before typing counts.
    for i in $(seq 1 120); do
        [ $((i % 6)) = 3 ] && type_keys
        pkg_screens="$(in_sbx "${as_collector[@]}" custos captures list --db /var/lib/custos-collector/collector.db \
            --agent "$UNIT_AGENT" --kind screen 2>/dev/null | sed -n 's/^\([0-9][0-9]*\) captures\{0,1\}, .*/\1/p')"
        pkg_keys="$(in_sbx "${as_collector[@]}" custos captures list --db /var/lib/custos-collector/collector.db \
            --agent "$UNIT_AGENT" --kind keystrokes 2>/dev/null | sed -n 's/^\([0-9][0-9]*\) captures\{0,1\}, .*/\1/p')"
        [ "${pkg_screens:-0}" -gt 0 ] && [ "${pkg_keys:-0}" -gt 0 ] && break
        sleep 0.5
    done
    check "[collector] the agent service's screen frames (${pkg_screens:-0}) and keystroke chunks (${pkg_keys:-0}) are stored by the packaged collector" \
        bash -c '[ "${1:-0}" -gt 0 ] && [ "${2:-0}" -gt 0 ]' _ "$pkg_screens" "$pkg_keys"
    coll_errors="$(in_sbx journalctl --no-pager -o cat -u custos-collector.service 2>&1 | grep -Ei " (error|critical) custos-collector|EACCES|permission denied" || true)"
    check "[collector] the collector's journal has no error, no EACCES" bash -c '[ -z "$1" ] || { echo "$1"; false; }' _ "$coll_errors"
    check "[collector] systemctl stop custos-collector, Result=success" \
        bash -c '"$1" run "$2" timeout 40 systemctl stop custos-collector.service &&
                 [ "$("$1" run "$2" systemctl show -P Result custos-collector.service)" = success ]' _ "$HERE/systemd-sandbox.sh" "$SBX"
    check "[collector] dpkg --purge custos-collector keeps the database" \
        bash -c '"$1" run "$2" dpkg --purge custos-collector && "$1" run "$2" test -f /var/lib/custos-collector/collector.db &&
                 ! "$1" run "$2" test -e /lib/systemd/system/custos-collector.service' _ "$HERE/systemd-sandbox.sh" "$SBX"
    in_sbx rm -f /etc/custos/collector.crt /etc/custos/collector.key  # the admin's files, not the package's
    echo "# journal of custos-collector.service in the sandbox (last 15 lines):"
    in_sbx journalctl --no-pager -o short-monotonic -u custos-collector.service 2>&1 | tail -n 15 | sed 's/^/#   /'

    pid_before="$(sbx_prop MainPID)"
    check "[systemd] apt-get install of 0.2.1 (Dpkg::Options --force-confold) restarts the enabled service" \
        bash -c '"$1" run "$2" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                     -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$3" </dev/null &&
                 [ "$("$1" run "$2" systemctl show -P ActiveState custos-agent.service)" = active ] &&
                 [ "$("$1" run "$2" systemctl show -P MainPID custos-agent.service)" != "$4" ]' \
        _ "$HERE/systemd-sandbox.sh" "$SBX" "$DEB2" "$pid_before"
    t0="$(date +%s%N)"
    in_sbx timeout 30 systemctl stop custos-agent.service
    stop_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    check "[systemd] systemctl stop takes ≤ 3000 ms (took $stop_ms ms), Result=success" \
        test "$stop_ms" -le 3000 -a "$(sbx_prop Result)" = success
    check "[systemd] dpkg --purge" in_sbx dpkg --purge custos-agent
    check "[systemd] after purge: unit, config and spool gone" \
        bash -c '! "$1" run "$2" test -e /lib/systemd/system/custos-agent.service &&
                 ! "$1" run "$2" test -e /etc/custos && ! "$1" run "$2" test -e /var/lib/custos &&
                 ! "$1" run "$2" test -e /etc/systemd/system/multi-user.target.wants/custos-agent.service' \
        _ "$HERE/systemd-sandbox.sh" "$SBX"
    kill "$COLLECTOR_PID" 2>/dev/null; wait "$COLLECTOR_PID" 2>/dev/null
    check "custos-collector stopped on SIGTERM" bash -c '! kill -0 "$1" 2>/dev/null' _ "$COLLECTOR_PID"
    COLLECTOR_PID=""
    echo "# journal of custos-agent.service in the sandbox (last 30 lines):"
    in_sbx journalctl --no-pager -o short-monotonic -u custos-agent.service 2>&1 | tail -n 30 | sed 's/^/#   /'
    "$HERE/systemd-sandbox.sh" stop "$SBX"
    check "[systemd] sandbox stopped: no process left" bash -c '! kill -0 "$(cat "$1/unshare.pid")" 2>/dev/null' _ "$SBX"
    check "[systemd] the host's hostname is untouched (the sandbox has its own UTS namespace)" \
        bash -c '[ "$(hostname)" = "$1" ]' _ "$HOST_NAME_BEFORE"
fi

finish
