"""cuda_objects: compiles .cu files with nvcc into objects a cc_library links.

Bazel 4 has no CUDA rules, so each .cu file is one genrule action that runs the
toolkit's nvcc by path. The objects are position independent (tests link shared) and
carry SASS for sm_80 (A100) and sm_90 (H100/H200) plus compute_90 PTX, which newer GPUs
JIT-compile. No relocatable device code: each .cu is self-contained, so no device link.
"""

CUDA_PATH = "/usr/local/cuda"

NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-gencode arch=compute_80,code=sm_80",
    "-gencode arch=compute_90,code=sm_90",
    "-gencode arch=compute_90,code=compute_90",
    "-Xcompiler -fPIC",
    # nvcc 13 accepts Debian 12's g++ 12 as is; no -allow-unsupported-compiler needed.
    "-I.",
]

def cuda_objects(name, srcs, hdrs = [], visibility = None):
    """One nvcc action per source in `srcs` (.cu); `hdrs` are the headers they include.

    The filegroup `name` holds the objects, `name/<file>.o`; put it in a cc_library's srcs.
    """
    objects = []
    for src in srcs:
        if not src.endswith(".cu"):
            fail("cuda_objects: %s is not a .cu file" % src)
        obj = "%s/%s.o" % (name, src[:-len(".cu")].split("/")[-1])
        native.genrule(
            name = "%s_%s" % (name, src[:-len(".cu")].replace("/", "_")),
            # nvcc runs by absolute path (it finds its toolkit relative to itself); as an
            # input it makes a toolkit upgrade rebuild the objects.
            srcs = [src] + hdrs + ["@local_cuda//:bin/nvcc"],
            outs = [obj],
            cmd = "%s/bin/nvcc %s -c $(location %s) -o $@" % (CUDA_PATH, " ".join(NVCC_FLAGS), src),
            message = "nvcc %s" % src,
            visibility = ["//visibility:private"],
        )
        objects.append(obj)
    native.filegroup(name = name, srcs = objects, visibility = visibility)
