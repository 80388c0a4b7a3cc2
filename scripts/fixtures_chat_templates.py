"""Chat-template fixtures for alignkit-datasets, rendered with transformers.

For each family's published chat template (datasets/tests/fixtures/templates/
<family>.jinja, as the model's tokenizer_config.json / chat_template.jinja ships
it) render a set of conversations with transformers' own renderer
(`render_jinja_template`, what `apply_chat_template` calls), with and without
the generation prompt, with the template variables a config can set
(`data.chat_template_kwargs`), the special tokens `apply_chat_template` passes
and, where the template renders them, `tools=[...]` JSON schemas, into
<family>.expected.json. alignkit's minijinja rendering must produce the same
text, and the same error where the template raises one
(datasets/tests/templates.rs).

Where each template comes from (the HF hub was not reachable when they were
collected; each copy is from a repository that compares with, embeds or
tests the published template verbatim):
- qwen3.jinja: Qwen3's published template (an earlier revision than TRL's
  current chat_templates/qwen3.jinja; committed before sources were recorded here).
- gemma3.jinja: google/gemma-3-* (1b-it included), from huggingface/trl
  trl/chat_templates/gemma3.jinja at f2cd57710ae345ea6428ae95363267fcf38a3dc8
  (TRL identifies Gemma 3 checkpoints by equality with it).
- smollm3.jinja: HuggingFaceTB/SmolLM3-3B's chat_template.jinja, from
  huggingface/huggingface.js packages/jinja/test/e2e.test.js, key
  "HuggingFaceTB/SmolLM3-3B", at fe42e68017ffc76d09922ea8f9b38a6964345710
  (added in 96a5cd23b1f56b87596ea1894fa9fb0a227ed71d); a trailing newline
  the published file may have is not in that copy (it would render nothing
  after the closing `-%}`). As published, the system turn is closed with
  `<|im_end|>` only when tools are listed; transformers renders it so, and
  so does alignkit.
- olmo2.jinja: allenai/OLMo-2-1124-7B-Instruct's, as its GGUF (Ollama's
  library/olmo2:7b) embeds it, from huggingface/huggingface.js
  packages/ollama-utils/src/chat-template-automap.ts at
  fe42e68017ffc76d09922ea8f9b38a6964345710; it is `{{ bos_token }}` followed by
  open-instruct's "tulu" template (sha256 of that part
  ac7498a36a719da630e99d48e6ebc4409de85a77556c2b6159eeb735bcbd11df).
- phi3.jinja: microsoft/Phi-3.5-mini-instruct's, from huggingface/trl
  trl/chat_templates/phi3_5.jinja at f2cd57710ae345ea6428ae95363267fcf38a3dc8;
  byte-identical to ggerganov/llama.cpp
  models/templates/microsoft-Phi-3.5-mini-instruct.jinja at
  7b5e0803c84435e8005725d8f9ddceb5d1820443.
- qwen2.5-assistant-only.jinja: huggingface/trl
  trl/chat_templates/qwen2.5_sft_assistant_only.jinja at
  6b012dc157b7aa880d41ab1c2714d31453072594.

SmolLM3's system block calls `strftime_now("%d %B %Y")`; transformers defines
it as `datetime.now().strftime(format)` with no way to pass a date, so this
script pins `datetime` in transformers' module to NOW (naive, as
`datetime.now()` is) and records the instant as `strftime_now_at` (Unix
seconds, the same wall-clock time in UTC); alignkit's renderer pins its clock
the same way (`ChatTemplate::with_clock`).

For templates with `{% generation %}` blocks (TRL's
qwen2.5_sft_assistant_only.jinja, SmolLM3's), also the token ids and the
assistant mask `apply_chat_template(return_assistant_tokens_mask=True)` gives
with the SmolLM2 fixture tokenizer (ChatML tokens), into <name>.masks.json.

Run from the repo root:  python scripts/fixtures_chat_templates.py
CI never runs this; the outputs are committed.
"""
import datetime as _datetime
import json
import os

import transformers.utils.chat_template_utils as chat_template_utils
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

DIR = os.path.join(os.path.dirname(__file__), "..", "datasets", "tests", "fixtures", "templates")

NOW = _datetime.datetime(2025, 7, 10, 12, 0, 0)
NOW_UNIX = int(NOW.replace(tzinfo=_datetime.timezone.utc).timestamp())


class PinnedDatetime(_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return NOW


# `strftime_now` reads the module's `datetime` when called.
chat_template_utils.datetime = PinnedDatetime

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}],
    # Earlier assistant turns with reasoning: the template drops it before
    # the last user query and keeps it after.
    [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
     {"role": "user", "content": "Count to 3."},
     {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n1, 2, 3."}],
    [{"role": "system", "content": "Be kind."},
     {"role": "user", "content": "Ünïcode ✓ and \"quotes\""},
     {"role": "assistant", "content": "  spaced  "},
     {"role": "user", "content": "again"}],
]

# A function tool as `apply_chat_template(tools=[...])` takes it (a JSON
# schema); an apostrophe, a boolean and non-ASCII text exercise the
# templates' `tojson` / `string` filters (Python's json.dumps and str()).
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Today's weather in a city, in °C.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}]

TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"},
    {"role": "tool", "content": "{\"temperature\": 21}"},
    {"role": "assistant", "content": "21 °C in Paris."},
]

# What each template specialises, rendered as (messages, extra) pairs; extra
# may hold "tools" and template variables (added to every kwargs set).
EXTRA = {
    # Tool definitions in the system turn, the call, and its result as a
    # <tool_response> in a user turn.
    "qwen3": [
        (TOOL_TURNS, {"tools": TOOLS}),
    ],
    "gemma3": [
        # The system message is folded into the first user turn.
        ([{"role": "system", "content": "  Answer in French.  "},
          {"role": "user", "content": "Hello"},
          {"role": "assistant", "content": "Bonjour"}], {}),
        # Roles must alternate: the template raises.
        ([{"role": "user", "content": "One"},
          {"role": "user", "content": "Two"}], {}),
        ([{"role": "system", "content": "S"},
          {"role": "assistant", "content": "A first"}], {}),
    ],
    "smollm3": [
        # A /no_think (or /think) system prompt sets the mode and is removed.
        ([{"role": "system", "content": "Be brief. /no_think"},
          {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}], {}),
        ([{"role": "system", "content": "/think Reason first."},
          {"role": "user", "content": "Hi"}], {}),
        ([{"role": "system", "content": "Custom system. /system_override"},
          {"role": "user", "content": "Hi"}], {}),
        # tools=[...] become the XML tool list (each tool through `| string`).
        (TOOL_TURNS, {"tools": TOOLS}),
        # Template variables: xml_tools (dicts) and python_tools (strings).
        # (alignkit's template variables are JSON values whose objects keep
        # sorted keys, so this dict's keys are written sorted.)
        ([{"role": "user", "content": "Use a tool."}],
         {"xml_tools": [{"description": "Add two numbers", "name": "add"}],
          "python_tools": ["def add(a: int, b: int) -> int:\n    \"\"\"Add two numbers.\"\"\""]}),
    ],
    "olmo2": [
        (TOOL_TURNS, {}),
    ],
    "phi3": [
        # An empty system message is left out.
        ([{"role": "system", "content": ""},
          {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}], {}),
        (TOOL_TURNS, {}),
    ],
}

KWARGS = {
    "qwen3": [{}, {"enable_thinking": False}, {"enable_thinking": True}],
    "qwen2.5-assistant-only": [{}],
    "gemma3": [{}],
    "smollm3": [{}, {"enable_thinking": False}, {"enable_thinking": True}],
    "olmo2": [{}],
    "phi3": [{}],
}

# The special tokens apply_chat_template passes (the model's tokenizer_config.json).
SPECIAL_TOKENS = {
    "gemma3": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "smollm3": {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
    "olmo2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"},
    "phi3": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
}

MASKED = {
    "qwen2.5-assistant-only": [{}],
    "smollm3": [{}, {"enable_thinking": False}],
}
SMOLLM2 = os.path.join(DIR, "..", "smollm2")


def uses_clock(template):
    return "strftime_now" in template


def main():
    for family, kwargs_list in KWARGS.items():
        template = open(os.path.join(DIR, f"{family}.jinja")).read()
        special = SPECIAL_TOKENS.get(family, {})
        cases = []
        conversations = [(m, {}) for m in CONVERSATIONS] + EXTRA.get(family, [])
        for messages, extra in conversations:
            extra = dict(extra)
            tools = extra.pop("tools", None)
            for add_generation_prompt in (False, True):
                for kwargs in kwargs_list:
                    kwargs = {**kwargs, **extra}
                    case = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                            "kwargs": kwargs}
                    if tools is not None:
                        # JSON text: a reader keeps each object's key order.
                        case["tools"] = json.dumps(tools, ensure_ascii=False)
                    if special:
                        case["special_tokens"] = special
                    if uses_clock(template):
                        case["strftime_now_at"] = NOW_UNIX
                    try:
                        rendered, _ = render_jinja_template(
                            conversations=[messages], chat_template=template, tools=tools,
                            add_generation_prompt=add_generation_prompt, **special, **kwargs)
                        case["text"] = rendered[0]
                    except TemplateError as e:
                        case["error"] = str(e)
                    cases.append(case)
        with open(os.path.join(DIR, f"{family}.expected.json"), "w") as f:
            json.dump(cases, f, indent=1, ensure_ascii=False)
        print(family, len(cases), "cases,", sum("error" in c for c in cases), "errors")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(SMOLLM2, "tokenizer.json"))
    for name, kwargs_list in MASKED.items():
        template = open(os.path.join(DIR, f"{name}.jinja")).read()
        cases = []
        for messages in CONVERSATIONS:
            if not any(m["role"] == "assistant" for m in messages):
                continue
            for kwargs in kwargs_list:
                out = tok.apply_chat_template(messages, chat_template=template, tokenize=True,
                                              return_dict=True, return_assistant_tokens_mask=True,
                                              **kwargs)
                case = {"messages": messages, "input_ids": out["input_ids"],
                        "assistant_masks": out["assistant_masks"]}
                # Older fixtures carry no kwargs; keep them byte-identical.
                if kwargs or len(kwargs_list) > 1:
                    case["kwargs"] = kwargs
                if uses_clock(template):
                    case["strftime_now_at"] = NOW_UNIX
                cases.append(case)
        with open(os.path.join(DIR, f"{name}.masks.json"), "w") as f:
            json.dump(cases, f, indent=1, ensure_ascii=False)
        print(name, len(cases), "mask cases")


if __name__ == "__main__":
    main()
