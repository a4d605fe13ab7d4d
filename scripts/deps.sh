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

# Whether the nodejs package installed (if any) is another vendor's than Debian's (NodeSource's
# ships npm inside it, and Debian's npm package conflicts with it: installing npm would replace
# that nodejs).
mergedb_foreign_nodejs() {
  dpkg-query -W -f='${Status}' nodejs 2>/dev/null | grep -q 'install ok installed' &&
    ! dpkg-query -W -f='${Maintainer}' nodejs 2>/dev/null | grep -q Debian
}

# Whether the node on the PATH is the one of Debian's nodejs package.
mergedb_debian_node() {
  local owner
  owner=$(dpkg-query -S "$(readlink -f "$(command -v node)")" 2>/dev/null) || return 1
  [ "${owner%%:*}" = nodejs ] && ! mergedb_foreign_nodejs
}

# The Node.js client example's npm dependencies (from package-lock.json). Node.js and npm come
# from Debian's nodejs and npm packages when node is missing, and npm alone when node is Debian's;
# a node from elsewhere (NodeSource, a tarball) is used as it is, with its own npm.
mergedb_ensure_node_client() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if ! command -v node >/dev/null && ! mergedb_foreign_nodejs; then
    mergedb_ensure_packages nodejs npm || echo "mergedb: could not install nodejs and npm" >&2
  elif command -v node >/dev/null && ! command -v npm >/dev/null && mergedb_debian_node; then
    mergedb_ensure_packages npm || echo "mergedb: could not install npm" >&2
  fi
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

# mergedb_configure BUILD_DIR: configures once (Ninja); ccache is picked up when present.
mergedb_configure() {
  local root build_dir=$1
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ ! -f "$build_dir/build.ninja" ]; then
    cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${MERGEDB_BUILD_TYPE:-RelWithDebInfo}"
  fi
}

# mergedb_build BUILD_DIR [TARGET...]: configures once and builds those targets (default: all).
mergedb_build() {
  local build_dir=$1
  shift
  mergedb_configure "$build_dir" || return
  if [ $# -gt 0 ]; then
    cmake --build "$build_dir" --target "$@"
  else
    cmake --build "$build_dir"
  fi
}
