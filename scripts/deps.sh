# Sourced by the scripts: installs the Debian packages mergedb needs, only those missing.
# A no-op (one dpkg-query) when everything is present.

MERGEDB_APT_PACKAGES=(
  cmake ninja-build g++ ccache pkg-config
  libprotobuf-dev protobuf-compiler
  libgrpc++-dev protobuf-compiler-grpc grpc-proto
  libabsl-dev libleveldb-dev libsnappy-dev libgoogle-perftools-dev
  libgtest-dev libgmock-dev libbenchmark-dev libxxhash-dev zlib1g-dev libzstd-dev
  libssl-dev openssl prometheus-cpp-dev python3-grpcio python3-protobuf iproute2
  clang-14 libclang-rt-14-dev
)

mergedb_missing_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  echo "${missing[@]:-}"
}

# mergedb_ensure_packages [extra packages...]
mergedb_ensure_packages() {
  local missing
  missing=$(mergedb_missing_packages "${MERGEDB_APT_PACKAGES[@]}" "$@")
  [ -z "$missing" ] && return 0
  echo "mergedb: installing missing packages: $missing" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "mergedb: need root (or sudo) to install: $missing" >&2; return 1; }
    sudo=sudo
  fi
  # shellcheck disable=SC2086
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
}

# The Node.js client example's npm dependencies (from package-lock.json), when Node.js and npm are
# on the machine. They do not come from Debian's npm package, which conflicts with the installed
# nodejs: this only uses what is already there.
mergedb_ensure_node_client() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "mergedb: node/npm not found; the Node.js client test will be skipped" >&2
    return 0
  fi
  local lock=$root/clients/node/package-lock.json stamp=$root/clients/node/node_modules/.mergedb-lock
  if [ -f "$stamp" ] && cmp -s "$lock" "$stamp"; then return 0; fi
  if (cd "$root/clients/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    cp "$lock" "$stamp"
  else
    echo "mergedb: 'npm ci' in clients/node failed; the Node.js client test will be skipped" >&2
  fi
}

# mergedb_build_fuzzers FUZZ_BUILD_DIR: the libFuzzer targets' own tree (tests/fuzz): clang with
# ASan and UBSan, and only the libraries the fuzzers link. Configured once, then rebuilt
# incrementally; the main tree's fuzz tests run its binaries (and skip when it is missing).
# libclang-rt-14-dev provides libFuzzer itself (-fsanitize=fuzzer).
mergedb_build_fuzzers() {
  local root build_dir=$1
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ ! -f "$build_dir/build.ninja" ]; then
    cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_COMPILER=clang++-14 -DMERGEDB_BUILD_FUZZERS=ON
  fi
  cmake --build "$build_dir" --target mergedb_fuzzers
}

# mergedb_build BUILD_DIR: configures once (Ninja) and builds; ccache is picked up when present.
mergedb_build() {
  local root build_dir=$1
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ ! -f "$build_dir/build.ninja" ]; then
    cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${MERGEDB_BUILD_TYPE:-RelWithDebInfo}"
  fi
  cmake --build "$build_dir"
}
