#!/usr/bin/env bash
# The wheel as a user gets it: python/build_wheel.py packs the built extension, pip
# installs the wheel into a fresh venv (offline: Debian's numpy through
# --system-site-packages), and the quickstart runs from that venv, outside the source
# tree, against the server built here.
set -euo pipefail
python="${PQKV_PYTHON:-/usr/bin/python3}"
root="$PWD"
work="${TEST_TMPDIR:-$(mktemp -d)}"
wheel=$("$python" python/build_wheel.py --native python/pqkv/_native.so --out "$work/dist")
case "$(basename "$wheel")" in
  pqkv-*-cp3*-linux_*.whl) ;;
  *) echo "unexpected wheel name: $wheel"; exit 1 ;;
esac
"$python" -m venv --system-site-packages "$work/venv"
"$work/venv/bin/pip" install --quiet --no-index "$wheel"
cd "$work"  # nothing of the source tree on the path
version=$("$work/venv/bin/python" -c "import pqkv; print(pqkv.__version__)")
echo "installed pqkv $version from $(basename "$wheel")"
case "$(basename "$wheel")" in
  "pqkv-$version-"*) ;;
  *) echo "the wheel's version is not the package's ($version)"; exit 1 ;;
esac
"$work/venv/bin/python" -c "import pqkv, sys; sys.exit(0 if pqkv.__file__.startswith('$work/venv') else 1)"
PQKV_SERVER_BINARY="$root/server/pqkv-server" "$work/venv/bin/python" \
  "$root/examples/python/quickstart.py" --layers=2 --tokens=2048
