#!/usr/bin/env bash
# TLS certificates for local clusters and tests, made with the openssl tool (ECDSA P-256):
#
#   scripts/make_certs.sh ca DIR NAME [DAYS]
#       a self-signed CA: DIR/NAME.pem and DIR/NAME.key
#   scripts/make_certs.sh cert DIR NAME CA [DAYS [ADDRESSES]]
#       a certificate signed by the CA DIR/CA.pem (DIR/CA.key): DIR/NAME.pem, DIR/NAME.key; a
#       node's (signed by the cluster's CA) or an application client's (by the client CA)
#
# DAYS defaults to 3650; -1 makes a certificate whose one day of validity ended yesterday.
# ADDRESSES are the names peers and clients reach a node by (they check them), as
# IP:a.b.c.d and DNS:name joined by commas; default IP:127.0.0.1,DNS:localhost (a client's
# certificate is not checked for them). A cluster across machines needs one certificate per
# node, naming its address.
# Not a way to keep keys: the CA's key stays beside its certificate.
set -euo pipefail

die() { echo "make_certs.sh: $*" >&2; exit 1; }
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

command -v openssl >/dev/null || die "needs the openssl tool (Debian package openssl)"
[ $# -ge 3 ] || usage
kind=$1 dir=$2 name=$3
[[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "NAME must be a file name, not '$name'"
case $kind in
  ca)
    [ $# -le 4 ] || usage
    days=${4:-3650}
    # A new key would strand every certificate the old one signed.
    [ ! -e "$dir/$name.key" ] || die "$dir/$name.key exists: remove it to make a new CA"
    ;;
  cert)
    [ $# -ge 4 ] && [ $# -le 6 ] || usage
    ca=$4 days=${5:-3650} addresses=${6:-IP:127.0.0.1,DNS:localhost}
    [[ "$addresses" =~ ^(IP|DNS):[^,[:space:]]+(,(IP|DNS):[^,[:space:]]+)*$ ]] ||
      die "ADDRESSES must be IP:... or DNS:... joined by commas, not '$addresses'"
    [ "$name" != "$ca" ] || die "a certificate named like its CA would overwrite the CA's key"
    [ -f "$dir/$ca.pem" ] && [ -f "$dir/$ca.key" ] || die "no CA $dir/$ca.pem and $dir/$ca.key"
    ;;
  *) usage ;;
esac
[[ "$days" =~ ^(-1|[0-9]+)$ ]] || die "DAYS must be -1 or a whole number of days, not '$days'"
# A directory made here holds keys: only its owner may read it. One that exists is left as it is.
[ -d "$dir" ] || (umask 077 && mkdir -p "$dir")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# openssl's errors go to the caller; its progress chatter does not.
quiet() { "$@" 2>"$work/err" || { cat "$work/err" >&2; die "$1 $2 failed"; }; }
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

if [ "$kind" = ca ]; then
  quiet openssl req -x509 "${ec[@]}" -days "$days" -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.pem"
else
  printf 'subjectAltName=%s\n' "$addresses" >"$work/san.ext"
  quiet openssl req "${ec[@]}" -subj "/CN=$name" -keyout "$dir/$name.key" -out "$work/req.csr"
  quiet openssl x509 -req -days "$days" -in "$work/req.csr" -CA "$dir/$ca.pem" \
    -CAkey "$dir/$ca.key" -CAcreateserial -extfile "$work/san.ext" -out "$dir/$name.pem"
fi
