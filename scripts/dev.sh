#!/usr/bin/env bash
# Installs what is missing, then serves a development instance: a SoftHSM2 token, master key,
# database and root key made in ./keyward-data on first run (root key in keyward-data/root.key).
# Listens on 127.0.0.1:50051; extra arguments go to `keyward serve` (e.g. --listen 0.0.0.0:50051).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec cargo run --release -p keyward -- serve --dev --data-dir "${KEYWARD_DATA_DIR:-./keyward-data}" "$@"
