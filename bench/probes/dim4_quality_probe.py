"""Throwaway probe (docs/benchmarks.md, "Settings that read no rows"): mass recall at 1/16 of
the context when each key dimension is kept as a 4-bit level, on a capture (tools/capture).

A numpy re-implementation of the quality bench's metric (S = 4 sinks, W = 64 recent, k =
1/16 of the context chosen by the GQA-summed softmax of approximate logits; mass recall is
the exact softmax mass of what is kept, averaged over query heads), over every 16th decode
query. Variants: the exact top-k (oracle); 16 k-means levels per dimension; a uniform grid
per dimension over its range; the uniform grid with the query's weights quantised to int8.
Levels are trained on all of a head's keys, or with --prompt-only on the prompt's.

    PY=$(scripts/install_model.sh --print-python)
    $PY bench/probes/dim4_quality_probe.py testdata/smollm2-135m [--prompt-only]
"""
import json
import sys

import numpy as np

SINKS, RECENT, EVERY = 4, 64, 16


def kmeans_levels(x, k=16, iterations=10):
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        nearest = np.abs(x[:, None] - centres[None]).argmin(1)
        for j in range(k):
            if (nearest == j).any():
                centres[j] = x[nearest == j].mean()
    return np.sort(centres)


def quantise(keys, train, kind):
    out = np.empty_like(keys)
    for d in range(keys.shape[1]):
        x = keys[:, d]
        if kind == "kmeans":
            levels = kmeans_levels(train[:, d])
            out[:, d] = levels[np.abs(x[:, None] - levels[None]).argmin(1)]
        else:
            lo, hi = train[:, d].min(), train[:, d].max()
            step = (hi - lo) / 15 if hi > lo else 1.0
            out[:, d] = lo + np.clip(np.round((x - lo) / step), 0, 15) * step
    return out


def softmax_rows(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main():
    capture = sys.argv[1]
    prompt_only = "--prompt-only" in sys.argv
    manifest = json.load(open(f"{capture}/manifest.json"))
    dim = manifest["head_dim"]
    kv_heads = manifest["num_kv_heads"]
    group = manifest["num_query_heads"] // kv_heads
    positions = np.array(manifest["query_positions"])
    picked = np.arange(0, len(positions), EVERY)
    recall = {}
    for layer in manifest["layers"]:
        keys_all = np.load(f"{capture}/{layer['keys']}").astype(np.float32)
        queries_all = np.load(f"{capture}/{layer['queries']}")
        for h in range(kv_heads):
            keys = keys_all[h]
            train = keys[: manifest["prompt_tokens"]] if prompt_only else keys
            lo, hi = train.min(0), train.max(0)
            step = np.where(hi > lo, (hi - lo) / 15, 1.0)
            levels = np.clip(np.round((keys - lo) / step), 0, 15)
            approximations = {"oracle": keys, "kmeans16": quantise(keys, train, "kmeans"),
                              "uniform": quantise(keys, train, "uniform"), "uniform_q8": None}
            for name, approx in approximations.items():
                for qi in picked:
                    n = positions[qi] + 1
                    k = max(1, n // 16)
                    q = queries_all[qi, h * group:(h + 1) * group]
                    exact = softmax_rows(q @ keys[:n].T / np.sqrt(dim))
                    if name == "uniform_q8":
                        weights = q * step
                        unit = np.abs(weights).max(1, keepdims=True) / 127
                        logits = (q @ lo)[:, None] + (np.round(weights / unit) * unit) @ levels[:n].T
                    else:
                        logits = q @ approx[:n].T
                    score = softmax_rows(logits / np.sqrt(dim)).sum(0)
                    candidates = np.arange(SINKS, n - RECENT)
                    chosen = (candidates[np.argpartition(-score[candidates], k - 1)[:k]]
                              if len(candidates) > k else candidates)
                    kept = np.concatenate([np.arange(SINKS), chosen,
                                           np.arange(max(SINKS, n - RECENT), n)])
                    recall.setdefault(name, []).append(exact[:, kept].sum(1).mean())
    for name, values in recall.items():
        print(f"{name:12s} mass_recall {np.mean(values):.4f}")


if __name__ == "__main__":
    main()
