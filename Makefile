# Custos — one command each for a fresh Debian 12 machine with Swift installed:
#   make demo   the main job end to end (Xvfb, openssl keys, local collector, agent, decrypt)
#   make test   every test (installs what is missing, builds, runs)
SHELL := /bin/bash
.DEFAULT_GOAL := build

# Debian packages the project needs to build, test and demo.
DEB_PACKAGES := libssl-dev libx11-dev libxtst-dev libxext-dev libxrandr-dev libxfixes-dev libxi-dev libxss-dev libpng-dev \
	libsqlite3-dev pkg-config xvfb xauth xdotool x11-xkb-utils x11-xserver-utils x11-utils \
	x11-apps xterm libaom-dev libyuv-dev mkvtoolnix sqlite3 openssl curl lintian systemd dpkg-dev fakeroot ffmpeg time python3 python3-cryptography procps util-linux tmux strace postgresql \
	chromium chromium-driver python3-selenium

SWIFT ?= swift
SWIFT_BUILD_FLAGS ?=

.PHONY: deps build test test-browser demo bench sample

include packaging/Makefile.fragment

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "make deps: all Debian packages present"; fi
	@command -v $(SWIFT) >/dev/null || { echo "make deps: Swift 6 toolchain not found on PATH (expected /opt/swift/usr/bin)"; exit 1; }

# Our own code builds without warnings (dependencies' warnings are theirs): a warning in
# Sources/, Tests/ or Benchmarks/ fails the build. Incremental builds only show warnings of
# files they recompile; CI builds from a clean clone, so it sees them all.
build: deps
	@log=$$(mktemp); set -o pipefail; \
	$(SWIFT) build --build-tests $(SWIFT_BUILD_FLAGS) 2>&1 | tee "$$log" || { rm -f "$$log"; exit 1; }; \
	if grep -E '^$(CURDIR)/(Sources|Tests|Benchmarks)/[^:]+:[0-9]+:[0-9]+: warning:' "$$log"; then \
	  rm -f "$$log"; echo "make build: the warnings above are in Custos' own code; fix them"; exit 1; fi; \
	rm -f "$$log"

# Two test processes: the network suites wait on NIO and the Swift concurrency pool (two
# threads on a 2-core machine), while the X11 and process suites hold pool threads for
# seconds as they wait on Xvfb and child processes; in one process the second starved the
# first (cancellation and retry tests missed their bounds in a full run).
test: build
	$(SWIFT) test --skip-build $(SWIFT_BUILD_FLAGS) --filter NetTests
	$(SWIFT) test --skip-build $(SWIFT_BUILD_FLAGS) --skip NetTests
	/usr/bin/python3 Tests/Browser/run.py --bin "$$($(SWIFT) build $(SWIFT_BUILD_FLAGS) --show-bin-path)"
	@if [ -x packaging/test-packaging.sh ]; then packaging/test-packaging.sh; fi

# The dashboard in real headless Chromium (Tests/Browser/run.py; screenshots in .build/browser-tests).
test-browser: build
	/usr/bin/python3 Tests/Browser/run.py --bin "$$($(SWIFT) build $(SWIFT_BUILD_FLAGS) --show-bin-path)"

demo: build
	scripts/demo.sh

bench: deps
	@for b in Benchmarks/*.sh; do [ -x "$$b" ] && { echo "== $$b"; "$$b" || exit 1; }; done; true

# Rewrites config.cfg.sample from AgentConfig.schema (a test keeps them equal).
sample: build
	CUSTOS_WRITE_SAMPLE=1 $(SWIFT) test --skip-build --filter ConfigTests.ConfigSyntaxTests/sampleAgreesWithParser
