"""Chat-template fixtures for alignkit-datasets, rendered with transformers.

For each family's published chat template (datasets/tests/fixtures/templates/
<family>.jinja, as the model's tokenizer_config.json ships it) render a set of
conversations with transformers' own renderer (`render_jinja_template`, what
`apply_chat_template` calls), with and without the generation prompt and with
the template variables a config can set (`data.chat_template_kwargs`), into
<family>.expected.json. alignkit's minijinja rendering must produce the same
text (datasets/tests/templates.rs).

For templates that mark the assistant's text with `{% generation %}` blocks
(TRL's qwen2.5_sft_assistant_only.jinja), also the token ids and the
assistant mask `apply_chat_template(return_assistant_tokens_mask=True)`
gives with the SmolLM2 fixture tokenizer (ChatML tokens), into
<name>.masks.json.

Run from the repo root:  python scripts/fixtures_chat_templates.py
CI never runs this; the outputs are committed.
"""
import json
import os

from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

DIR = os.path.join(os.path.dirname(__file__), "..", "datasets", "tests", "fixtures", "templates")

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

KWARGS = {
    "qwen3": [{}, {"enable_thinking": False}, {"enable_thinking": True}],
    "qwen2.5-assistant-only": [{}],
}

MASKED = ["qwen2.5-assistant-only"]
SMOLLM2 = os.path.join(DIR, "..", "smollm2")


def main():
    for family, kwargs_list in KWARGS.items():
        template = open(os.path.join(DIR, f"{family}.jinja")).read()
        cases = []
        for messages in CONVERSATIONS:
            for add_generation_prompt in (False, True):
                for kwargs in kwargs_list:
                    rendered, _ = render_jinja_template(
                        conversations=[messages], chat_template=template,
                        add_generation_prompt=add_generation_prompt, **kwargs)
                    cases.append({"messages": messages,
                                  "add_generation_prompt": add_generation_prompt,
                                  "kwargs": kwargs, "text": rendered[0]})
        with open(os.path.join(DIR, f"{family}.expected.json"), "w") as f:
            json.dump(cases, f, indent=1, ensure_ascii=False)
        print(family, len(cases), "cases")
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(SMOLLM2, "tokenizer.json"))
    for name in MASKED:
        template = open(os.path.join(DIR, f"{name}.jinja")).read()
        cases = []
        for messages in CONVERSATIONS:
            if not any(m["role"] == "assistant" for m in messages):
                continue
            out = tok.apply_chat_template(messages, chat_template=template, tokenize=True,
                                          return_dict=True, return_assistant_tokens_mask=True)
            cases.append({"messages": messages, "input_ids": out["input_ids"],
                          "assistant_masks": out["assistant_masks"]})
        with open(os.path.join(DIR, f"{name}.masks.json"), "w") as f:
            json.dump(cases, f, indent=1, ensure_ascii=False)
        print(name, len(cases), "mask cases")


if __name__ == "__main__":
    main()
