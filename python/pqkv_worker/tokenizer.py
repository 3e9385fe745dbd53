"""Byte-level BPE tokenizer and chat template built from GGUF metadata.

The GGUF stores the vocab, merges and token types of the original Hugging Face
tokenizer (`tokenizer.ggml.model == "gpt2"`). We rebuild it with the
`tokenizers` library: byte-level BPE, with the SmolLM pre-tokenizer
(`tokenizer.ggml.pre == "smollm"`: split every digit, then the GPT-2 regex),
and the control tokens (type 3) as atomic special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKEN_TYPE_CONTROL = 3


@dataclass
class GgufTokenizer:
    tok: object  # tokenizers.Tokenizer
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    chat_template: str | None
    special_ids: set[int]

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def id_of(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Render ChatML as the GGUF's template does, with add_generation_prompt.

        Hand-rendered (no jinja2 dependency); refuses templates that are not the
        ChatML shape we reproduce.
        """
        t = self.chat_template or ""
        if "<|im_start|>" not in t or "add_generation_prompt" not in t:
            raise SystemExit("unsupported chat template (expected ChatML)")
        out = []
        if messages and messages[0]["role"] != "system":
            # The template's default system prompt, copied out of the template.
            marker = "'<|im_start|>system\n"
            start = t.find(marker)
            if start >= 0:
                end = t.find("<|im_end|>", start)
                out.append(t[start + 1:end] + "<|im_end|>\n")
        for m in messages:
            out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        out.append("<|im_start|>assistant\n")
        return "".join(out)


def build_tokenizer(reader) -> GgufTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from .gguf_weights import field_value

    model = field_value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"tokenizer model {model!r} unsupported (need gpt2 byte-level BPE)")
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    merges = field_value(reader, "tokenizer.ggml.merges")

    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        # llama.cpp: these split each digit on its own before the GPT-2 regex,
        # like HF's Digits(individual_digits=True) pre-tokenizer.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt2"):
        tok.pre_tokenizer = byte_level
    else:
        raise SystemExit(f"pre-tokenizer {pre!r} not implemented")
    tok.decoder = decoders.ByteLevel()

    special = [t for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL]
    tok.add_special_tokens(special)  # matched whole, never split by BPE

    def opt_int(key):
        v = field_value(reader, key)
        return None if v is None else int(v)

    return GgufTokenizer(
        tok=tok,
        bos_id=opt_int("tokenizer.ggml.bos_token_id"),
        eos_id=opt_int("tokenizer.ggml.eos_token_id"),
        add_bos=bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)),
        chat_template=field_value(reader, "tokenizer.chat_template"),
        special_ids={vocab[t] for t in special},
    )
