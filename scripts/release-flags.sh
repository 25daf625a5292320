# The release build's flags, in one place: sourced by scripts/pgo.sh (the production build, which adds
# the profile) and bench/common.sh (the relay floor and upstream ceiling, built the same way without one).
#
#   --static-swift-stdlib            the Swift runtime and Foundation linked in: the binary runs on a host
#                                    without a Swift toolchain
#   -cross-module-optimization       every module's code may be inlined and specialized into its callers
#                                    (swift-nio's generic channel and buffer code into ours), not only what
#                                    a module marks @inlinable
#   -enforce-exclusivity=unchecked   no run-time exclusivity checks (swift_beginAccess on every class
#                                    property and global touched: ~200 per request). The compile-time
#                                    checks stay, and the debug build the tests run (`make test`) keeps the
#                                    run-time ones, so a violation still fails the suite. Bounds and
#                                    overflow checks stay in every build.
# Measured (paired runs, CPU per request): the two flags 9-12 % less than without them, PGO on top of them
# (README "Benchmarks").
RELEASE=(-c release --static-swift-stdlib -Xswiftc -cross-module-optimization -Xswiftc -enforce-exclusivity=unchecked)
