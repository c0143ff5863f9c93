#!/usr/bin/env bash
# An independent check of VerifyKey throughput with h2load (nghttp2), which knows nothing of gRPC:
# it replays one pre-encoded VerifyKey request.
#   scripts/h2load-verify.sh [--seconds N] [--clients C] [--streams M]
#                            [--target ADDR --key-file FILE [--metrics ADDR]]
# Without --target it serves a development instance on a scratch data directory and a free
# port (like scripts/dev.sh; the binary is $KEYWARD_BIN, else a release build), and stops it at
# the end. --key-file: a key holding keyward:keys:create and keyward:verify (e.g.
# DATA_DIR/root.key). A key to verify is created with grpcurl. h2load sees only HTTP 200 (the
# gRPC status is in trailers), so the script first sends the same request with curl and checks
# grpc-status 0 and VALID, then compares the server's keyward_verify_outcomes_total{code="VALID"}
# before and after the run with h2load's successes, within the C x M calls cut off when the run
# ends (needs the metrics address: --metrics, or the
# scratch instance's). Exits 1 on any mismatch. Defaults: 10 s, 16 clients, 16 streams each.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10 clients=16 streams=16 target="" key_file="" metrics=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --key-file) key_file=$2; shift 2 ;;
    --metrics) metrics=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "h2load-verify: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "h2load-verify: $*" >&2; }
die() { log "$*"; exit 1; }

for dir in "$HOME/.local/bin" "${PYENV_ROOT:-$HOME/.pyenv}/shims"; do
  [ -d "$dir" ] && PATH="$PATH:$dir"
done
for tool in h2load curl grpcurl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: run scripts/install-deps.sh"
done

scratch=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

if [ -z "$target" ]; then
  bin=${KEYWARD_BIN:-}
  if [ -z "$bin" ]; then
    cargo build --release --quiet --bin keyward
    bin="${CARGO_TARGET_DIR:-target}/release/keyward"
  fi
  data="$scratch/data"
  "$bin" init --dev --data-dir "$data" >/dev/null 2>"$scratch/init.log" || { cat "$scratch/init.log" >&2; die "keyward init failed"; }
  RUST_LOG=warn "$bin" serve --dev --data-dir "$data" --listen 127.0.0.1:0 --addr-file "$scratch/addr" \
    --metrics-listen 127.0.0.1:0 --metrics-addr-file "$scratch/metrics-addr" 2>"$scratch/serve.log" &
  server_pid=$!
  for _ in $(seq 300); do
    [ -s "$scratch/addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$scratch/serve.log" >&2; die "keyward serve exited"; }
    sleep 0.1
  done
  [ -s "$scratch/addr" ] || die "keyward serve did not start in 30 s"
  target=$(cat "$scratch/addr")
  metrics=$(cat "$scratch/metrics-addr")
  key_file="$data/root.key"
  log "serving a scratch instance on $target (pid $server_pid)"
fi
[ -n "$key_file" ] || die "--target needs --key-file"
admin=$(head -n1 "$key_file" | tr -d '[:space:]')

# A key to verify.
created=$(grpcurl -plaintext -H "authorization: Bearer $admin" -d '{"name":"h2load"}' "$target" \
  keyward.v1.KeyService/CreateKey) || die "CreateKey failed"
key=$(sed -n 's/^ *"key": *"\([^"]*\)".*/\1/p' <<<"$created" | head -n1)
[ -n "$key" ] || die "no key in the CreateKey answer"

# VerifyKeyRequest { key = 1 } in protobuf (tag 0x0a, one-byte length: keys are < 128 bytes),
# in a gRPC frame: uncompressed flag 0, 4-byte big-endian length.
len=${#key}
[ "$len" -lt 128 ] || die "unexpected key length $len"
body="$scratch/body.bin"
printf "\\x00\\x00\\x00\\x00\\x$(printf %02x $((len + 2)))\\x0a\\x$(printf %02x "$len")%s" "$key" >"$body"

# The same bytes once through curl: grpc-status 0 and VerifyKeyResponse { valid = true, code = VALID }.
url="http://$target/keyward.v1.VerifyService/VerifyKey"
curl -sS --http2-prior-knowledge -D "$scratch/headers" -o "$scratch/answer.bin" -H 'content-type: application/grpc' \
  -H 'te: trailers' -H "authorization: Bearer $admin" --data-binary "@$body" "$url" || die "curl failed"
grep -qi '^grpc-status: *0' "$scratch/headers" || { cat "$scratch/headers" >&2; die "the request is not answered grpc-status 0"; }
answer=$(od -An -tx1 -j5 -N4 "$scratch/answer.bin" | tr -d ' \n')
[ "$answer" = 08011001 ] || die "the answer is not VALID (message starts $answer)"
log "one request checked: grpc-status 0, VALID"

valid_count() {
  curl -sS "http://$metrics/metrics" | sed -n 's/^keyward_verify_outcomes_total{code="VALID"} \([0-9.e+]*\)$/\1/p' | head -n1
}
before=""
[ -n "$metrics" ] && before=$(valid_count)

out="$scratch/h2load.out"
h2load -D "$seconds" -c "$clients" -m "$streams" -H 'content-type: application/grpc' -H 'te: trailers' \
  -H "authorization: Bearer $admin" -d "$body" "$url" >"$out" || { cat "$out" >&2; die "h2load failed"; }
grep -E '^(finished in|requests:|status codes:)' "$out" || true
grep -E -A1 '^ +min +max' "$out" | head -n2 || true
succeeded=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$out")
rate=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$out")
[ -n "$succeeded" ] && [ -n "$rate" ] || die "cannot read h2load's summary"
[ "$succeeded" -gt 0 ] || die "no request succeeded"

if [ -n "$metrics" ]; then
  # h2load drops the calls still out when --seconds ends; the server may answer them VALID.
  sleep 0.5
  after=$(valid_count)
  valid=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%d", a - b }')
  slack=$((clients * streams))
  log "server counted $valid VALID answers; h2load counted $succeeded HTTP 200 (up to $slack cut off at the end)"
  if [ "$valid" -lt "$succeeded" ] || [ "$valid" -gt $((succeeded + slack)) ]; then
    die "VALID answers ($valid) do not match h2load's successes ($succeeded): some answers were not VALID"
  fi
else
  log "no --metrics address: VALID answers not counted on the server"
fi
echo "VerifyKey via h2load: $rate req/s (${clients} clients x ${streams} streams, ${seconds} s)"
