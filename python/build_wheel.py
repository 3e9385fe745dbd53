"""Packs the pqkv Python SDK into a wheel: the package's sources, the native extension
Bazel built, and the .dist-info metadata (PEP 427 / PEP 376), with no build backend and
no network. scripts/build_wheel.sh runs it after `bazel build`.

    python3 python/build_wheel.py --native bazel-bin/python/pqkv/_native.so --out dist

The wheel is tagged for this interpreter and platform (cp311-cp311-linux_x86_64 on Debian
12): the extension is built against Debian's Python 3.11 headers and links Debian's
shared libraries (gRPC, protobuf, Abseil, UCX) that scripts/install_deps.sh installs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import os
import sys
import sysconfig
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def version(native: str) -> str:
    """The release the extension was built with (server/version.h): the package's
    version is the server's."""
    spec = importlib.util.spec_from_file_location("_native", native)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.version


def tag() -> str:
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{python}-{python}-{platform}"


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--native", required=True, help="the built pqkv/_native.so")
    parser.add_argument("--out", default="dist", help="folder to write the wheel into")
    args = parser.parse_args()

    release = version(args.native)
    files = {}  # path in the wheel -> (bytes, executable)
    package = os.path.join(HERE, "pqkv")
    for name in sorted(os.listdir(package)):
        if name.endswith(".py") or name == "py.typed":
            with open(os.path.join(package, name), "rb") as f:
                files[f"pqkv/{name}"] = (f.read(), False)
    with open(args.native, "rb") as f:
        files["pqkv/_native.so"] = (f.read(), True)

    dist_info = f"pqkv-{release}.dist-info"
    files[f"{dist_info}/METADATA"] = ("\n".join([
        "Metadata-Version: 2.1",
        "Name: pqkv",
        f"Version: {release}",
        "Summary: Python SDK of pqkv-server, a PQCache-style KV-cache retrieval service",
        f"Requires-Python: =={sys.version_info.major}.{sys.version_info.minor}.*",
        "Requires-Dist: numpy",
        "",
    ]).encode(), False)
    files[f"{dist_info}/WHEEL"] = ("\n".join([
        "Wheel-Version: 1.0",
        "Generator: pqkv python/build_wheel.py",
        "Root-Is-Purelib: false",
        f"Tag: {tag()}",
        "",
    ]).encode(), False)
    record = [record_line(name, data) for name, (data, _) in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = (("\n".join(record) + "\n").encode(), False)

    os.makedirs(args.out, exist_ok=True)
    wheel = os.path.join(args.out, f"pqkv-{release}-{tag()}.whl")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (data, executable) in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible
            info.external_attr = (0o755 if executable else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    print(wheel)


if __name__ == "__main__":
    main()
