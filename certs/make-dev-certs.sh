#!/usr/bin/env sh
# Makes a DEVELOPMENT certificate set for sluice's TLS listener with openssl:
#
#   ca.pem / ca.key           a self-signed CA (10 years)
#   server.pem / server.key   server certificate for localhost and 127.0.0.1 (SANs)
#   client.pem / client.key   client certificate, CN device-1 (mutual TLS,
#                             use_identity_as_username)
#   ca.crl                    an (empty) CRL signed by the CA, for crl_file
#
# All PEM; private keys are mode 0600. Usage: certs/make-dev-certs.sh [OUTDIR]
# (default certs/out, which git ignores). Existing files in OUTDIR are replaced.
#
# Never use these in production: the CA key sits next to the certificates it signs.
set -eu

OUT=${1:-certs/out}
DAYS=${DAYS:-825}

command -v openssl >/dev/null 2>&1 || {
    echo "make-dev-certs.sh: openssl not found (Debian/Ubuntu: apt-get install openssl)" >&2
    exit 1
}

mkdir -p "$OUT"
# Keys and everything else we write are private until chmod'ed otherwise.
umask 077
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM

# A minimal CA database so `openssl ca -gencrl` can sign a CRL.
mkdir -p "$WORK/db"
: >"$WORK/db/index.txt"
echo 1000 >"$WORK/db/crlnumber"
cat >"$WORK/ca.cnf" <<EOF
[ ca ]
default_ca = dev_ca
[ dev_ca ]
database = $WORK/db/index.txt
crlnumber = $WORK/db/crlnumber
default_md = sha256
default_crl_days = $DAYS
[ v3_ca ]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
[ client ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF

# EC P-256 keys, written as PKCS#8 (sluice also reads PKCS#1 and SEC1).
newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

newkey "$OUT/ca.key"
openssl req -new -x509 -key "$OUT/ca.key" -sha256 -days 3650 \
    -subj "/O=sluice development/CN=sluice dev CA" \
    -config "$WORK/ca.cnf" -extensions v3_ca -out "$OUT/ca.pem"

# sign NAME CN EXTENSIONS
sign() {
    newkey "$OUT/$1.key"
    openssl req -new -key "$OUT/$1.key" -subj "/O=sluice development/CN=$2" \
        -out "$WORK/$1.csr"
    openssl x509 -req -in "$WORK/$1.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" \
        -CAcreateserial -CAserial "$WORK/ca.srl" -days "$DAYS" -sha256 \
        -extfile "$WORK/ca.cnf" -extensions "$3" -out "$OUT/$1.pem" 2>/dev/null
}

sign server localhost server
sign client device-1 client

openssl ca -gencrl -config "$WORK/ca.cnf" -keyfile "$OUT/ca.key" -cert "$OUT/ca.pem" \
    -out "$OUT/ca.crl" 2>/dev/null

chmod 0600 "$OUT/ca.key" "$OUT/server.key" "$OUT/client.key"
chmod 0644 "$OUT/ca.pem" "$OUT/server.pem" "$OUT/client.pem" "$OUT/ca.crl"

# Fail loudly if anything does not chain up.
openssl verify -CAfile "$OUT/ca.pem" "$OUT/server.pem" "$OUT/client.pem" >/dev/null
openssl crl -in "$OUT/ca.crl" -CAfile "$OUT/ca.pem" -noout 2>/dev/null

echo "development certificates written to $OUT:"
ls -l "$OUT"
