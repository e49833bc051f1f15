#!/bin/sh
# Builds one of the Custos packages with dpkg-deb(1) --root-owner-group:
#   custos-agent      the endpoint agent daemon and its hardened unit   (default)
#   custos-collector  the collector daemon, its hardened unit, system user and conffile
#   custos            the admin and reviewer tool (keys, agents, listings, decrypt/export)
#   custos-dashboard  the reviewer's dashboard: the static files of dashboard/ in
#                     /usr/share/custos/dashboard (Architecture: all), which custos-collector
#                     (its admin listener) and custos (custos dashboard) depend on
#
# Usage: PACKAGE=NAME packaging/build-deb.sh   (after `swift build -c release --static-swift-stdlib`)
# Environment (all optional):
#   PACKAGE        custos-agent (default), custos-collector, custos or custos-dashboard
#   AGENT_BIN      custos-agent binary     (default .build/release/custos-agent)
#   COLLECTOR_BIN  custos-collector binary (default .build/release/custos-collector)
#   CUSTOS_BIN     custos admin binary     (default .build/release/custos)
#   DASHBOARD_DIR  the dashboard's static files (default dashboard/; must hold index.html):
#               its html, js, css, svg, png, ico and woff2 files, what the collector serves
#   VERSION     package version       (default: packaging/VERSION)
#   CONFIG_SAMPLE  shipped as the conffile: /etc/custos/config.cfg (agent, default
#               config.cfg.sample) or /etc/custos/collector.cfg (collector, default
#               collector.cfg.sample with database= in /var/lib/custos-collector)
#   OUT_DIR     where the .deb goes   (default build/)
#   MAINTAINER  "Name <email>"        (default: author of the first commit)
#   ALLOW_SWIFT_RUNTIME_DEPS=1  accept binaries linked dynamically with the Swift runtime
#               (a debug build): the package then runs only where that runtime is on the
#               loader path, so this is for tests, never for shipping.
#   DEB_COMPRESS  dpkg-deb compression options (default "-Zxz": smallest; tests use gzip)
#   SOURCE_DATE_EPOCH  timestamps of the changelog and files (default: last commit time).
# Prints the path of the .deb on its last line. Exits non-zero on any error.
set -eu
umask 022

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

PACKAGE="${PACKAGE:-custos-agent}"
AGENT_BIN="${AGENT_BIN:-$REPO/.build/release/custos-agent}"
COLLECTOR_BIN="${COLLECTOR_BIN:-$REPO/.build/release/custos-collector}"
CUSTOS_BIN="${CUSTOS_BIN:-$REPO/.build/release/custos}"
VERSION="${VERSION:-$(cat "$HERE/VERSION")}"
ARCH=amd64
# What each package holds: binaries, control file, maintainer scripts, conffile.
case "$PACKAGE" in
    custos-agent)
        BINS="$AGENT_BIN"; DEBDIR="$HERE/debian"
        CONFIG_SAMPLE="${CONFIG_SAMPLE:-$REPO/config.cfg.sample}"; CONFFILE=/etc/custos/config.cfg
        MAN="$HERE/debian/custos-agent.8" ;;
    custos-collector)
        BINS="$COLLECTOR_BIN"; DEBDIR="$HERE/debian/collector"
        CONFIG_SAMPLE="${CONFIG_SAMPLE:-$REPO/collector.cfg.sample}"; CONFFILE=/etc/custos/collector.cfg
        MAN="$HERE/debian/collector/custos-collector.8" ;;
    custos)
        BINS="$CUSTOS_BIN"; DEBDIR="$HERE/debian/admin"; CONFIG_SAMPLE=""; CONFFILE=""
        MAN="$HERE/debian/custos.1" ;;
    custos-dashboard)
        BINS=""; DEBDIR="$HERE/debian/dashboard"; CONFIG_SAMPLE=""; CONFFILE=""; MAN=""; ARCH=all
        DASHBOARD_DIR="${DASHBOARD_DIR:-$REPO/dashboard}" ;;
    *) echo "build-deb: PACKAGE '$PACKAGE' is not custos-agent, custos-collector, custos or custos-dashboard" >&2; exit 1 ;;
esac
OUT_DIR="${OUT_DIR:-$REPO/build}"
if [ -z "${MAINTAINER:-}" ]; then
    MAINTAINER="$(git -C "$REPO" log --reverse --format='%an <%ae>' 2>/dev/null | head -n 1)"
    MAINTAINER="${MAINTAINER:-Custos maintainers <root@localhost>}"
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH

die() { echo "build-deb: $*" >&2; exit 1; }

for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install dpkg-dev binutils)"
done
for f in $BINS; do
    [ -x "$f" ] || die "binary $f missing or not executable (build it, or set AGENT_BIN/COLLECTOR_BIN/CUSTOS_BIN)"
done
[ "$PACKAGE" != custos-dashboard ] || [ -f "$DASHBOARD_DIR/index.html" ] \
    || die "dashboard $DASHBOARD_DIR/index.html missing (set DASHBOARD_DIR to the dashboard's static files)"
[ -z "$CONFIG_SAMPLE" ] || [ -f "$CONFIG_SAMPLE" ] || die "config sample $CONFIG_SAMPLE missing (set CONFIG_SAMPLE)"
echo "$VERSION" | grep -Eq '^[0-9][A-Za-z0-9.+~]*$' \
    || die "VERSION '$VERSION' is not a native Debian version (digits first; A-Za-z0-9.+~)"

# The Swift runtime is not packaged for Debian 12: ship binaries linked with
# --static-swift-stdlib, so only Debian-packaged system libraries remain dynamic.
swift_libs=""
for f in $BINS; do
    needed="$(objdump -p "$f" | awk '/NEEDED/ {print $2}' \
        | grep -E '^lib(swift|Foundation|_Foundation|dispatch|BlocksRuntime)' || true)"
    [ -z "$needed" ] || swift_libs="$swift_libs $(basename "$f"): $(echo $needed)"
done
if [ -n "$swift_libs" ]; then
    [ "${ALLOW_SWIFT_RUNTIME_DEPS:-0}" = 1 ] \
        || die "binaries link the Swift runtime dynamically ($swift_libs); build with
  swift build -c release --static-swift-stdlib, or set ALLOW_SWIFT_RUNTIME_DEPS=1 for a test package"
    echo "build-deb: WARNING: test package; Swift runtime linked dynamically:$swift_libs" >&2
fi

STAGE="$(mktemp -d "${TMPDIR:-/tmp}/custos-deb.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT INT TERM
ROOT="$STAGE/$PACKAGE"
DOC="$ROOT/usr/share/doc/$PACKAGE"
section="$(echo "$MAN" | sed 's/.*\.//')"

install -d -m 0755 "$ROOT/DEBIAN" "$DOC"
[ -z "$BINS" ] || install -d -m 0755 "$ROOT/usr/bin"
[ -z "$MAN" ] || install -d -m 0755 "$ROOT/usr/share/man/man$section"

# Binaries, stripped (Debian Policy §10.1); Swift reflection metadata stays (not a symbol table).
installed=""
for f in $BINS; do
    name="$(basename "$f")"
    install -m 0755 "$f" "$ROOT/usr/bin/$name"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$ROOT/usr/bin/$name"
    installed="$installed $ROOT/usr/bin/$name"
done

case "$PACKAGE" in
    custos-agent)
        install -d -m 0755 "$ROOT/lib/systemd/system" "$ROOT/etc/custos" "$ROOT/etc/custos/certs"
        install -m 0644 "$HERE/custos-agent.service" "$ROOT/lib/systemd/system/custos-agent.service"
        # The config holds agent-token: root only.
        install -m 0600 "$CONFIG_SAMPLE" "$ROOT$CONFFILE"
        install -m 0644 "$HERE/README.md" "$DOC/README.md" ;;
    custos-collector)
        install -d -m 0755 "$ROOT/lib/systemd/system" "$ROOT/etc/custos" "$ROOT/usr/lib/sysusers.d"
        install -m 0644 "$HERE/custos-collector.service" "$ROOT/lib/systemd/system/custos-collector.service"
        install -m 0644 "$HERE/debian/collector/sysusers.conf" "$ROOT/usr/lib/sysusers.d/custos-collector.conf"
        # The database goes to the service's state directory; the postinst gives the file to the
        # service's group (0640) on the first install.
        sed 's|^database=.*$|database=/var/lib/custos-collector/collector.db|' "$CONFIG_SAMPLE" > "$ROOT$CONFFILE"
        chmod 0640 "$ROOT$CONFFILE"
        install -m 0644 "$HERE/README.md" "$DOC/README.md" ;;
    custos)
        install -m 0644 "$HERE/README.md" "$DOC/README.md" ;;
    custos-dashboard)
        # Only what the collector serves (docs/API.md "Static files"): regular files with its
        # extensions, no hidden ones, no symbolic links; directories 0755, files 0644.
        dest="$ROOT/usr/share/custos/dashboard"
        install -d -m 0755 "$dest"
        (cd "$DASHBOARD_DIR" && find . -type f ! -path '*/.*' \( -name '*.html' -o -name '*.js' -o -name '*.css' \
            -o -name '*.svg' -o -name '*.png' -o -name '*.ico' -o -name '*.woff2' \) \
            -exec sh -c 'dest="$1"; shift; for f; do install -D -m 0644 "$f" "$dest/$f"; done' sh "$dest" {} +)
        find "$dest" -type d -exec chmod 0755 {} + ;;
esac

sed -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@YEAR@|$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)|" \
    "$HERE/debian/copyright.in" > "$DOC/copyright"
chmod 0644 "$DOC/copyright"
if [ -n "$MAN" ]; then
    gzip -9n < "$MAN" > "$ROOT/usr/share/man/man$section/$(basename "$MAN").gz"
    chmod 0644 "$ROOT/usr/share/man/man$section/$(basename "$MAN").gz"
fi
overrides="$ROOT/usr/share/lintian/overrides/$PACKAGE"
if [ -f "$DEBDIR/lintian-overrides" ] && [ "$PACKAGE" != custos ]; then
    install -d -m 0755 "$ROOT/usr/share/lintian/overrides"
    install -m 0644 "$DEBDIR/lintian-overrides" "$overrides"
fi
if [ -n "$swift_libs" ]; then
    # A test package from a debug build finds the Swift runtime through the toolchain's RUNPATH.
    install -d -m 0755 "$ROOT/usr/share/lintian/overrides"
    for b in $installed; do
        rp="$(objdump -p "$b" | awk '/RUNPATH/ {print $2}' | tr ':' '\n' | grep '^/' || true)"
        for p in $rp; do
            printf '# test package: Swift runtime from the toolchain\n%s: custom-library-search-path RUNPATH %s [usr/bin/%s]\n' \
                "$PACKAGE" "$p" "$(basename "$b")" >> "$overrides"
        done
    done
    [ ! -f "$overrides" ] || chmod 0644 "$overrides"
fi
changelog_date="$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
{
    printf '%s (%s) unstable; urgency=medium\n\n' "$PACKAGE" "$VERSION"
    printf '  * Release %s built from git %s.\n\n' "$VERSION" \
        "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf ' -- %s  %s\n' "$MAINTAINER" "$changelog_date"
} | gzip -9n > "$DOC/changelog.gz"
chmod 0644 "$DOC/changelog.gz"

if [ "$PACKAGE" != custos ] && [ "$PACKAGE" != custos-dashboard ]; then
    install -m 0755 "$DEBDIR/postinst" "$DEBDIR/prerm" "$DEBDIR/postrm" "$ROOT/DEBIAN/"
    install -m 0644 "$DEBDIR/conffiles" "$ROOT/DEBIAN/conffiles"
fi

# Depends: the shared libraries the binaries need, mapped to packages by dpkg-shlibdeps(1).
depends=""
if [ -n "$BINS" ]; then
    mkdir -p "$STAGE/src/debian"
    printf 'Source: custos\n\nPackage: %s\nArchitecture: amd64\n' "$PACKAGE" > "$STAGE/src/debian/control"
    shlib_flags=""
    [ -z "$swift_libs" ] || shlib_flags="--ignore-missing-info"
    # shellcheck disable=SC2086 # $installed holds several paths
    depends="$(cd "$STAGE/src" && dpkg-shlibdeps -O $shlib_flags $installed 2>"$STAGE/shlibdeps.err" \
        | sed -n 's/^shlibs:Depends=//p')" || { cat "$STAGE/shlibdeps.err" >&2; die "dpkg-shlibdeps failed"; }
    [ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies"
fi
# The collector's postinst creates its user with systemd-sysusers (as dh_installsysusers does).
[ "$PACKAGE" != custos-collector ] || depends="$depends, systemd | systemd-standalone-sysusers | systemd-sysusers"
# The collector's admin listener and `custos dashboard` serve the dashboard's files, which live
# in one package of their own (dpkg refuses a file shipped by two packages).
case "$PACKAGE" in custos-collector|custos) depends="$depends, custos-dashboard (= $VERSION)" ;; esac

(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) > "$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/md5sums"

installed_size="$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)"
sed -e "s|@VERSION@|$VERSION|" -e "s|@MAINTAINER@|$MAINTAINER|" \
    -e "s|@INSTALLED_SIZE@|$installed_size|" -e "s#@DEPENDS@#$depends#" \
    "$DEBDIR/control.in" > "$ROOT/DEBIAN/control"
chmod 0644 "$ROOT/DEBIAN/control"

find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$OUT_DIR"
DEB="$OUT_DIR/${PACKAGE}_${VERSION}_${ARCH}.deb"
# shellcheck disable=SC2086 # DEB_COMPRESS holds several options
dpkg-deb --root-owner-group ${DEB_COMPRESS:--Zxz} --build "$ROOT" "$DEB" >/dev/null
[ -z "$depends" ] || echo "build-deb: Depends: $depends" >&2
echo "$DEB"
