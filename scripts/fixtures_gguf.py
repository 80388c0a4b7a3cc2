#!/usr/bin/env python3
"""Generate the GGUF test fixtures in model/tests/fixtures/gguf/ (committed; not run by CI).

    pip install gguf numpy safetensors tokenizers torch transformers sentencepiece
    python scripts/fixtures_gguf.py [quants] [llama] [qwen2] [qwen3] [olmo2] [gemma3] [phi3] [smollm3]   # default: all

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

tiny-{qwen2,qwen3,olmo2,gemma3}.gguf.bin / .expected.safetensors / .config.json / .tokenizer.json / .tokenizer-ids.json
    A random transformers model of each family (`tiny_family`), written the way convert_hf_to_gguf.py's
    Qwen2Model, Qwen3Model, Olmo2Model and Gemma3Model do (`write_family_gguf`): tensor names from
    gguf-py's own TensorNameMap, no q/k permutation, `norm.weight + 1` on every Gemma norm, 1-D
    tensors F32, the metadata keys those classes write. Layer 0 and the embedding are quantized (Q8_0,
    Q4_0, Q4_1, Q5_0, Q5_1, F16, BF16 where the row length allows), the rest F32. The expected HF
    state dict is gguf-py's dequantization of each stored tensor, minus 1 in f32 for Gemma's norms;
    config.json is the original model's config as transformers writes it.
    Qwen2/Qwen3 carry a byte-level BPE trained here with Qwen2's split regex and NFC
    (`tokenizer.ggml.pre = "qwen2"`), OLMo 2 the SmolLM-style one above, Gemma 3 a SentencePiece BPE
    with byte fallback trained here (`tokenizer.ggml.model = "llama"`, no prefix space, as Gemma's);
    tokenizer.json is the reference tokenizer (Qwen's trained one; for Gemma what transformers' GGUF
    loader builds) and tokenizer-ids.json the reference ids (for Gemma: sentencepiece's own).
    Gemma 3 has 6 layers so that llama.cpp's fixed pattern (every 6th layer global) yields both kinds.

tiny-{phi3,smollm3}.gguf.bin / .expected.safetensors / .config.json / .tokenizer.json / .tokenizer-ids.json
    The same for convert_hf_to_gguf.py's Phi3MiniModel and SmolLM3Model. Phi-3 keeps its fused
    `qkv_proj` / `gate_up_proj` (as `attn_qkv` / `ffn_up`), has LongRoPE factors (original context 8
    of 32, written as the `rope_factors_{long,short}.weight` tensors and `rope.scaling.attn_factor`)
    and a sliding window of 6, and a SentencePiece vocabulary shaped like Phi-3's (Llama 2's: dummy
    prefix, byte fallback; added tokens after it, typed and scored as Phi3MiniModel.set_vocab does,
    `[PADn]` up to the model's vocab_size); its tokenizer.json is what transformers' GGUF loader
    builds and tokenizer-ids.json the ids of a tokenizer shaped like Phi-3's own tokenizer.json
    (legacy `LlamaTokenizerFast`: `Prepend("▁")` + `Replace`, merges from the sentencepiece
    model), checked here against sentencepiece on the texts without special tokens. SmolLM3
    (SmolLM3Model is LlamaModel: q/k rows permuted) has 4 layers, the last without RoPE, and a
    byte-level BPE trained with Llama 3's split regex, `ignore_merges`, no BOS, written with
    `tokenizer.ggml.pre = "smaug-bpe"` and no `add_bos_token`, as the real SmolLM3 GGUFs are.

scripts/check_gguf_families.py converts the same tiny models (all F32) and compares transformers' logits
on alignkit's import with the original model's.
"""

import io
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

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


def train_byte_level(pre_tokenizer, special_tokens, normalizer=None):
    """A byte-level BPE of 300 tokens trained on CORPUS behind `pre_tokenizer` (and
    `normalizer`), with `<think>` added as a user-defined token that is not special."""
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["<think>"])
    return tok


def train_tokenizer():
    return train_byte_level(
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False)]),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


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


# ---------------------------------------------------------------- other families (Qwen2, Qwen3, OLMo 2, Gemma 3)

# transformers' Qwen2 PRETOKENIZE_REGEX (llama.cpp's "qwen2" pre-tokenizer).
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

GEMMA_CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog 12345 times.",
    "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>",
    "Café déjà vu, naïve façade. 中文 and emoji 🤗 are bytes too.",
    "def add(a, b):\n    return a + b\n",
    "Tokens <think> like this stay whole;   runs   of  spaces\tand\ttabs.",
] * 20

FAMILY_TEXTS = TOKENIZER_TEXTS + [
    "Café 🚀 déjà\n\n\n  x",
    "<start_of_turn>user\nHi there<end_of_turn>\n",
    "I'M sure they'LL say it's fine ½ ² ١٢٣",
    "e\u0301 is not NFC",
    "<|user|>\nHi there <think> ok<|end|>\n<|assistant|>\n",
]


def train_qwen_tokenizer():
    """Byte-level BPE pre-tokenized like Qwen2's tokenizer.json: NFC, Qwen2's split, bytes."""
    return train_byte_level(
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], normalizer=normalizers.NFC())


def bpe_vocab(tok):
    """GGUF tokens, token types and merges of a `tokenizers` BPE (convert_hf_to_gguf.py get_vocab_base)."""
    spec = json.loads(tok.to_str())
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    specials = {a["id"] for a in spec["added_tokens"] if a["special"]}
    user_defined = {a["id"] for a in spec["added_tokens"] if not a["special"]}
    types = [3 if i in specials else 4 if i in user_defined else 1 for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, types, merges


def train_gemma_spm():
    """A SentencePiece BPE shaped like Gemma's: byte fallback, no dummy prefix, identity
    normalization, whitespace-only pieces, <pad>/<eos>/<bos>/<unk> at 0..3."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(GEMMA_CORPUS), model_writer=buf, model_type="bpe", vocab_size=400,
        byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, max_sentencepiece_length=16,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "<think>"], minloglevel=2,
    )
    return buf.getvalue()


# Gemma's tokenizer_config.json marks these added tokens special; the converter then types them CONTROL.
GEMMA_SPECIAL = {"<start_of_turn>", "<end_of_turn>"}


def spm_vocab(model_proto):
    """GGUF tokens, scores and types of a SentencePiece model (convert_hf_to_gguf.py
    _create_vocab_sentencepiece, with tokenizer_config's special added tokens as CONTROL)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        ty = 1
        if sp.is_unknown(i):
            ty = 2
        elif sp.is_control(i):
            ty = 3
        elif sp.is_unused(i):
            ty = 5
        elif sp.is_byte(i):
            ty = 6
        elif piece in GEMMA_SPECIAL:
            ty = 3
        elif piece.startswith("<") and piece.endswith(">") and len(piece) > 2:
            ty = 4  # a user-defined symbol
        tokens.append(piece)
        scores.append(sp.get_score(i))
        types.append(ty)
    return sp, tokens, scores, types


# Llama 3's split regex as in its tokenizer.json (llama.cpp's "llama-bpe"; "smaug-bpe" for SmolLM3).
LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def train_llama3_tokenizer():
    """Byte-level BPE pre-tokenized like Llama 3's and SmolLM3's tokenizer.json: Llama 3's split,
    bytes, `ignore_merges`; no BOS added."""
    tok = train_byte_level(
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]),
        ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"])
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = True  # as Llama 3's tokenizer.json has it
    return Tokenizer.from_str(json.dumps(spec))


PHI3_CORPUS = CORPUS + ["You are a helpful assistant.\nWhat is the capital of France? Paris, 42 and 7."] * 10

# Phi-3's added tokens (its tokenizer.json marks all of these special but <think>, which we add as a
# plain one to cover user-defined tokens).
PHI3_ADDED = [("<|endoftext|>", True), ("<|assistant|>", True), ("<|user|>", True), ("<|end|>", True),
              ("<|system|>", True), ("<think>", False)]


def train_phi3_spm():
    """A SentencePiece BPE shaped like Phi-3's (Llama 2's): dummy prefix, byte fallback, split
    digits, identity normalization, <unk>/<s>/</s> at 0..2."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(PHI3_CORPUS), model_writer=buf, model_type="bpe", vocab_size=384,
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, character_coverage=0.9995,
        max_sentencepiece_length=16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return buf.getvalue()


def phi3_vocab(model_proto, n_pad=4):
    """GGUF tokens, scores and types as Phi3MiniModel.set_vocab writes them: the sentencepiece
    pieces, then the added tokens (and <unk>, <s>, </s>, which Phi-3's tokenizer.json lists too)
    with score -1000, CONTROL when special and USER_DEFINED otherwise, then `[PADn]` up to the
    model's vocab_size, UNUSED with score -10000."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    n = sp.vocab_size()
    vocab_size = n + len(PHI3_ADDED) + n_pad
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [5] * vocab_size
    for i in range(n):
        ty = 1
        if sp.is_unknown(i):
            ty = 2
        elif sp.is_control(i):
            ty = 3
        elif sp.is_unused(i):
            ty = 5
        elif sp.is_byte(i):
            ty = 6
        tokens[i], scores[i], types[i] = sp.id_to_piece(i), sp.get_score(i), ty
    added = [(0, "<unk>", True), (1, "<s>", True), (2, "</s>", True)]
    added += [(n + k, token, special) for k, (token, special) in enumerate(PHI3_ADDED)]
    for i, token, special in added:
        tokens[i], scores[i], types[i] = token, -1000.0, 3 if special else 4
    return sp, tokens, scores, types


def phi3_shaped_tokenizer(sp, tokens, add_bos):
    """A tokenizer shaped like Phi-3's own tokenizer.json (legacy `LlamaTokenizerFast`, as
    transformers' LlamaConverter builds it): every piece of text between added tokens gets a \u2581
    in front and \u2581 for its spaces, then BPE with byte fallback over the sentencepiece vocabulary,
    merges ranked by the sentencepiece scores."""
    from tokenizers import AddedToken
    from transformers.tokenization_utils_base import generate_merges

    n = sp.vocab_size()
    pieces = {sp.id_to_piece(i): i for i in range(n)}
    merges = generate_merges(pieces, {sp.id_to_piece(i): sp.get_score(i) for i in range(n)})
    vocab = dict(pieces)
    for k, (token, _) in enumerate(PHI3_ADDED):
        vocab[token] = n + k
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [t for t, special in PHI3_ADDED if special]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, special in PHI3_ADDED if not special])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    assert all(tok.token_to_id(t) == tokens.index(t) for t in vocab), "ids as in the GGUF"
    # On text without added tokens, this is sentencepiece itself.
    for text in FAMILY_TEXTS:
        if not any(t in text for t, _ in PHI3_ADDED):
            want = ([1] if add_bos else []) + sp.encode(text)
            assert tok.encode(text).ids == want, (text, tok.encode(text).tokens, sp.encode(text, out_type=str))
    return tok


def tiny_family(family):
    """(transformers model with random weights, tokenizer metadata) for `family`; deterministic."""
    import torch
    from transformers import (AutoModelForCausalLM, Gemma3TextConfig, Olmo2Config, Phi3Config, Qwen2Config,
                              Qwen3Config, SmolLM3Config)

    # `reference`: the tokenizer the vocabulary comes from; `encode`: its ids for a text, special
    # tokens added as the file says.
    if family in ("qwen2", "qwen3"):
        tok = train_qwen_tokenizer()
        tokens, types, merges = bpe_vocab(tok)
        vocab = tok.get_vocab(with_added_tokens=True)
        tokenizer = dict(model="gpt2", pre="qwen2", tokens=tokens, types=types, merges=merges,
                         bos=vocab["<|endoftext|>"], eos=vocab["<|im_end|>"], pad=vocab["<|endoftext|>"],
                         add_bos=False, reference=tok, encode=lambda text: tok.encode(text).ids)
    elif family == "olmo2":
        tok = train_tokenizer()
        tokens, types, merges = bpe_vocab(tok)
        vocab = tok.get_vocab(with_added_tokens=True)
        tokenizer = dict(model="gpt2", pre="smollm", tokens=tokens, types=types, merges=merges,
                         bos=None, eos=vocab["<|endoftext|>"], pad=vocab["<|im_end|>"], add_bos=False,
                         reference=tok, encode=lambda text: tok.encode(text).ids)
    elif family == "smollm3":
        # As the real SmolLM3 GGUFs: "smaug-bpe" (its tokenizer hashes like Llama 3's) and no
        # add_bos_token, so llama.cpp adds no BOS, as SmolLM3's own tokenizer does not.
        tok = train_llama3_tokenizer()
        tokens, types, merges = bpe_vocab(tok)
        vocab = tok.get_vocab(with_added_tokens=True)
        tokenizer = dict(model="gpt2", pre="smaug-bpe", tokens=tokens, types=types, merges=merges,
                         bos=vocab["<|begin_of_text|>"], eos=vocab["<|im_end|>"], pad=vocab["<|im_end|>"],
                         add_bos=None, reference=tok, encode=lambda text: tok.encode(text).ids)
    elif family == "phi3":
        sp, tokens, scores, types = phi3_vocab(train_phi3_spm())
        eos = tokens.index("<|endoftext|>")
        tok = phi3_shaped_tokenizer(sp, tokens, add_bos=True)
        tokenizer = dict(model="llama", pre="default", tokens=tokens, scores=scores, types=types,
                         bos=1, eos=eos, pad=eos, unk=0, add_bos=True, add_eos=False, reference=tok,
                         encode=lambda text: tok.encode(text).ids)
    else:
        proto = train_gemma_spm()
        sp, tokens, scores, types = spm_vocab(proto)
        tokenizer = dict(model="llama", pre="default", tokens=tokens, scores=scores, types=types,
                         bos=2, eos=1, pad=0, unk=3, add_bos=True, reference=sp,
                         encode=lambda text: [2] + sp.encode(text))  # BOS, then sentencepiece
    common = dict(vocab_size=len(tokens), max_position_embeddings=128, bos_token_id=tokenizer["bos"],
                  eos_token_id=tokenizer["eos"], pad_token_id=tokenizer["pad"])
    config = {
        "qwen2": lambda: Qwen2Config(**common, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                     tie_word_embeddings=False),
        "qwen3": lambda: Qwen3Config(**common, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                     tie_word_embeddings=True),
        "olmo2": lambda: Olmo2Config(**common, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                     rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                                     tie_word_embeddings=False),
        # Every 6th layer global, local RoPE base 10000, query_pre_attn_scalar = head_dim: what
        # llama.cpp assumes for a gemma3 file, which does not say.
        "gemma3": lambda: Gemma3TextConfig(**common, hidden_size=16, intermediate_size=32, num_hidden_layers=6,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           query_pre_attn_scalar=16, sliding_window=4, rms_norm_eps=1e-6),
        # LongRoPE with original context 8 of 32 (sequences of 12 switch to the long factors) and a
        # window of 6 on every layer, as scripts/fixtures_model.py's Phi-3.
        "phi3": lambda: Phi3Config(**{**common, "max_position_embeddings": 32}, hidden_size=32,
                                   intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                   sliding_window=6, original_max_position_embeddings=8,
                                   rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                    "short_factor": [1.0, 1.1, 1.3, 1.7],
                                                    "long_factor": [1.5, 2.0, 3.0, 5.0]}),
        # 4 layers: llama.cpp's fixed NoPE step of 4 makes the last one NoPE.
        "smollm3": lambda: SmolLM3Config(**common, hidden_size=32, intermediate_size=32, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                         rope_parameters={"rope_type": "default", "rope_theta": 2000000.0},
                                         tie_word_embeddings=True),
    }[family]()
    torch.manual_seed({"qwen2": 2, "qwen3": 3, "olmo2": 4, "gemma3": 5, "phi3": 6, "smollm3": 7}[family])
    model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1)
            if name.endswith("norm.weight") and family != "gemma3":
                p.add_(1.0)  # Gemma's norms scale by 1 + w and start at 0; the others by w, at 1
    return model, tokenizer


def write_family_gguf(family, model, tokenizer, path, quantize_layer0=True):
    """Write `model` as convert_hf_to_gguf.py would; returns the expected HF tensors (f32 numpy)."""
    import gguf

    import math

    cfg = model.config.to_dict()
    arch = {"qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3, "olmo2": gguf.MODEL_ARCH.OLMO2,
            "gemma3": gguf.MODEL_ARCH.GEMMA3, "phi3": gguf.MODEL_ARCH.PHI3,
            "smollm3": gguf.MODEL_ARCH.SMOLLM3}[family]
    n_layers = cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = GGUFWriter(path, family)
    w.add_name(f"tiny-{family}")
    rope = cfg["rope_parameters"]
    if family == "phi3":  # Phi3MiniModel.set_gguf_parameters, which does not call TextModel's
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_block_count(n_layers)
        w.add_head_count(heads)
        w.add_head_count_kv(kv_heads)
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_dimension_count(cfg["hidden_size"] // heads)
        w.add_rope_freq_base(rope["rope_theta"])
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        w.add_sliding_window(cfg["sliding_window"] or 0)
    else:  # TextModel.set_gguf_parameters
        w.add_block_count(n_layers)
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(heads)
        w.add_head_count_kv(kv_heads)
        w.add_rope_freq_base(rope.get("full_attention", rope)["rope_theta"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        if "head_dim" in cfg:
            w.add_key_length(cfg["head_dim"])
            w.add_value_length(cfg["head_dim"])
        w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    if family == "gemma3":  # Gemma3Model.set_gguf_parameters
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
    if family == "smollm3":  # LlamaModel.set_gguf_parameters
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    if family == "phi3" and rope.get("long_factor"):  # Phi3MiniModel.generate_extra_tensors
        original = rope["original_max_position_embeddings"]
        scale = cfg["max_position_embeddings"] / original
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0)
        w.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], dtype=np.float32))

    t = tokenizer
    w.add_tokenizer_model(t["model"])
    w.add_tokenizer_pre(t["pre"])
    w.add_token_list(t["tokens"])
    if "scores" in t:
        w.add_token_scores(t["scores"])
    w.add_token_types(t["types"])
    if "merges" in t:
        w.add_token_merges(t["merges"])
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                     ("pad", w.add_pad_token_id)):
        if t.get(key) is not None:
            add(t[key])
    if t["add_bos"] is not None:
        w.add_add_bos_token(t["add_bos"])
    if t.get("add_eos") is not None:
        w.add_add_eos_token(t["add_eos"])
    if family == "gemma3":
        w.add_add_space_prefix(False)

    names = gguf.get_tensor_name_map(arch, n_layers)
    layer0 = {"attn_q": Q.Q8_0, "attn_k": Q.Q4_0, "attn_v": Q.Q4_1, "attn_output": Q.Q5_0,
              "ffn_gate": Q.F16, "ffn_up": Q.BF16, "ffn_down": Q.Q5_1, "attn_qkv": Q.Q8_0}
    permuted = family == "smollm3"  # SmolLM3Model is a LlamaModel
    expected = {}
    tied = cfg["tie_word_embeddings"]
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        x = tensor.detach().numpy().astype(np.float32)
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, hf_name
        is_norm = hf_name.endswith("norm.weight")
        if family == "gemma3" and is_norm:
            x = x + np.float32(1.0)  # Gemma3Model.norm_shift
        module = gname.split(".")[2] if gname.startswith("blk.") else gname.split(".")[0]
        if permuted and module == "attn_q":
            x = permute(x, heads, heads)
        elif permuted and module == "attn_k":
            x = permute(x, heads, kv_heads)
        qt = Q.F32
        if quantize_layer0 and x.ndim == 2:
            if gname == "token_embd.weight":
                qt = Q.Q8_0
            elif gname == "output.weight" and family == "phi3":
                qt = Q.Q4_1
            elif gname.startswith("blk.0."):
                qt = layer0.get(module, Q.F32)
        if qt not in (Q.F32, Q.F16, Q.BF16) and x.shape[1] % 32 != 0:
            qt = Q.F16  # ggml blocks need rows of 32
        if qt == Q.F32 or qt == Q.F16:
            stored = x.astype(np.float32 if qt == Q.F32 else np.float16)
            w.add_tensor(gname, stored)
        elif qt == Q.BF16:
            stored = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(x.shape[0], -1)
            w.add_tensor(gname, stored, raw_dtype=qt)
        else:
            stored = quantize(x, qt)
            w.add_tensor(gname, stored, raw_dtype=qt)
        deq = dequantize(stored, qt).astype(np.float32).reshape(x.shape)
        if family == "gemma3" and is_norm:
            deq = deq - np.float32(1.0)
        if permuted and module == "attn_q":
            deq = reverse_permute(deq, heads, heads)
        elif permuted and module == "attn_k":
            deq = reverse_permute(deq, heads, kv_heads)
        expected[hf_name] = np.ascontiguousarray(deq)
    write(w)
    return expected


def gguf_reference_tokenizer(path):
    """What transformers' GGUF loader builds from the file: the `tokenizers` Tokenizer."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer_dict, _ = get_gguf_tokenizer(path)
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return backend


def family_fixture(family):
    model, tokenizer = tiny_family(family)
    gguf_path = os.path.join(OUT, f"tiny-{family}.gguf.bin")
    expected = write_family_gguf(family, model, tokenizer, gguf_path)
    save_file(expected, os.path.join(OUT, f"tiny-{family}.expected.safetensors"))
    if tokenizer["model"] == "llama":  # SentencePiece: what transformers' GGUF loader builds
        reference_json = gguf_reference_tokenizer(gguf_path).to_str(pretty=True)
    else:
        reference_json = tokenizer["reference"].to_str(pretty=True)
    ids = [{"text": t, "ids": tokenizer["encode"](t)} for t in FAMILY_TEXTS]
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config.pop("transformers_version", None)
    with open(os.path.join(OUT, f"tiny-{family}.config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    with open(os.path.join(OUT, f"tiny-{family}.tokenizer.json"), "w") as f:
        f.write(reference_json)
    with open(os.path.join(OUT, f"tiny-{family}.tokenizer-ids.json"), "w") as f:
        json.dump(ids, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    import sys

    wanted = sys.argv[1:] or ["quants", "llama", "qwen2", "qwen3", "olmo2", "gemma3", "phi3", "smollm3"]
    os.makedirs(OUT, exist_ok=True)
    # In this order: the fixtures draw from one random generator.
    if "quants" in wanted:
        quants_fixture()
    if "llama" in wanted:
        tiny_llama_fixture()
    for family in ("qwen2", "qwen3", "olmo2", "gemma3", "phi3", "smollm3"):
        if family in wanted:
            family_fixture(family)
    for name in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(os.path.join(OUT, name)):>8}  {name}")
