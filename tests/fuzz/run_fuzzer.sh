#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time from its seed corpus (ctest's fuzz tests).
# Usage: run_fuzzer.sh FUZZER_BINARY SEED_CORPUS_DIR SCRATCH_DIR [extra libFuzzer flags...]
# Environment: MERGEDB_FUZZ_SECONDS (default 30): how long the fuzzer runs;
#              MERGEDB_FUZZ_INPUT_TIMEOUT (default 10): seconds one input may take.
# Exit status: 0 when nothing was found; 77 (ctest's skip) when the fuzz tree is not built;
# otherwise the fuzzer's, with the crashing input saved under SCRATCH_DIR.
set -euo pipefail
fuzzer=$1 seeds=$2 scratch=$3
shift 3
seconds=${MERGEDB_FUZZ_SECONDS:-30}
input_timeout=${MERGEDB_FUZZ_INPUT_TIMEOUT:-10}

if [ ! -x "$fuzzer" ]; then
  echo "SKIP: $fuzzer is not built. The fuzzers live in a separate clang build tree:"
  echo "  scripts/test.sh builds it, or by hand:"
  echo "  cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 -DMERGEDB_BUILD_FUZZERS=ON"
  echo "  cmake --build build/fuzz --target mergedb_fuzzers"
  exit 77
fi

# The fuzzer adds what it finds to its corpus directory: give it a copy, never the repository's.
rm -rf "$scratch"
mkdir -p "$scratch/corpus" "$scratch/artifacts"
cp "$seeds"/* "$scratch/corpus/"

# Any sanitizer report ends the run with a failure (UBSan included); leaks are reported too.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

echo "fuzzing $(basename "$fuzzer") for ${seconds}s from $(ls "$seeds" | wc -l) seeds in $seeds"
status=0
# libFuzzer stops itself after max_total_time; the outer timeout only guards against a hang
# outside any one input.
timeout --kill-after=30 $((seconds + 300)) "$fuzzer" \
  -max_total_time="$seconds" -timeout="$input_timeout" -rss_limit_mb=2048 \
  -error_exitcode=1 -timeout_exitcode=1 -dict="$(dirname "$0")/mergedb.dict" \
  -artifact_prefix="$scratch/artifacts/" -print_final_stats=1 \
  "$@" "$scratch/corpus" || status=$?
if [ "$status" -ne 0 ]; then
  [ "$status" -eq 77 ] && status=1  # 77 means "skipped" to ctest
  echo "FAILED ($status): $(basename "$fuzzer") found a problem; the input is in $scratch/artifacts/:"
  ls -l "$scratch/artifacts/" || true
  echo "Replay it with: $fuzzer $scratch/artifacts/<file>"
  echo "Keep it as a regression seed: cp it to $seeds/crash-<what>"
fi
exit "$status"
