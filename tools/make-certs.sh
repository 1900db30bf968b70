#!/usr/bin/env bash
# Make a private CA, a hub certificate and one certificate per VM (CN = VM name) with openssl.
# Usage: tools/make-certs.sh DIR HUB_NAME [VM ...]     e.g. tools/make-certs.sh /etc/rephub host2 web1 db1
# Hub:   rephub --tls-cert DIR/hub.pem --tls-key DIR/hub.key --tls-ca DIR/ca.pem ...
# Agent: rephub-agent --vm web1 --tls-cert DIR/web1.pem --tls-key DIR/web1.key --tls-ca DIR/ca.pem ...
set -euo pipefail
DIR=${1:?usage: $0 DIR HUB_NAME [VM ...]}; HUB=${2:?usage: $0 DIR HUB_NAME [VM ...]}; shift 2
mkdir -p "$DIR"; cd "$DIR"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1.key" 2>/dev/null; chmod 600 "$1.key"; }
[ -f ca.pem ] || { key ca; openssl req -x509 -new -key ca.key -out ca.pem -days 3650 -subj "/CN=rephub CA" 2>/dev/null; }
sign() { # name cn san
  key "$1"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  printf 'subjectAltName=%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days 825 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
SAN="DNS:$HUB"; [[ $HUB =~ ^[0-9.]+$ ]] && SAN="IP:$HUB"
sign hub "$HUB" "$SAN,DNS:localhost,IP:127.0.0.1"
for vm in "$@"; do sign "$vm" "$vm" "DNS:$vm"; done
echo "made in $DIR: ca.pem, hub.pem + hub.key$(for vm in "$@"; do printf ", %s.pem + %s.key" "$vm" "$vm"; done)"
