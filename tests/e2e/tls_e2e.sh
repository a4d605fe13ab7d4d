#!/usr/bin/env bash
# End-to-end: `scripts/cluster.sh up --tls` on three real nodes, which require client
# certificates and bind member names to their own certificates. Writes reach every node over the TLS links, also after a node is killed and
# started again; a plaintext client, and a client without a certificate, are refused and told
# what they lack; a bad renewal is refused on SIGHUP and the node goes on; the Python and Node.js
# example clients connect with the CA and the client certificate.
# Usage: tls_e2e.sh BUILD_DIR SOURCE_DIR. Cleans up after itself.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_cluster_setup "$@"
base=$(free_base_port)
[ -n "$base" ] || { echo "no three free consecutive ports"; exit 1; }
ca=$work/cluster/tls/ca.pem
app_cert=$work/cluster/tls/app.pem
app_key=$work/cluster/tls/app.key
cli_flags=(--tls_ca="$ca" --tls_cert="$app_cert" --tls_key="$app_key")

cluster up 3 --base-port "$base" --tls | tee "$work/up.out"
grep -q "TLS with the CA in $ca" "$work/up.out" || { echo "up did not say TLS"; exit 1; }
grep -q "serving TLS" "$work/cluster/n1.log" || { echo "n1 does not serve TLS"; exit 1; }
# Each node has a certificate of its own and binds member names to certificates.
for i in 1 2 3; do
  [ -f "$work/cluster/tls/n$i.pem" ] || { echo "no certificate of its own for n$i"; exit 1; }
  pgrep -f -- "--data_dir=$work/cluster/n$i .*--tls_bind_member_names" >/dev/null ||
    { echo "n$i does not bind member names to certificates"; exit 1; }
done
for k in $(seq 1 9); do mergedb_cli --node="$(node $((k % 3 + 1)))" update c d incr n 1 >/dev/null; done
every_node_sees 9

if "$build/node/mergedb" --node="$(node 1)" get c d >/dev/null 2>"$work/plain.err"; then
  echo "a plaintext client was served by a TLS node"; exit 1
fi
grep -q "give --tls_ca" "$work/plain.err" || { cat "$work/plain.err"; exit 1; }
if "$build/node/mergedb" --node="$(node 1)" --tls_ca="$ca" get c d >/dev/null 2>"$work/nocert.err"; then
  echo "a client without a certificate was served by a node that requires one"; exit 1
fi
grep -q "give --tls_cert and --tls_key" "$work/nocert.err" || { cat "$work/nocert.err"; exit 1; }

# The links come back over TLS after a restart.
cluster kill n2 >/dev/null
mergedb_cli --node="$(node 1)" update c d incr n 10 >/dev/null
cluster start n2 >/dev/null
every_node_sees 19
cluster status | tee "$work/status.out"
[ "$(grep -c serving "$work/status.out")" = 3 ] || { echo "not every node is serving"; exit 1; }
# The node's status says until when its certificate and the client CA work (cluster.sh makes
# them for 10 years).
mergedb_cli --node="$(node 1)" status | tee "$work/n1.status"
grep -Eq '^tls +certificate valid until [0-9-]+ [0-9:]+ UTC \(/CN=(ca|n1), 36[0-9][0-9]\.[0-9] days left\)$' \
  "$work/n1.status" || { echo "status does not say when the certificate expires"; exit 1; }
grep -Eq '^ +client certificates required; client CA valid until [0-9-]+ [0-9:]+ UTC \(/CN=clients, 36[0-9][0-9]\.[0-9] days left\)$' \
  "$work/n1.status" || { echo "status does not say when the client CA expires"; exit 1; }

# Changed files are read again without a restart (SIGHUP: at once). A key that is not the
# certificate's is refused and said in the status while the node keeps serving with what it
# has; put back, the refusal clears. The node's copies are private.
tls_dir=$work/cluster/tls
n1_pid=$(cat "$work/cluster/n1.pid")
[ "$(stat -c %a "$work/cluster/n1/tls-in-use")" = 700 ] || { echo "tls-in-use is not private"; exit 1; }
[ "$(stat -L -c %a "$work/cluster/n1/tls-in-use/current/key.pem")" = 600 ] ||
  { echo "the node's copy of its key is not private"; exit 1; }
# await_status PATTERN PRESENT: waits (bounded) until n1's status shows PATTERN (PRESENT=1) or
# no longer shows it (0).
await_status() {
  for _ in $(seq 1 50); do
    mergedb_cli --node="$(node 1)" status >"$work/n1.status" 2>&1 || true
    if grep -q "$1" "$work/n1.status"; then [ "$2" = 1 ] && return 0; else [ "$2" = 0 ] && return 0; fi
    sleep 0.1
  done
  cat "$work/n1.status"; return 1
}
cp "$tls_dir/n1.key" "$work/n1.key.orig"
cp "$tls_dir/n2.key" "$tls_dir/n1.key"
kill -HUP "$n1_pid"
await_status 'CHANGED FILES REFUSED (still using the above): --tls_key=.*not the key of the certificate' 1 ||
  { echo "a key that is not the certificate's was not refused"; exit 1; }
grep -q 'the TLS files changed but were not taken' "$work/cluster/n1.log" ||
  { echo "the refusal is not in n1's log"; exit 1; }
mergedb_cli --node="$(node 1)" update c d incr n 1 >/dev/null
cp "$work/n1.key.orig" "$tls_dir/n1.key"
kill -HUP "$n1_pid"
await_status 'CHANGED FILES REFUSED' 0 || { echo "the refusal did not clear"; exit 1; }
every_node_sees 20

PYTHONPATH="$build/clients/python:$src/clients/python" /usr/bin/python3 - "$(node 3)" "$ca" \
    "$app_cert" "$app_key" <<'PY'
import sys
import mergedb_client
client = mergedb_client.Client(sys.argv[1], ca_file=sys.argv[2], cert_file=sys.argv[3],
                               key_file=sys.argv[4])
doc = client.get("c", "d")
counters = [f.value.counter for f in doc.fields if f.name == "n"]
assert counters == [20], doc
print("python client over TLS reads n =", counters[0])
PY
nodejs=$(type -P node || true)  # not the node() above
if [ -n "$nodejs" ] && [ -d "$src/clients/node/node_modules/@grpc/grpc-js" ]; then
  "$nodejs" - "$src/clients/node/client.js" "$(node 2)" "$ca" "$app_cert" "$app_key" <<'JS'
const [clientPath, address, ca, cert, key] = process.argv.slice(2);
const {connect, call} = require(clientPath);
call(connect(address, ca, cert, key).documents, 'Get', {collection: 'c', id: 'd'}).then((doc) => {
  const n = doc.fields.find((f) => f.name === 'n');
  if (!n || n.value.counter !== '20') throw new Error('n is ' + JSON.stringify(n));
  console.log('node.js client over TLS reads n =', n.value.counter);
  process.exit(0);
}).catch((err) => { console.error(err.message || err); process.exit(1); });
JS
else
  echo "node.js client part skipped: node or clients/node dependencies absent"
fi
echo "TLS cluster: every node has every write, plaintext and clients without a certificate refused"
