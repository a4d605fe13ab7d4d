#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole suite through ctest.
# Usage: scripts/test.sh [extra ctest arguments, e.g. -R Conflict]
# Environment: MERGEDB_BUILD_DIR (default build/), MERGEDB_BUILD_TYPE (default RelWithDebInfo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"

mergedb_ensure_packages
mergedb_ensure_node_client
build_dir=${MERGEDB_BUILD_DIR:-$root/build}
mergedb_build "$build_dir"
cd "$build_dir"
ctest --output-on-failure --timeout 600 -j "$(nproc)" "$@"
