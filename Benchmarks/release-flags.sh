# Sourced by every Benchmarks/*.sh: build benchmarks exactly as the .deb ships the agent
# (packaging/Makefile.fragment RELEASE_BUILD_FLAGS: static Swift runtime, BIND_NOW), so the
# figures describe the shipped binary and `make bench` and `make deb` share one build (SwiftPM
# rebuilds the whole release tree when these flags change).
RELEASE_FLAGS=(-c release --static-swift-stdlib -Xlinker -z -Xlinker now)
