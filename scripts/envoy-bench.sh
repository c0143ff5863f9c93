#!/usr/bin/env bash
# Envoy in front of a service, with and without keyward, measured in one run by h2load:
#   no-auth       Envoy alone (deploy/envoy/bench/no-auth.yaml)
#   api-key-auth  Envoy's built-in static-key filter (deploy/envoy/bench/api-key-auth.yaml)
#   ext-authz     Envoy + ext_authz -> keyward over loopback TCP (deploy/envoy/envoy.yaml)
#   ext-authz-unix  the same over a Unix socket (keyward --listen unix:PATH; Envoy `pipe`)
#   ext-authz-null  with --null-check: the same Envoy configuration, its Check server one that
#                 allows everything at once (`keyward-bench null-authz`): what ext_authz costs
#                 Envoy itself, the ceiling of any Check server on this machine
#
#   scripts/envoy-bench.sh [--seconds N] [--rounds R] [--clients C] [--streams M]
#                          [--envoy-threads T] [--null-check] [--quick]
#
# Each round runs every configuration in turn (rounds interleave, so that drift of this machine
# touches all alike), twice: under load (C connections x M streams, h2c) for requests/s and
# latency, then one request at a time (1 connection, 1 stream) for the latency a request gets on
# an idle path. Percentiles come from h2load's per-request log (--log-file), over every round.
# Every request must be answered 2xx: a refusal (4xx) or a failure (5xx) stops the bench. Before
# measuring, each configuration is checked with curl: 200 with the key and, where keys are
# checked, 401 without.
#
# One development keyward (scratch data directory and SoftHSM2 token; the binary is
# $KEYWARD_BIN, else a release build), front Envoys with --concurrency T (default 1), an upstream
# Envoy that answers 200 itself, and h2load (one thread) share this machine. Prints a markdown table on
# stdout; progress on stderr. Defaults: 5 s per measurement, 3 rounds, 8 connections x 8 streams.
# --quick: 1 s, 1 round (what the test of this script runs).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=5 rounds=3 clients=8 streams=8 envoy_threads=1 null_check=
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    --envoy-threads) envoy_threads=$2; shift 2 ;;
    --quick) seconds=1 rounds=1; shift ;;
    --null-check) null_check=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    *) echo "envoy-bench: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "envoy-bench: $*" >&2; }
die() { log "$*"; exit 1; }

for dir in "$HOME/.local/bin" "${PYENV_ROOT:-$HOME/.pyenv}/shims"; do
  [ -d "$dir" ] && PATH="$PATH:$dir"
done
for tool in envoy h2load curl grpcurl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: run scripts/install-deps.sh"
done

scratch=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT

# `render TEMPLATE OUT NAME=VALUE...`: TEMPLATE with each ${NAME} replaced; fails on any left.
render() {
  local template=$1 out=$2 text pair
  shift 2
  text=$(cat "$template")
  for pair in "$@"; do
    text=${text//"\${${pair%%=*}}"/${pair#*=}}
  done
  if grep -q '\${' <<<"$text"; then
    die "$template: placeholders left: $(grep -o '\${[A-Z_]*}' <<<"$text" | sort -u | tr '\n' ' ')"
  fi
  printf '%s\n' "$text" >"$out"
}

declare -A envoy_pid
# `start_envoy NAME CONFIG [THREADS]`: runs Envoy on CONFIG with THREADS workers (default
# --envoy-threads), waits until ready; sets $admin.
start_envoy() {
  local name=$1 config=$2 threads=${3:-$envoy_threads}
  envoy --config-path "$config" --admin-address-path "$scratch/$name.admin" --disable-hot-restart \
    --concurrency "$threads" --log-level warning >"$scratch/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  envoy_pid[$name]=$pid
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { cat "$scratch/$name.log" >&2; die "envoy ($name) exited"; }
    if [ -s "$scratch/$name.admin" ] && [ "$(curl -s "http://$(cat "$scratch/$name.admin")/ready")" = LIVE ]; then
      admin=$(cat "$scratch/$name.admin")
      return
    fi
    sleep 0.1
  done
  die "envoy ($name) was not ready in 30 s"
}

# `listener ADMIN NAME`: the address Envoy bound for listener NAME (port 0 in the configuration).
listener() {
  curl -s "http://$1/listeners" | sed -n "s/^$2::\(.*\)$/\1/p"
}

# --- keyward: a development instance, a gateway key and a client key ------------------------
bin=${KEYWARD_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin keyward
  bin="${CARGO_TARGET_DIR:-target}/release/keyward"
fi
data="$scratch/data"
"$bin" init --dev --data-dir "$data" >/dev/null 2>"$scratch/init.log" || { cat "$scratch/init.log" >&2; die "keyward init failed"; }

# `serve DATA_DIR LISTEN NAME`: keyward serve in the background (its pid in $served), waits until
# it serves (its address file written, or its Unix socket there).
serve() {
  RUST_LOG=warn "$bin" serve --dev --data-dir "$1" --listen "$2" --addr-file "$scratch/$3.addr" \
    2>"$scratch/$3.log" &
  served=$!
  pids+=("$served")
  for _ in $(seq 300); do
    [ -s "$scratch/$3.addr" ] && return 0
    case "$2" in unix:*) [ -S "${2#unix:}" ] && return 0 ;; esac
    kill -0 "$served" 2>/dev/null || { cat "$scratch/$3.log" >&2; die "keyward serve --listen $2 exited"; }
    sleep 0.1
  done
  die "keyward serve ($3) did not start in 30 s"
}

serve "$data" 127.0.0.1:0 keyward
keyward_tcp_pid=$served
keyward_addr=$(cat "$scratch/keyward.addr")
root=$(head -n1 "$data/root.key" | tr -d '[:space:]')
create_key() {
  grpcurl -plaintext -H "authorization: Bearer $root" -d "$1" "$keyward_addr" keyward.v1.KeyService/CreateKey |
    sed -n 's/^ *"key": *"\([^"]*\)".*/\1/p' | head -n1
}
gateway_key=$(create_key '{"name":"envoy","scopes":["keyward:verify"]}')
client_key=$(create_key '{"name":"bench-client","scopes":["orders:read"]}')
[ -n "$gateway_key" ] && [ -n "$client_key" ] || die "CreateKey failed"

# The Unix socket: a second keyward on a copy of the same instance (same keys, same HSM token;
# copied while stopped), listening on a socket. Skipped, with a message, while keyward has no
# Unix listener.
unix_socket="$scratch/keyward.sock"
variants=(no-auth api-key-auth ext-authz)
if "$bin" serve --help 2>/dev/null | grep -q 'unix:'; then
  kill -TERM "$served" && wait "$served" || true
  cp -a "$data" "$scratch/data-unix"
  serve "$data" 127.0.0.1:0 keyward-tcp
  keyward_tcp_pid=$served
  keyward_addr=$(cat "$scratch/keyward-tcp.addr")
  serve "$scratch/data-unix" "unix:$unix_socket" keyward-unix
  keyward_unix_pid=$served
  variants+=(ext-authz-unix)
  log "keyward on $keyward_addr and unix:$unix_socket"
else
  log "keyward on $keyward_addr"
  log "ext-authz-unix skipped: needs keyward's Unix-socket listener (keyward serve --listen unix:PATH)"
fi

# The null Check server ($KEYWARD_BENCH_BIN, else a release build of keyward-bench).
if [ -n "$null_check" ]; then
  bench_bin=${KEYWARD_BENCH_BIN:-}
  if [ -z "$bench_bin" ]; then
    cargo build --release --quiet -p keyward-bench
    bench_bin="${CARGO_TARGET_DIR:-target}/release/keyward-bench"
  fi
  "$bench_bin" null-authz --listen 127.0.0.1:0 --addr-file "$scratch/null.addr" 2>"$scratch/null.log" &
  null_pid=$!
  pids+=("$null_pid")
  for _ in $(seq 300); do
    [ -s "$scratch/null.addr" ] && break
    kill -0 "$null_pid" 2>/dev/null || { cat "$scratch/null.log" >&2; die "keyward-bench null-authz exited"; }
    sleep 0.1
  done
  [ -s "$scratch/null.addr" ] || die "the null Check server did not start in 30 s"
  null_addr=$(cat "$scratch/null.addr")
  variants+=(ext-authz-null)
fi

# --- Envoys --------------------------------------------------------------------------------
render deploy/envoy/bench/upstream.yaml "$scratch/upstream.yaml" UPSTREAM_PORT=0 ADMIN_PORT=0
start_envoy upstream "$scratch/upstream.yaml" 1
upstream=$(listener "$admin" upstream)
common=(LISTEN_ADDRESS=127.0.0.1 LISTEN_PORT=0 ADMIN_PORT=0 ACCESS_LOG_PATH=/dev/null
        "UPSTREAM_ADDRESS=${upstream%:*}" "UPSTREAM_PORT=${upstream##*:}")
authz=("KEYWARD_ADDRESS=${keyward_addr%:*}" "KEYWARD_PORT=${keyward_addr##*:}" "KEYWARD_GATEWAY_KEY=$gateway_key")
render deploy/envoy/bench/no-auth.yaml "$scratch/no-auth.yaml" "${common[@]}"
render deploy/envoy/bench/api-key-auth.yaml "$scratch/api-key-auth.yaml" "${common[@]}" "STATIC_KEY=$client_key"
render deploy/envoy/envoy.yaml "$scratch/ext-authz.yaml" "${common[@]}" "${authz[@]}"
# The Unix-socket variant: the same file, keyward's endpoint a `pipe` address.
sed "s|socket_address: { address: \"${keyward_addr%:*}\", port_value: ${keyward_addr##*:} }|pipe: { path: \"$unix_socket\" }|" \
  "$scratch/ext-authz.yaml" >"$scratch/ext-authz-unix.yaml"
grep -q "pipe: { path" "$scratch/ext-authz-unix.yaml" || die "could not point ext-authz-unix.yaml at the socket"
if [ -n "$null_check" ]; then
  render deploy/envoy/envoy.yaml "$scratch/ext-authz-null.yaml" "${common[@]}" \
    "KEYWARD_ADDRESS=${null_addr%:*}" "KEYWARD_PORT=${null_addr##*:}" "KEYWARD_GATEWAY_KEY=$gateway_key"
fi

declare -A front
path=/orders/1
for v in "${variants[@]}"; do
  start_envoy "$v" "$scratch/$v.yaml"
  front[$v]=$(listener "$admin" ingress)
  url="http://${front[$v]}$path"
  with=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $client_key" "$url")
  without=$(curl -s -o /dev/null -w '%{http_code}' "$url")
  expected_without=401
  [ "$v" = no-auth ] || [ "$v" = ext-authz-null ] && expected_without=200
  [ "$with" = 200 ] && [ "$without" = "$expected_without" ] ||
    die "$v: $with with the key, $without without (expected 200 and $expected_without)"
  log "$v on ${front[$v]}: 200 with the key, $without without"
done

# `cpu_ticks PID`: the CPU time (user + system, clock ticks) a process used so far.
cpu_ticks() {
  awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
declare -A server_pid=([ext-authz]=$keyward_tcp_pid)
[ -n "${keyward_unix_pid:-}" ] && server_pid[ext-authz-unix]=$keyward_unix_pid
[ -n "${null_pid:-}" ] && server_pid[ext-authz-null]=$null_pid
tick_us=$((1000000 / $(getconf CLK_TCK)))

# --- Measurements --------------------------------------------------------------------------
# `measure VARIANT MODE CONNECTIONS STREAMS`: one h2load run; appends its rate to
# $scratch/VARIANT.MODE.rates and its per-request latencies (µs) to $scratch/VARIANT.MODE.us.
measure() {
  local v=$1 mode=$2 out="$scratch/h2load.out" requests
  rm -f "$scratch/h2load.log" # h2load appends to its log file
  local front_before upstream_before server_before=0
  front_before=$(cpu_ticks "${envoy_pid[$v]}")
  upstream_before=$(cpu_ticks "${envoy_pid[upstream]}")
  [ -n "${server_pid[$v]:-}" ] && server_before=$(cpu_ticks "${server_pid[$v]}")
  h2load -D "$seconds" -c "$3" -m "$4" -t 1 --log-file "$scratch/h2load.log" \
    -H "authorization: Bearer $client_key" "http://${front[$v]}$path" >"$out" 2>&1 ||
    { cat "$out" >&2; die "$v: h2load failed"; }
  grep -q '^status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx' "$out" ||
    { grep -E '^(requests|status codes):' "$out" >&2; die "$v: not every answer was 2xx"; }
  requests=$(sed -n 's/^requests: .* \([0-9]*\) succeeded, 0 failed, 0 errored.*/\1/p' "$out")
  [ -n "$requests" ] && [ "$requests" -gt 0 ] || { grep '^requests:' "$out" >&2; die "$v: failed or no requests"; }
  sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$out" >>"$scratch/$v.$mode.rates"
  # CPU time the front Envoy, keyward and the upstream Envoy spent (µs), and the requests served.
  local server_used=0 front_used upstream_used
  [ -n "${server_pid[$v]:-}" ] && server_used=$(( ($(cpu_ticks "${server_pid[$v]}") - server_before) * tick_us ))
  front_used=$(( ($(cpu_ticks "${envoy_pid[$v]}") - front_before) * tick_us ))
  upstream_used=$(( ($(cpu_ticks "${envoy_pid[upstream]}") - upstream_before) * tick_us ))
  echo "$front_used $server_used $upstream_used $requests" >>"$scratch/$v.$mode.cpu"
  awk -F'\t' '$2 == 200 { print $3 }' "$scratch/h2load.log" >>"$scratch/$v.$mode.us"
}

for round in $(seq "$rounds"); do
  for v in "${variants[@]}"; do
    log "round $round/$rounds: $v"
    measure "$v" load "$clients" "$streams"
    measure "$v" single 1 1
  done
done

# `figures VARIANT MODE`: "req/s p50_ms p99_ms" (mean rate over rounds; percentiles over all).
figures() {
  local rate p50 p99
  rate=$(awk '{ s += $1 } END { printf "%.0f", s / NR }' "$scratch/$1.$2.rates")
  sort -n "$scratch/$1.$2.us" >"$scratch/sorted"
  read -r p50 p99 < <(awk '{ v[NR] = $1 } END {
    i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
    printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }' "$scratch/sorted")
  echo "$rate $p50 $p99"
}

declare -A load_rate load_p50 load_p99 single_p50 single_p99 single_rate
for v in "${variants[@]}"; do
  read -r load_rate[$v] load_p50[$v] load_p99[$v] < <(figures "$v" load)
  read -r single_rate[$v] single_p50[$v] single_p99[$v] < <(figures "$v" single)
done

echo "Envoy 1.40 front (--concurrency $envoy_threads), h2c; ${rounds} round(s) of ${seconds} s per measurement; load: ${clients} connections x ${streams} streams; single: 1 x 1"
echo
echo "| configuration | req/s (load) | p50 ms (load) | p99 ms (load) | req/s (single) | p50 ms (single) | p99 ms (single) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for v in "${variants[@]}"; do
  echo "| $v | ${load_rate[$v]} | ${load_p50[$v]} | ${load_p99[$v]} | ${single_rate[$v]} | ${single_p50[$v]} | ${single_p99[$v]} |"
done
echo
echo "CPU per request under load (µs, all rounds): front Envoy / keyward / upstream Envoy"
for v in "${variants[@]}"; do
  awk -v v="$v" '{ f += $1; s += $2; u += $3; n += $4 }
    END { printf "- %s: %.0f / %.0f / %.0f\n", v, f / n, s / n, u / n }' "$scratch/$v.load.cpu"
done
echo
for v in ext-authz ext-authz-unix ext-authz-null; do
  [ -n "${load_rate[$v]:-}" ] || continue
  pct=$(awk -v a="${load_rate[$v]}" -v b="${load_rate[api-key-auth]}" 'BEGIN { printf "%.1f", 100 * a / b }')
  added=$(awk -v a="${single_p50[$v]}" -v b="${single_p50[no-auth]}" 'BEGIN { printf "%.3f", a - b }')
  added_load=$(awk -v a="${load_p50[$v]}" -v b="${load_p50[no-auth]}" 'BEGIN { printf "%.3f", a - b }')
  verdict_rate=$(awk -v p="$pct" 'BEGIN { print (p >= 70 ? "PASS" : "MISS") }')
  verdict_p50=$(awk -v d="$added" 'BEGIN { print (d < 1 ? "PASS" : "MISS") }')
  echo "- $v: ${pct} % of api-key-auth's req/s under load (goal >= 70 %: $verdict_rate); p50 added over no-auth: ${added} ms one at a time (goal < 1 ms: $verdict_p50), ${added_load} ms under load"
done
