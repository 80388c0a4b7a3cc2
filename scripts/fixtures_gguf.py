#!/usr/bin/env python3
"""Generate the GGUF test fixtures in model/tests/fixtures/gguf/ (committed; not run by CI).

    pip install gguf numpy safetensors tokenizers
    python scripts/fixtures_gguf.py

The reference implementation is gguf-py (llama.cpp's own Python package): its `GGUFWriter` writes
the files and its `gguf.quants.dequantize` (a port of ggml-quants.c) gives the expected f32 values.

The GGUF files are named *.gguf.bin because the repository's .gitignore ignores *.gguf.

quants.gguf.bin / quants.expected.safetensors
    One [2, 512] tensor per ggml type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
    Q6_K, and Q2_K, which the importer does not support), made of random block bytes with sane f16
    scales, and the dequantized values; metadata of every value type, nested arrays, alignment 64.

tiny-llama.gguf.bin / tiny-llama.expected.safetensors / tiny-llama.tokenizer.json / tiny-llama.tokenizer-ids.json
    A random 2-layer `llama` model (hidden 32, 4 heads, 2 KV heads, untied lm_head) written the way
    llama.cpp's convert_hf_to_gguf.py does (q/k rows permuted, mixed tensor types), with a byte-level
    BPE tokenizer trained here (SmolLM2's "smollm" pre-tokenizer: digits split, then byte-level).
    The expected HF state dict is the GGUF dequantized with gguf-py and un-permuted the way
    transformers does (`_reverse_permute_weights`); for F32 tensors it equals the random weights.
    The tokenizer.json is the trained tokenizer itself, and tokenizer-ids.json its encodings of a
    few texts, to compare the rebuilt tokenizer with.
"""

import json
import os

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model", "tests", "fixtures", "gguf")
rng = np.random.default_rng(20250207)


def f16_bytes(x):
    return np.asarray(x, dtype=np.float16).reshape(-1, 1).view(np.uint8)


# Byte offsets of the f16 scale fields in each block (everything else is random bits).
SCALE_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208], Q.Q2_K: [80, 82],
}


def random_blocks(qtype, rows, cols):
    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // block
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        raw[:, off:off + 2] = f16_bytes(rng.uniform(-2.0, 2.0, size=n))
    return raw.reshape(rows, cols // block * size)


def quants_fixture():
    rows, cols = 2, 512
    w = GGUFWriter(os.path.join(OUT, "quants.gguf.bin"), "test")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float32("test.f32", 0.1)
    w.add_float64("test.f64", 0.1)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo, 世界 🤗")
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_f32", [0.5, -1.5])
    w.add_array("test.arr_bool", [True, False])
    w.add_array("test.arr_str", ["a", "é中", "Ġt"])
    w.add_array("test.arr_nested", [[1, 2], [3]])

    expected = {}
    vals = rng.standard_normal((rows, cols)).astype(np.float32)
    specials = np.array([0.0, -0.0, 6e-8, -6e-8, 65504.0, np.inf, -np.inf, 1e-3], dtype=np.float32)
    vals[0, :len(specials)] = specials

    w.add_tensor("f32", vals)
    expected["f32"] = vals
    h = vals.astype(np.float16)
    w.add_tensor("f16", h)
    expected["f16"] = h.astype(np.float32)
    bf = (vals.view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("bf16", bf.view(np.uint8).reshape(rows, cols * 2), raw_dtype=Q.BF16)
    expected["bf16"] = (bf.astype(np.uint32) << 16).view(np.float32)

    for qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q2_K):
        raw = random_blocks(qtype, rows, cols)
        name = qtype.name.lower()
        w.add_tensor(name, raw, raw_dtype=qtype)
        deq = dequantize(raw, qtype).astype(np.float32)
        assert deq.shape == (rows, cols) and np.isfinite(deq).all(), name
        expected[name] = deq

    write(w)
    save_file(expected, os.path.join(OUT, "quants.expected.safetensors"))


# convert_hf_to_gguf.py, LlamaModel.permute
def permute(weights, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


# transformers, modeling_gguf_pytorch_utils.py, _reverse_permute_weights
def reverse_permute(weights, n_head, num_kv_heads=None):
    if num_kv_heads is not None and n_head != num_kv_heads:
        n_head = num_kv_heads
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog 12345 times.",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "Café déjà vu, naïve façade. 中文 and emoji 🤗 are bytes too.",
    "def add(a, b):\n    return a + b\n",
] * 20

TOKENIZER_TEXTS = [
    "Hello world! 123",
    "12345 apples, 3.14",
    "The quick brown fox <think> jumps",
    "<|im_start|>user\nHi<|im_end|>\n",
    "Café 中文 🤗\n\n  spaces  ",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["<think>"])  # user-defined: an added token that is not special
    return tok


def tiny_llama_fixture():
    hidden, heads, kv_heads, ffn, layers, ctx = 32, 4, 2, 64, 2, 128
    head_dim = hidden // heads

    tok = train_tokenizer()
    spec = json.loads(tok.to_str())
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    specials = {a["id"] for a in spec["added_tokens"] if a["special"]}
    user_defined = {a["id"] for a in spec["added_tokens"] if not a["special"]}
    token_types = [3 if i in specials else 4 if i in user_defined else 1 for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    n_vocab = len(tokens)

    w = GGUFWriter(os.path.join(OUT, "tiny-llama.gguf.bin"), "llama")
    w.add_name("tiny-llama")
    w.add_uint32("llama.block_count", layers)
    w.add_uint32("llama.context_length", ctx)
    w.add_uint32("llama.embedding_length", hidden)
    w.add_uint32("llama.feed_forward_length", ffn)
    w.add_uint32("llama.attention.head_count", heads)
    w.add_uint32("llama.attention.head_count_kv", kv_heads)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32("llama.vocab_size", n_vocab)
    w.add_uint32("llama.rope.dimension_count", head_dim)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "smollm")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", token_types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    w.add_uint32("tokenizer.ggml.padding_token_id", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.chat_template", CHAT_TEMPLATE)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    hf = {"model.embed_tokens.weight": rand(n_vocab, hidden), "model.norm.weight": 1 + rand(hidden),
          "lm_head.weight": rand(n_vocab, hidden)}
    for l in range(layers):
        p = f"model.layers.{l}."
        hf |= {
            p + "input_layernorm.weight": 1 + rand(hidden),
            p + "post_attention_layernorm.weight": 1 + rand(hidden),
            p + "self_attn.q_proj.weight": rand(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": rand(hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": rand(ffn, hidden),
            p + "mlp.up_proj.weight": rand(ffn, hidden),
            p + "mlp.down_proj.weight": rand(hidden, ffn),
        }

    # (gguf name, hf name, type); layer 0 quantized with every small-block type, layer 1 F32.
    plan = [("token_embd.weight", "model.embed_tokens.weight", Q.Q8_0),
            ("output_norm.weight", "model.norm.weight", Q.F32),
            ("output.weight", "lm_head.weight", Q.F16)]
    layer0 = {"attn_q": Q.Q8_0, "attn_k": Q.Q4_1, "attn_v": Q.Q5_0, "attn_output": Q.Q5_1,
              "ffn_gate": Q.F16, "ffn_up": Q.BF16, "ffn_down": Q.Q4_0}
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for l in range(layers):
        for g, h in names.items():
            qt = layer0.get(g, Q.F32) if l == 0 and g in layer0 else Q.F32
            plan.append((f"blk.{l}.{g}.weight", f"model.layers.{l}.{h}.weight", qt))

    expected = {}
    for gname, hname, qt in plan:
        x = hf[hname]
        if gname.endswith("attn_q.weight"):
            x = permute(x, heads, heads)
        elif gname.endswith("attn_k.weight"):
            x = permute(x, heads, kv_heads)
        if qt in (Q.F32, Q.F16):
            stored = x.astype(np.float32 if qt == Q.F32 else np.float16)
            w.add_tensor(gname, stored)
        else:
            stored = quantize(x, qt)  # uint8 blocks, shape [rows, bytes per row]
            w.add_tensor(gname, stored, raw_dtype=qt)
        deq = dequantize(stored, qt).astype(np.float32).reshape(x.shape)
        if gname.endswith("attn_q.weight"):
            deq = reverse_permute(deq, heads, heads)
        elif gname.endswith("attn_k.weight"):
            deq = reverse_permute(deq, heads, kv_heads)
        if qt == Q.F32:
            assert np.array_equal(deq, hf[hname]), gname
        expected[hname] = np.ascontiguousarray(deq)

    write(w)
    save_file(expected, os.path.join(OUT, "tiny-llama.expected.safetensors"))
    with open(os.path.join(OUT, "tiny-llama.tokenizer.json"), "w") as f:
        f.write(tok.to_str(pretty=True))
    ids = [{"text": t, "ids": tok.encode(t).ids} for t in TOKENIZER_TEXTS]
    with open(os.path.join(OUT, "tiny-llama.tokenizer-ids.json"), "w") as f:
        json.dump(ids, f, ensure_ascii=False, indent=1)


def write(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    quants_fixture()
    tiny_llama_fixture()
    for name in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(os.path.join(OUT, name)):>8}  {name}")
