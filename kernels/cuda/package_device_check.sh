#!/usr/bin/env bash
# Packages the CUDA device check for a GPU machine that has no Bazel, no Debian packages
# and no network (the device machines lent to this project have the NVIDIA driver, nvcc,
# compute-sanitizer and python3, nothing of ours):
#
#   kernels/cuda/package_device_check.sh [DIR]      (DIR defaults to .device_check)
#
# Builds, with CUDA on (as scripts/test.sh does where nvcc exists), the three programs
# device_check.sh runs:
#   pq_retrieval_cuda_test  every CUDA kernel against the plain CPU kernels
#   layer_store_gpu_test    the server path: LayerStore's GPU Retrieve against its CPU one
#   cuda_timing             the timing table
# and writes DIR/device_check.tar.gz: bin/ (the programs), lib/ (every shared library
# they load that is not glibc's or the C++ runtime's: libabsl_*, OpenBLAS/LAPACK for
# FAISS, spdlog, fmt, gomp, ...) and lib-fallback/ (libstdc++ and libgcc_s, used only
# where the machine's own are missing or too old). The CUDA runtime is linked statically;
# the driver (libcuda) is the machine's. About 20 MB compressed; the device tool carries
# at most 64 MiB with the working tree. Then, on the GPU machine, from the repository root:
#
#   kernels/cuda/device_check.sh --prebuilt DIR
#
# Fails when a program loads a library that is neither packaged nor glibc's.
set -euo pipefail
cd "$(dirname "$0")/../.."
out_dir="${1:-.device_check}"

targets=(
  //tests/kernels/cuda:pq_retrieval_cuda_test
  //tests/server/store:layer_store_gpu_test
  //kernels/cuda:cuda_timing
)
if [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "package_device_check: /usr/local/cuda/bin/nvcc is missing: the CUDA programs cannot be built" >&2
  exit 1
fi
bazel build "${targets[@]}"

stage="$(mktemp -d)"
trap 'rm -rf "${stage}"' EXIT
mkdir -p "${stage}/bin" "${stage}/lib" "${stage}/lib-fallback"
for target in "${targets[@]}"; do
  path="${target#//}"
  cp "bazel-bin/${path/://}" "${stage}/bin/"
done

# glibc's own libraries are the machine's (a program built against glibc 2.36 runs on a
# newer one); the C++ runtime goes to lib-fallback; everything else is packaged.
is_glibc() {
  case "$1" in
    linux-vdso.so.* | ld-linux-* | libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | \
      librt.so.* | libresolv.so.* | libutil.so.*) return 0 ;;
  esac
  return 1
}
is_cxx_runtime() {
  case "$1" in
    libstdc++.so.* | libgcc_s.so.*) return 0 ;;
  esac
  return 1
}
for program in "${stage}"/bin/*; do
  # ldd lists the whole closure (libraries of libraries too): name => path.
  while read -r name _ path _; do
    if is_glibc "${name}"; then continue; fi
    if [ -z "${path}" ] || [ ! -e "${path}" ]; then
      echo "package_device_check: $(basename "${program}") needs ${name}, not found here" >&2
      exit 1
    fi
    if is_cxx_runtime "${name}"; then
      cp -L "${path}" "${stage}/lib-fallback/${name}"
    else
      cp -L "${path}" "${stage}/lib/${name}"
    fi
  done < <(ldd "${program}" | grep '=>')
done

# Static check of the closure: every NEEDED entry of every packaged file is packaged or
# glibc's (ldd above resolved them against this machine, which has them all).
for file in "${stage}"/bin/* "${stage}"/lib/* "${stage}"/lib-fallback/*; do
  while read -r needed; do
    if is_glibc "${needed}" || [ -e "${stage}/lib/${needed}" ] ||
      [ -e "${stage}/lib-fallback/${needed}" ]; then
      continue
    fi
    echo "package_device_check: $(basename "${file}") needs ${needed}, which is not packaged" >&2
    exit 1
  done < <(readelf -d "${file}" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git diff --quiet HEAD 2>/dev/null; then commit="${commit}+local changes"; fi
echo "${commit}" >"${stage}/COMMIT"

mkdir -p "${out_dir}"
tar -C "${stage}" -czf "${out_dir}/device_check.tar.gz" COMMIT bin lib lib-fallback
echo "package_device_check: ${out_dir}/device_check.tar.gz ($(du -h "${out_dir}/device_check.tar.gz" | cut -f1)):" \
  "$(ls "${stage}/bin" | wc -l) programs, $(ls "${stage}/lib" | wc -l) libraries" \
  "($(du -sh "${stage}/lib" | cut -f1) unpacked), $(ls "${stage}/lib-fallback" | wc -l) fallback; commit ${commit}"
