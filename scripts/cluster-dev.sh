#!/usr/bin/env bash
# Runs a development cluster on loopback, in the foreground, until Ctrl-C:
#   3 etcd members   clients http://127.0.0.1:2379, :22379, :32379 (peers :2380, :22380, :32380)
#   3 keyward nodes  n1 127.0.0.1:50061, n2 127.0.0.1:50062, n3 127.0.0.1:50063
# Everything lives under $KEYWARD_CLUSTER_DIR (default ./cluster-dev): etcd/ (the members' data),
# data/ (the nodes' shared development token, keyward.toml and root.key; each node's own state in
# data/nodes/<id>/), logs/. The first run installs what is missing, builds keyward (release) and
# runs `keyward init --dev --etcd`; later runs reuse the data. Delete the directory to start over.
# Overrides (the integration test uses them): KEYWARD_BIN=path runs that keyward binary instead of
# building one; KEYWARD_CLUSTER_ETCD_PORTS, KEYWARD_CLUSTER_PEER_PORTS and KEYWARD_CLUSTER_NODE_PORTS
# (three space-separated ports each) replace the ports above.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "cluster-dev: $*" >&2; }

read -r -a ETCD_CLIENT_PORTS <<<"${KEYWARD_CLUSTER_ETCD_PORTS:-2379 22379 32379}"
read -r -a ETCD_PEER_PORTS <<<"${KEYWARD_CLUSTER_PEER_PORTS:-2380 22380 32380}"
read -r -a NODE_PORTS <<<"${KEYWARD_CLUSTER_NODE_PORTS:-50061 50062 50063}"
if [ ${#ETCD_CLIENT_PORTS[@]} -ne 3 ] || [ ${#ETCD_PEER_PORTS[@]} -ne 3 ] || [ ${#NODE_PORTS[@]} -ne 3 ]; then
  log "KEYWARD_CLUSTER_ETCD_PORTS, _PEER_PORTS and _NODE_PORTS need three ports each"
  exit 2
fi
NODE_IDS=(n1 n2 n3)
NODE_ADDRS=("127.0.0.1:${NODE_PORTS[0]}" "127.0.0.1:${NODE_PORTS[1]}" "127.0.0.1:${NODE_PORTS[2]}")

bash scripts/install-deps.sh
if [ -n "${KEYWARD_BIN:-}" ]; then
  BIN=$(realpath "$KEYWARD_BIN")
else
  cargo build --release -p keyward
  BIN=$PWD/target/release/keyward
fi
ETCD=$(command -v etcd || echo /usr/bin/etcd)

mkdir -p "${KEYWARD_CLUSTER_DIR:-./cluster-dev}"
DIR=$(cd "${KEYWARD_CLUSTER_DIR:-./cluster-dev}" && pwd)
mkdir -p "$DIR/etcd" "$DIR/logs" "$DIR/run"
DATA=$DIR/data

# Something already listening on a port this cluster needs (another cluster-dev.sh, Debian's
# etcd service on 2379) would make a member or node fail later, less clearly.
for port in "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}" "${NODE_ADDRS[@]##*:}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "127.0.0.1:$port is in use: stop what listens there (e.g. \`systemctl stop etcd\`) and run again"
    exit 1
  fi
done

PIDS=()
stop_all() {
  trap - INT TERM EXIT
  if [ ${#PIDS[@]} -gt 0 ]; then
    log "stopping"
    # keyward nodes first (they drain), then etcd.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
      kill -TERM "${PIDS[$i]}" 2>/dev/null || true
      wait "${PIDS[$i]}" 2>/dev/null || true
    done
  fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# --- etcd --------------------------------------------------------------------------------------
initial_cluster=""
urls=""
for i in 0 1 2; do
  initial_cluster+="${initial_cluster:+,}m$i=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
  urls+="${urls:+,}http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}"
done
for i in 0 1 2; do
  client="http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}"
  peer="http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
  # A member with data in its directory rejoins; the initial-cluster flags are then ignored.
  "$ETCD" --name "m$i" --data-dir "$DIR/etcd/m$i" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$initial_cluster" --initial-cluster-state new \
    --initial-cluster-token keyward-dev --logger zap --log-outputs stderr \
    </dev/null >/dev/null 2>>"$DIR/logs/etcd-m$i.log" &
  PIDS+=($!)
done

healthy=""
for _ in $(seq 1 150); do
  if ETCDCTL_API=3 etcdctl --endpoints="$urls" --command-timeout=1s endpoint health >/dev/null 2>&1; then
    healthy=1
    break
  fi
  sleep 0.2
done
[ -n "$healthy" ] || { log "etcd did not become healthy in 30 s; see $DIR/logs/etcd-m*.log"; exit 1; }

# --- keyward -----------------------------------------------------------------------------------
if [ ! -f "$DATA/root.key" ]; then
  log "first run: keyward init --dev --etcd (token, master key, the cluster's state in etcd)"
  if ! "$BIN" init --dev --data-dir "$DATA" --etcd "$urls" >/dev/null; then
    log "keyward init failed. If etcd already holds a cluster from an earlier, interrupted run,"
    log "start over: stop this script and delete $DIR"
    exit 1
  fi
fi

for i in 0 1 2; do
  id=${NODE_IDS[$i]}
  rm -f "$DIR/run/$id.addr"
  "$BIN" serve --dev --data-dir "$DATA" --etcd "$urls" --node-id "$id" \
    --listen "${NODE_ADDRS[$i]}" --addr-file "$DIR/run/$id.addr" \
    </dev/null >/dev/null 2>>"$DIR/logs/keyward-$id.log" &
  PIDS+=($!)
done
for i in 0 1 2; do
  id=${NODE_IDS[$i]}
  for _ in $(seq 1 300); do
    [ -s "$DIR/run/$id.addr" ] && break
    kill -0 "${PIDS[$((i + 3))]}" 2>/dev/null || { log "node $id exited; see $DIR/logs/keyward-$id.log"; exit 1; }
    sleep 0.1
  done
  [ -s "$DIR/run/$id.addr" ] || { log "node $id did not start in 30 s; see $DIR/logs/keyward-$id.log"; exit 1; }
done

cat <<EOF

keyward cluster running (Ctrl-C stops it all):
  node n1   ${NODE_ADDRS[0]}    log $DIR/logs/keyward-n1.log
  node n2   ${NODE_ADDRS[1]}    log $DIR/logs/keyward-n2.log
  node n3   ${NODE_ADDRS[2]}    log $DIR/logs/keyward-n3.log
  etcd      $urls
  root key  $DATA/root.key

Create a key on n1, verify it on n2, revoke it on n3, and see n1 refuse it:
  ROOT=\$(cat $DATA/root.key)
  CREATED=\$(grpcurl -plaintext -H "authorization: Bearer \$ROOT" -d '{"name":"demo"}' \\
      ${NODE_ADDRS[0]} keyward.v1.KeyService/CreateKey)
  KEY=\$(sed -n 's/^  "key": "\(.*\)",\$/\1/p' <<<"\$CREATED")
  KEY_ID=\$(sed -n 's/^    "keyId": "\(.*\)",\$/\1/p' <<<"\$CREATED")
  grpcurl -plaintext -H "authorization: Bearer \$ROOT" -d '{"key":"'\$KEY'"}' \\
      ${NODE_ADDRS[1]} keyward.v1.VerifyService/VerifyKey
  grpcurl -plaintext -H "authorization: Bearer \$ROOT" -d '{"key_id":"'\$KEY_ID'"}' \\
      ${NODE_ADDRS[2]} keyward.v1.KeyService/RevokeKey
  grpcurl -plaintext -H "authorization: Bearer \$ROOT" -d '{"key":"'\$KEY'"}' \\
      ${NODE_ADDRS[0]} keyward.v1.VerifyService/VerifyKey
EOF

# In the foreground until Ctrl-C, or until a member or node exits by itself.
set +e
wait -n "${PIDS[@]}"
log "a process of the cluster exited; see $DIR/logs/ (stopping the rest)"
exit 1
