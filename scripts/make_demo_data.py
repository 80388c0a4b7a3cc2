"""Writes examples/demo/*.jsonl: the data of `alignkit demo`.

The task: answer in exactly one sentence. SmolLM2-135M-Instruct usually answers
in several; the rule (alignkit_eval::Rule::OneSentence) checks the behaviour.

  sft.jsonl        prompt/completion pairs, one-sentence answers       (train)
  prefs.jsonl      prompt/chosen/rejected, one sentence vs. rambling    (train)
  heldout.jsonl    prompts only, disjoint subjects                      (evaluation)

Deterministic (seeded); run from the repo root: python scripts/make_demo_data.py
"""
import json
import os
import random

OUT = os.path.join(os.path.dirname(__file__), "..", "examples", "demo")

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasília"), ("Argentina", "Buenos Aires"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Russia", "Moscow"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Mexico", "Mexico City"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Indonesia", "Jakarta"),
    ("Nigeria", "Abuja"), ("Morocco", "Rabat"), ("Cuba", "Havana"), ("Iceland", "Reykjavik"),
    ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Colombia", "Bogotá"),
]
ELEMENTS = [
    ("hydrogen", "H"), ("helium", "He"), ("carbon", "C"), ("nitrogen", "N"), ("oxygen", "O"),
    ("sodium", "Na"), ("iron", "Fe"), ("gold", "Au"), ("silver", "Ag"), ("copper", "Cu"),
    ("lead", "Pb"), ("potassium", "K"), ("calcium", "Ca"), ("zinc", "Zn"), ("tin", "Sn"),
    ("mercury", "Hg"), ("neon", "Ne"), ("sulfur", "S"), ("chlorine", "Cl"), ("uranium", "U"),
]
ANIMALS = [
    ("cow", "moos"), ("dog", "barks"), ("cat", "meows"), ("duck", "quacks"), ("lion", "roars"),
    ("horse", "neighs"), ("sheep", "bleats"), ("owl", "hoots"), ("pig", "oinks"), ("snake", "hisses"),
    ("frog", "croaks"), ("bee", "buzzes"), ("wolf", "howls"), ("mouse", "squeaks"), ("crow", "caws"),
]
OPPOSITES = [
    ("hot", "cold"), ("tall", "short"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("early", "late"), ("full", "empty"), ("strong", "weak"), ("rich", "poor"),
    ("loud", "quiet"), ("hard", "soft"), ("old", "young"), ("wet", "dry"), ("thick", "thin"),
]
RAMBLE = [
    "This is a common question, and it is worth knowing.",
    "There is a lot more to say about this topic.",
    "Many people find this interesting to learn about.",
    "Let me know if you would like more details.",
    "I hope this helps you with your question!",
    "It is also useful to remember some related facts.",
    "You can find more information in an encyclopedia.",
    "This has been true for a long time.",
]


def facts(rng):
    items = []
    for country, city in CAPITALS:
        q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                        "Name the capital city of {c}."]).format(c=country)
        items.append(("capital", country, q, f"The capital of {country} is {city}."))
    for name, sym in ELEMENTS:
        q = rng.choice(["What is the chemical symbol for {e}?", "Which symbol stands for {e}?"]).format(e=name)
        items.append(("element", name, q, f"The chemical symbol for {name} is {sym}."))
    for animal, sound in ANIMALS:
        q = rng.choice(["What sound does a {a} make?", "How does a {a} sound?"]).format(a=animal)
        items.append(("animal", animal, q, f"A {animal} {sound}."))
    for word, opp in OPPOSITES:
        q = rng.choice(["What is the opposite of {w}?", "Give the opposite of the word {w}."]).format(w=word)
        items.append(("opposite", word, q, f"The opposite of {word} is {opp}."))
    for _ in range(130):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        q = rng.choice(["What is {a} plus {b}?", "How much is {a} + {b}?"]).format(a=a, b=b)
        items.append(("sum", f"{a}+{b}", q, f"{a} plus {b} is {a + b}."))
    for _ in range(70):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"What is {a} times {b}?"
        items.append(("product", f"{a}*{b}", q, f"{a} times {b} is {a * b}."))
    return items


LEGS = [("spider", 8), ("dog", 4), ("chicken", 2), ("ant", 6), ("octopus", 8), ("horse", 4),
        ("human", 2), ("beetle", 6), ("crab", 10), ("cat", 4), ("ostrich", 2), ("butterfly", 6)]
COLORS = [("a ripe banana", "yellow"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
          ("a ripe tomato", "red"), ("the sky on a clear day", "blue"), ("a pumpkin", "orange"),
          ("an eggplant", "purple"), ("chocolate", "brown"), ("a lemon", "yellow")]


def more_facts(rng):
    items = []
    for animal, n in LEGS:
        items.append(("legs", animal, f"How many legs does a {animal} have?",
                      f"A {animal} has {n} legs."))
    for thing, color in COLORS:
        items.append(("color", thing, f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is {color}."))
    return items


def ramble(rng, answer):
    extra = rng.sample(RAMBLE, rng.randint(2, 3))
    return " ".join([answer] + extra)


def main():
    rng = random.Random(20261128)
    items = facts(rng) + more_facts(rng)
    # Held-out: whole subjects never seen in training (dedupe on subject).
    seen = {}
    for kind, subject, q, a in items:
        seen.setdefault((kind, subject), (q, a))
    keys = sorted(seen)
    rng.shuffle(keys)
    heldout_keys = set(keys[:60])
    train = [(k, seen[k]) for k in keys if k not in heldout_keys]
    held = [(k, seen[k]) for k in keys if k in heldout_keys]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "sft.jsonl"), "w") as f:
        for _, (q, a) in train:
            f.write(json.dumps({"prompt": [{"role": "user", "content": q}],
                                "completion": [{"role": "assistant", "content": a}]},
                               ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "prefs.jsonl"), "w") as f:
        for _, (q, a) in train:
            f.write(json.dumps({"prompt": [{"role": "user", "content": q}],
                                "chosen": [{"role": "assistant", "content": a}],
                                "rejected": [{"role": "assistant", "content": ramble(rng, a)}]},
                               ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "heldout.jsonl"), "w") as f:
        for _, (q, _a) in held:
            f.write(json.dumps({"prompt": [{"role": "user", "content": q}]}, ensure_ascii=False) + "\n")
    print(len(train), "train,", len(held), "held-out")


if __name__ == "__main__":
    main()
