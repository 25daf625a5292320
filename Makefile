# The README's two commands: `make run` and `make test`.
.PHONY: setup build release run test unit e2e bench chaos scenario report clean

setup:
	@scripts/setup.sh

build: setup
	swift build

# The production build: optimized with the flags of scripts/release-flags.sh (the Swift runtime and
# Foundation linked in statically, so the binary runs on a host without a Swift toolchain; cross-module
# optimization; no run-time exclusivity checks) and profile-guided (scripts/pgo.sh: an instrumented
# build, a training run, the build with its profile): .build/pgo/release/sidecar.
# bench/common.sh builds the same way.
release: setup
	scripts/pgo.sh
	@echo "release binary: .build/pgo/release/sidecar"

# Installs what is missing, builds, and runs the sidecar on its embedded default (mocks, no Redis).
run: build
	@scripts/run-dev.sh

# The whole test suite: pure and handler tests (swift test), then end-to-end with the real binary.
test: setup
	swift build --build-tests
	swift test --skip-build
	python3 -m pytest -q -p no:cacheprovider Tests/e2e

unit:
	swift build --build-tests && swift test --skip-build

e2e:
	swift build && python3 -m pytest -q -p no:cacheprovider Tests/e2e

bench:
	WITH_BENCH=1 scripts/setup.sh
	bench/run.sh
	bench/limits.sh
	bench/intercept.sh

# The chaos experiments (chaos/README in the main README): breaker, retries, cache, gmail, fleet.
chaos: setup
	scripts/pgo.sh
	chaos/run.sh

clean:
	rm -rf .build

# A load scenario (bench/load/scenario.py: waves, chaos, stress, soak, peak) against the newest build:
#   make scenario SCENARIO=waves SCALE=0.1 REDIS=1
scenario: setup
	python3 bench/load/scenario.py $(or $(SCENARIO),waves) --scale $(or $(SCALE),0.05) $(if $(REDIS),--redis)

# Markdown + self-contained HTML report (charts as PNG) of a scenario's results folder:
#   make report RESULTS=bench/results/waves-20261206T050000Z
report:
	bench/report $(RESULTS)
