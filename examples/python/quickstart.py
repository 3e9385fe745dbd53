"""pqkv quickstart: the Python SDK's tour, as examples/pqkv_demo.cc is the C++ SDK's.

Creates a session, uploads a generated prefill layer by layer (each kv head has a few
planted tokens whose keys point along that head's query), retrieves every layer's top-k
with its K/V rows in the same round trip, checks the rows bit for bit and the planted
tokens found, fetches rows back, appends a decode token, and closes the session.

    python3 examples/python/quickstart.py                        # starts its own server
    python3 examples/python/quickstart.py --server localhost:50051

Exit status 0 when every row matched the upload and every planted token was found.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np

import pqkv
from pqkv.local_server import LocalServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="pqkv-server address; default: start a local one")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--planted", type=int, default=32, help="planted tokens per kv head")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        address = args.server or stack.enter_context(LocalServer()).address
        client = stack.enter_context(pqkv.Client(address))
        print(f"pqkv {pqkv.__version__}, server {address} "
              f"({client.server_stats().backend} backend)")
        return tour(client, args)


def tour(client: pqkv.Client, args) -> int:
    shape = pqkv.ModelShape(num_layers=args.layers, num_kv_heads=2, num_query_heads=8,
                            head_dim=128, dtype="fp16")
    group = shape.num_query_heads // shape.num_kv_heads
    rng = np.random.default_rng(0)
    session = client.create_session(shape, index=pqkv.IndexOptions(subspaces=2, bits=6))
    print(f"session {session.id}: {shape}")

    # Prefill: keys [kv_heads, tokens, head_dim]; planted tokens point along the head's
    # query direction, so exact attention concentrates on them.
    data, directions, planted = [], [], []
    for layer in range(shape.num_layers):
        keys = rng.standard_normal((2, args.tokens, 128), dtype=np.float32)
        values = rng.standard_normal((2, args.tokens, 128), dtype=np.float32)
        direction = rng.standard_normal((2, 128), dtype=np.float32)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        chosen = np.stack([rng.choice(np.arange(64, args.tokens - 128), args.planted, replace=False)
                           for _ in range(2)])
        for h in range(2):
            keys[h, chosen[h]] = 12.0 * direction[h] + 0.1 * keys[h, chosen[h]]
        keys, values = keys.astype(np.float16), values.astype(np.float16)
        session.upload_prefill(layer, keys, values)  # the index builds while we go on
        data.append((keys, values))
        directions.append(direction)
        planted.append(chosen)

    ok = True
    latencies = []
    with client.retrieval_stream() as stream:
        for step in range(3):
            for layer in range(shape.num_layers):
                query = np.repeat(directions[layer], group, axis=0) * 3.0  # [query_heads, dim]
                start = time.perf_counter()
                (result,) = stream.retrieve(layer, [pqkv.Query(session, query, args.k,
                                                               with_kv=True, with_scores=False)])
                latencies.append((time.perf_counter() - start) * 1e6)
                keys, values = data[layer]
                for h in range(2):
                    rows_ok = (np.array_equal(result.keys[h].view(np.uint16),
                                              keys[h, result.positions[h]].view(np.uint16)) and
                               np.array_equal(result.values[h].view(np.uint16),
                                              values[h, result.positions[h]].view(np.uint16)))
                    found = np.isin(planted[layer][h], result.positions[h]).mean()
                    ok &= rows_ok and found == 1.0
                    if step == 0:
                        print(f"layer {layer} kv head {h}: {found:.0%} of planted tokens in the "
                              f"top-{args.k}, rows {'match' if rows_ok else 'DIFFER'} "
                              f"({result.data_path})")
    print(f"retrieve round trip per layer, rows included: median "
          f"{statistics.median(latencies):.0f} us over {len(latencies)}")

    # Fetch rows back by position, append a decode token to every layer, close.
    positions = planted[0]
    fetched_keys, _ = session.fetch(0, positions)
    ok &= np.array_equal(fetched_keys.view(np.uint16),
                         np.stack([data[0][0][h, positions[h]] for h in range(2)]).view(np.uint16))
    new_kv = rng.standard_normal((shape.num_layers, 2, 128)).astype(np.float16)
    session.append_token(args.tokens, new_kv, new_kv)
    info = session.info()
    print(f"after one decode token: {info.layers[0].num_tokens} tokens per layer, "
          f"index {info.layers[0].index_state.value}, {info.bytes_held / 2**20:.1f} MiB held")
    session.close()
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
