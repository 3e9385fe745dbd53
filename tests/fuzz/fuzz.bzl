"""pqkv_fuzz_target: a libFuzzer target and the test that replays its corpus."""

def pqkv_fuzz_target(name, srcs, deps = []):
    """A fuzz target `name` and the test `name`_corpus_test.

    Under --config=fuzz (clang, .bazelrc) the binary links libFuzzer
    (-fsanitize=fuzzer) and scripts/fuzz.sh runs it. Otherwise (the default gcc build)
    it links tests/fuzz/replay_main.cc, and `name`_corpus_test runs it once over every
    file in corpus/`name` (the seeds and every reproducer kept there), so the ordinary
    `bazel test //...` builds each target and replays its findings.
    """
    native.cc_binary(
        name = name,
        testonly = True,
        srcs = srcs,
        linkopts = select({
            "//tests/fuzz:fuzzing": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        deps = deps + select({
            "//tests/fuzz:fuzzing": [],
            "//conditions:default": ["//tests/fuzz:replay_main"],
        }),
    )
    native.sh_test(
        name = name + "_corpus_test",
        size = "small",
        srcs = ["replay_corpus_test.sh"],
        args = [
            "$(location :%s)" % name,
            "tests/fuzz/corpus/" + name,
        ],
        data = [":" + name] + native.glob(["corpus/%s/*" % name]),
    )
