# Sourced by every Benchmarks/*.sh: build benchmarks exactly as the .deb ships the agent
# (packaging/release-build-flags, also read by packaging/Makefile.fragment: static Swift runtime, BIND_NOW), so the
# figures describe the shipped binary and `make bench` and `make deb` share one build (SwiftPM
# rebuilds the whole release tree when these flags change).
read -r -a RELEASE_FLAGS < packaging/release-build-flags
