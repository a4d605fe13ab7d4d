#!/usr/bin/env bash
# A local mergedb cluster on 127.0.0.1, one command away.
#
#   scripts/cluster.sh up [N] [--replicas M] [--base-port P] [--dir DIR] [--tls]
#        installs what is missing, builds if needed, starts N nodes (default 3; the last M are
#        read-only replicas), waits until all are healthy, prints addresses and examples.
#        Safe on a running cluster: starts only the nodes that are down. --tls (when the
#        cluster is first made): a CA and node certificates in DIR/tls, every call and link TLS,
#        and a client CA and client certificate (app) that every client must present.
#   scripts/cluster.sh status            one line per node: pid, address, role, health, lag
#   scripts/cluster.sh kill NODE         SIGKILL (e.g. kill n2)
#   scripts/cluster.sh start NODE | restart NODE | logs NODE
#   scripts/cluster.sh backup NODE NAME  a consistent copy of a running node's data, taken while
#        writes go on, into DIR/backups/NODE/NAME
#   scripts/cluster.sh restore NODE NAME|PATH  stops NODE, moves its data dir aside, puts that
#        backup (NAME in DIR/backups/NODE, or a PATH with a '/' in it, e.g. a copy made by
#        `mergedb fetch-backup ./n3-copy`) in its place and starts it: it comes back as a new
#        incarnation and its peers send it everything written since the backup
#   scripts/cluster.sh down              SIGTERM every node (they drain and close cleanly)
#   scripts/cluster.sh wipe              down, then delete every data dir, log and backup
#
# State lives in one folder (default .cluster/ in the repository, or --dir / MERGEDB_CLUSTER_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"

build_dir=${MERGEDB_BUILD_DIR:-$root/build}
dir=${MERGEDB_CLUSTER_DIR:-$root/.cluster}
node_bin=$build_dir/node/mergedb-node
cli_bin=$build_dir/node/mergedb

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

# ---- arguments ----
command=${1:-}
[ -n "$command" ] || usage
shift
count=""
replicas=""
base_port=""
target=""
name=""
tls=""
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) replicas=${2:?--replicas needs a number}; shift 2 ;;
    --replicas=*) replicas=${1#*=}; shift ;;
    --base-port) base_port=${2:?--base-port needs a port}; shift 2 ;;
    --base-port=*) base_port=${1#*=}; shift ;;
    --dir) dir=${2:?--dir needs a folder}; shift 2 ;;
    --dir=*) dir=${1#*=}; shift ;;
    --tls) tls=1; shift ;;
    -h|--help) usage ;;
    -*) die "unknown option $1" ;;
    *)
      if [ "$command" = up ] && [ -z "$count" ]; then count=$1
      elif [ -z "$target" ]; then target=$1
      elif [ -z "$name" ]; then name=$1
      else die "unexpected argument $1"; fi
      shift ;;
  esac
done

conf=$dir/cluster.conf
# What the nodes and the CLI add for TLS (set by use_conf).
node_tls=()
cli_tls=()
use_conf() {
  # shellcheck source=/dev/null
  source "$conf"
  TLS=${TLS:-0}
  if [ "$TLS" = 1 ]; then
    node_tls=(--tls_cert="$dir/tls/node.pem" --tls_key="$dir/tls/node.key" --tls_ca="$dir/tls/ca.pem")
    cli_tls=(--tls_ca="$dir/tls/ca.pem")
    # Clusters made before client certificates have no client CA: their clients present none.
    if [ -f "$dir/tls/clients.pem" ]; then
      node_tls+=(--tls_client_ca="$dir/tls/clients.pem")
      cli_tls+=(--tls_cert="$dir/tls/app.pem" --tls_key="$dir/tls/app.key")
    fi
  fi
}
load_conf() {
  [ -f "$conf" ] || die "no cluster in $dir (run: scripts/cluster.sh up)"
  use_conf
}

# In DIR/tls: the cluster's CA and one certificate for every node (they all listen on
# 127.0.0.1); a CA for application clients and one client certificate ("app"), which nodes
# require (--tls_client_ca). The CAs' keys stay there too: a local cluster for trying things
# out, not a way to keep keys.
make_certs() {
  rm -rf "$dir/tls"  # a new cluster: certificates left by an earlier one go
  "$root/scripts/make_certs.sh" ca "$dir/tls" ca &&
    "$root/scripts/make_certs.sh" cert "$dir/tls" node ca &&
    "$root/scripts/make_certs.sh" ca "$dir/tls" clients &&
    "$root/scripts/make_certs.sh" cert "$dir/tls" app clients ||
    die "could not make the TLS certificates in $dir/tls"
}

node_index() {  # n2 -> 2
  local name=$1
  [[ "$name" =~ ^n([0-9]+)$ ]] || die "nodes are named n1..n$N, not '$name'"
  local i=${BASH_REMATCH[1]}
  [ "$i" -ge 1 ] && [ "$i" -le "$N" ] || die "no node $name in this $N-node cluster"
  echo "$i"
}
port_of() { echo $((BASE_PORT + $1 - 1)); }
pid_of() {
  local f=$dir/n$1.pid
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}
role_of() { if [ "$1" -gt $((N - REPLICAS)) ]; then echo replica; else echo primary; fi; }

port_in_use() {
  # A listening TCP socket on 127.0.0.1:PORT (ss from iproute2, else bash's /dev/tcp).
  if command -v ss >/dev/null; then
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

start_node() {  # start_node I [EXTRA FLAG...]: the extra flags are for this start only
  local i=$1
  shift
  if pid_of "$i" >/dev/null; then return 0; fi
  local port; port=$(port_of "$i")
  port_in_use "$port" && die "port $port (node n$i) is already in use by another program; choose --base-port"
  local peers="" j
  for j in $(seq 1 "$N"); do
    [ "$j" = "$i" ] && continue
    peers+="${peers:+,}n$j=127.0.0.1:$(port_of "$j")"
  done
  mkdir -p "$dir"
  nohup "$node_bin" --data_dir="$dir/n$i" --node_name="n$i" --cluster=local \
    --listen="127.0.0.1:$port" --peers="$peers" --role="$(role_of "$i")" \
    --backup_dir="$dir/backups/n$i" ${node_tls[@]+"${node_tls[@]}"} "$@" >>"$dir/n$i.log" 2>&1 &
  echo $! >"$dir/n$i.pid"
}

cli() { "$cli_bin" ${cli_tls[@]+"${cli_tls[@]}"} "$@"; }
healthy() { cli --node="127.0.0.1:$(port_of "$1")" --timeout_ms=500 status >/dev/null 2>&1; }

wait_healthy() {
  local i=$1 tries=0
  while ! healthy "$i"; do
    tries=$((tries + 1))
    if ! pid_of "$i" >/dev/null; then
      echo "node n$i exited; the end of its log ($dir/n$i.log):" >&2
      tail -n 5 "$dir/n$i.log" >&2
      return 1
    fi
    [ $tries -lt 150 ] || { echo "node n$i is not healthy after 30 s" >&2; return 1; }
    sleep 0.2
  done
}

stop_node() {  # SIGTERM, then wait (bounded) for the drain
  local i=$1 pid
  pid=$(pid_of "$i") || { rm -f "$dir/n$i.pid"; return 0; }
  kill -TERM "$pid"
  local tries=0
  while kill -0 "$pid" 2>/dev/null && [ $tries -lt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$dir/n$i.pid"
}

status_line() {
  local i=$1 pid health lag role port
  port=$(port_of "$i")
  role=$(role_of "$i")
  if pid=$(pid_of "$i"); then
    if healthy "$i"; then
      health=serving
      lag=$(cli --node="127.0.0.1:$port" --timeout_ms=1000 status --json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys
s=json.load(sys.stdin)
print(" ".join("%s:%s%s" % (p["name"], p.get("entries_behind","0"), "" if p.get("connected") else "(down)") for p in s.get("peers",[])) or "-")' 2>/dev/null || echo "?")
    else
      health=starting; lag="-"
    fi
  else
    pid="-"; health=down; lag="-"
  fi
  printf "%-4s pid %-8s 127.0.0.1:%-6s %-8s %-9s behind %s\n" "n$i" "$pid" "$port" "$role" "$health" "$lag"
}

case "$command" in
  up)
    mergedb_ensure_packages
    mergedb_build "$build_dir" >/dev/null || die "build failed (run: cmake --build $build_dir)"
    if [ -f "$conf" ]; then
      use_conf
      if [ -n "$count" ] && [ "$count" != "$N" ]; then
        die "a $N-node cluster already lives in $dir (run 'wipe' first to change its size)"
      fi
      if [ -n "$tls" ] && [ "$TLS" != 1 ]; then
        die "a plaintext cluster already lives in $dir (run 'wipe' first to make it TLS)"
      fi
    else
      N=${count:-3}
      REPLICAS=${replicas:-0}
      BASE_PORT=${base_port:-7701}
      [[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number"
      [[ "$REPLICAS" =~ ^[0-9]+$ ]] && [ "$REPLICAS" -lt "$N" ] || die "--replicas must be below N"
      mkdir -p "$dir"
      TLS=${tls:-0}
      [ "$TLS" = 1 ] && make_certs
      printf 'N=%s\nREPLICAS=%s\nBASE_PORT=%s\nTLS=%s\n' "$N" "$REPLICAS" "$BASE_PORT" "$TLS" >"$conf"
      use_conf
    fi
    # Check every port first, so that a port in use starts nothing.
    for i in $(seq 1 "$N"); do
      pid_of "$i" >/dev/null && continue
      port=$(port_of "$i")
      ! port_in_use "$port" || die "port $port (node n$i) is already in use by another program; choose --base-port"
    done
    for i in $(seq 1 "$N"); do start_node "$i"; done
    for i in $(seq 1 "$N"); do wait_healthy "$i" || die "cluster did not come up"; done
    echo "mergedb cluster up: $N nodes ($REPLICAS read-only$([ "$TLS" = 1 ] && echo ", TLS with the CA in $dir/tls/ca.pem")), data and logs in $dir"
    for i in $(seq 1 "$N"); do status_line "$i"; done
    p1=$(port_of 1); p2=$(port_of $(( N > 1 ? 2 : 1 )))
    c="$cli_bin${cli_tls[*]+ ${cli_tls[*]}}"
    cat <<EOF

Try:
  $c --node=127.0.0.1:$p1 update users ada set name '"Ada"' incr visits 1
  $c --node=127.0.0.1:$p2 get users ada
  $c --node=127.0.0.1:$p1 status
  scripts/cluster.sh kill n2; scripts/cluster.sh start n2; scripts/cluster.sh status
EOF
    ;;
  down)
    load_conf
    for i in $(seq 1 "$N"); do stop_node "$i"; done
    echo "cluster down (data kept in $dir; 'up' brings it back)"
    ;;
  status)
    load_conf
    for i in $(seq 1 "$N"); do status_line "$i"; done
    ;;
  kill)
    load_conf
    [ -n "$target" ] || die "kill needs a node name (n1..n$N)"
    i=$(node_index "$target")
    pid=$(pid_of "$i") || die "$target is not running"
    kill -KILL "$pid"
    rm -f "$dir/n$i.pid"
    echo "$target killed (SIGKILL)"
    ;;
  start)
    load_conf
    [ -n "$target" ] || die "start needs a node name"
    i=$(node_index "$target")
    mergedb_build "$build_dir" >/dev/null
    start_node "$i"
    wait_healthy "$i"
    status_line "$i"
    ;;
  restart)
    load_conf
    [ -n "$target" ] || die "restart needs a node name"
    i=$(node_index "$target")
    stop_node "$i"
    start_node "$i"
    wait_healthy "$i"
    status_line "$i"
    ;;
  backup)
    load_conf
    [ -n "$target" ] && [ -n "$name" ] || die "usage: backup NODE NAME"
    i=$(node_index "$target")
    cli --node="127.0.0.1:$(port_of "$i")" backup "$name"
    ;;
  restore)
    load_conf
    [ -n "$target" ] && [ -n "$name" ] || die "usage: restore NODE NAME|PATH"
    i=$(node_index "$target")
    if [[ "$name" == */* ]]; then
      backup=${name%/}
      [ -f "$backup/CURRENT" ] || die "$backup is not a backup (no LevelDB CURRENT file in it)"
    else
      [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "a backup name is letters, digits, '.', '_' and '-', not '$name'"
      backup=$dir/backups/n$i/$name
      [ -f "$backup/CURRENT" ] || die "no backup '$name' of $target in $dir/backups/n$i"
    fi
    real_backup=$(realpath "$backup")
    real_data=$(realpath -m "$dir/n$i")
    if [ "$real_backup" = "$real_data" ] || [[ "$real_backup" == "$real_data"/* ]]; then
      die "$backup is $target's own data dir, not a backup"
    fi
    # The backup is copied, never used in place (its first start uses up its marker), and
    # copied while the node still serves: it is stopped only for the swap.
    staging=$(mktemp -u -d "$dir/n$i.restoring-XXXX")
    cp -a "$backup" "$staging"
    stop_node "$i"
    aside=""
    if [ -d "$dir/n$i" ]; then
      aside=$(mktemp -u -d "$dir/n$i.before-restore-$(date +%Y%m%d-%H%M%S)-XXXX")
      mv -T "$dir/n$i" "$aside"
      echo "$target's previous data dir is now $aside"
    fi
    mv -T "$staging" "$dir/n$i"
    # A new replica id for this start: a backup draws one by itself, and so must any other copy
    # (a cold copy under the old id could reuse sequence numbers the node issued since).
    start_node "$i" --new_incarnation
    if ! wait_healthy "$i"; then
      # The node refused the copy (another node's or cluster's, or cut off): put back what was
      # there and restart it, so that a bad copy costs a restart, not the node.
      stop_node "$i"
      refused=$(mktemp -u -d "$dir/n$i.refused-XXXX")
      mv -T "$dir/n$i" "$refused"
      [ -z "$aside" ] || mv -T "$aside" "$dir/n$i"
      start_node "$i"
      wait_healthy "$i" || true
      die "$target refused that copy (its log above says why; the copy is now $refused); its previous data dir is back in place and it was restarted"
    fi
    echo "$target restored from backup '$name'; its peers send it what was written since"
    status_line "$i"
    ;;
  logs)
    load_conf
    [ -n "$target" ] || die "logs needs a node name"
    i=$(node_index "$target")
    cat "$dir/n$i.log"
    ;;
  wipe)
    if [ -f "$conf" ]; then
      use_conf
      for i in $(seq 1 "$N"); do stop_node "$i"; done
    fi
    rm -rf "$dir"
    echo "cluster wiped ($dir removed, with its data dirs, logs and backups)"
    ;;
  *)
    usage
    ;;
esac
