#!/usr/bin/env bash
# Runs keyward's fuzz targets (fuzz/, cargo-fuzz with libFuzzer), installing what is missing:
# the nightly toolchain and cargo-fuzz.
#   scripts/fuzz.sh                  every target, 60 s each
#   scripts/fuzz.sh TARGET [SECONDS] one target
#   scripts/fuzz.sh all SECONDS      every target, SECONDS each
# Targets: key_parse, store_codec_key, store_codec_event, usage_codec. A crash leaves its input
# in fuzz/artifacts/TARGET/; replay it with `cargo +nightly fuzz run TARGET FILE` in fuzz/.
# The committed seeds are in fuzz/corpus/TARGET/seed-*; what a run adds there is ignored by git.
# FUZZ_FLAGS: more `cargo fuzz run` flags, e.g. "--dev" (unoptimized: builds faster, runs slower).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

target=${1:-all}
seconds=${2:-60}
targets=(key_parse store_codec_key store_codec_event usage_codec)

log() { echo "fuzz: $*" >&2; }

if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ "$target" = all ]; then
  run=("${targets[@]}")
else
  run=("$target")
fi
for t in "${run[@]}"; do
  log "$t for ${seconds} s"
  mkdir -p "corpus/$t"
  # -rss_limit_mb: a decoder that allocates for what the bytes claim, not what they hold,
  # fails the run.
  # shellcheck disable=SC2086
  cargo +nightly fuzz run ${FUZZ_FLAGS:-} "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=512 -max_len=4096
done
