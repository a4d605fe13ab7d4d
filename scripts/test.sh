#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole suite through ctest.
# Usage: scripts/test.sh [extra ctest arguments, e.g. -R Conflict]
# Environment: MERGEDB_BUILD_DIR (default build/), MERGEDB_BUILD_TYPE (default RelWithDebInfo),
# MERGEDB_FUZZ_SECONDS (default 30): how long each fuzzer runs (tests labelled fuzz).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"

mergedb_ensure_packages
mergedb_ensure_node_client
build_dir=${MERGEDB_BUILD_DIR:-$root/build}
mergedb_build "$build_dir"
mergedb_build_fuzzers "$build_dir/fuzz"
cd "$build_dir"
status=0
rm -f Testing/chaos-*.txt
# --no-tests=error: a -R or -L that matches nothing (a typo) fails rather than passing.
ctest --output-on-failure --no-tests=error --timeout 600 -j "$(nproc)" "$@" || status=$?
# The fault tests' summaries (ctest shows a passing test's output only with -V).
for summary in Testing/chaos-*.txt; do
  if [ -f "$summary" ]; then cat "$summary"; fi
done
exit $status
