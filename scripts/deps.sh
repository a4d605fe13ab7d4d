# Sourced by the scripts: installs the Debian packages mergedb needs, only those missing.
# A no-op (one dpkg-query) when everything is present.

MERGEDB_APT_PACKAGES=(
  cmake ninja-build g++ ccache pkg-config
  libprotobuf-dev protobuf-compiler
  libgrpc++-dev protobuf-compiler-grpc grpc-proto
  libabsl-dev libleveldb-dev libsnappy-dev
  libgtest-dev libgmock-dev libbenchmark-dev libxxhash-dev
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

# mergedb_build BUILD_DIR: configures once (Ninja) and builds; ccache is picked up when present.
mergedb_build() {
  local root build_dir=$1
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ ! -f "$build_dir/build.ninja" ]; then
    cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${MERGEDB_BUILD_TYPE:-RelWithDebInfo}"
  fi
  cmake --build "$build_dir"
}
