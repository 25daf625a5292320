#!/usr/bin/env bash
# The production build, profile-guided: `make release` runs this; the benchmarks and chaos experiments
# build the sidecar through it too. The binary is .build/pgo/release/sidecar.
#
#   1. an instrumented release build (.build/pgo-train), LLVM IR counters in every Swift module;
#   2. a training run of it (scripts/pgo-train.py: the serpapi route with authentication off and on,
#      the forward proxy, OpenAI chat, the /api/proxy-request envelope, refusals) writing the counters;
#   3. the release build (.build/pgo) compiled with the merged profile (-ir-profile-use): LLVM lays out
#      hot paths straight, inlines along them and keeps cold code out of the way.
#
# Steps 1-2 run again only when the sources changed (a hash of Sources/, Package.swift, the two
# scripts and bench/policy.yaml); the instrumented build is incremental. A new profile recompiles every module of step 3 (the
# compiler does not track the profile file, so an incremental build would keep code optimized for the
# old one); with an unchanged profile step 3 is incremental. The other flags are scripts/release-flags.sh
# (the Swift runtime linked in statically, cross-module optimization, no run-time exclusivity checks).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/release-flags.sh
TOOLBIN=$(dirname "$(readlink -f "$(command -v swift)")")
PROFILE=$PWD/.build/pgo-profile/sidecar.profdata
KEY=$( (cat Package.swift scripts/pgo.sh scripts/release-flags.sh scripts/pgo-train.py bench/policy.yaml; find Sources -type f | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-16)
if [[ ! -f "$PROFILE" || "$(cat .build/pgo-profile/key 2>/dev/null)" != "$KEY" ]]; then
  RUNTIME=$(ls -d "$TOOLBIN"/../lib/clang/*/lib/linux | head -1)
  swift build "${RELEASE[@]}" --build-path .build/pgo-train --product sidecar \
    -Xswiftc -Xfrontend -Xswiftc -ir-profile-generate \
    -Xswiftc -L"$RUNTIME" -Xswiftc -lclang_rt.profile-"$(uname -m)" -Xlinker -u -Xlinker __llvm_profile_runtime
  RAW=.build/pgo-profile/raw
  rm -rf "$RAW" && mkdir -p "$RAW"
  SIDECAR_BIN=$PWD/.build/pgo-train/release/sidecar LLVM_PROFILE_FILE=$PWD/$RAW/%p.profraw python3 scripts/pgo-train.py
  "$TOOLBIN/llvm-profdata" merge -o "$PROFILE" "$RAW"/*.profraw
  rm -rf "$RAW" ".build/pgo/$(uname -m)-unknown-linux-gnu"
  echo "$KEY" > .build/pgo-profile/key
fi
swift build "${RELEASE[@]}" --build-path .build/pgo --product sidecar -Xswiftc -Xfrontend -Xswiftc -ir-profile-use="$PROFILE"
