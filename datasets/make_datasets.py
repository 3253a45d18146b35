"""Generate patchsweep's shipped prompt datasets from templates (deterministic, seeded).

Three tasks, each a JSONL file in the format of :mod:`patchsweep.pipeline.datasets`:

- ``ioi.jsonl`` — indirect-object identification (Wang et al. 2022, "Interpretability in the
  Wild"). Clean: "When Mary and John went to the store, John gave a drink to" -> " Mary".
  Corrupted: the second mention of the subject is replaced by the indirect object, so the
  answer flips ("..., Mary gave a drink to" -> " John"); ``wrong`` is the flipped answer.
  Spans: ``io``, ``s1`` (the two names in the first clause) and ``s2`` (the repeated name).
- ``facts.jsonl`` — factual recall with a labeled ``subject`` span (Meng et al. 2022, ROME).
  Corrupted: a different subject of the same relation, with the same number of words and a
  different attribute; ``wrong`` is that subject's attribute.
- ``induction.jsonl`` — induction (Olsson et al. 2022): a random word sequence, ``.``, then
  its first ``m`` words again; the answer is word ``m + 1``. Corrupted: that word's first
  occurrence is replaced by another word, which becomes ``wrong``. Spans: ``cue`` (first copy
  of the last prompt word) and ``target`` (first copy of the answer word).

Clean and corrupted prompts of a pair have the same number of words and punctuation marks,
hence the same token count under the demo model's word-level tokenizer.

Usage::

    python datasets/make_datasets.py            # writes datasets/{ioi,facts,induction}.jsonl
    python datasets/make_datasets.py --out DIR

``train_demo_model.py`` imports the generators from here to draw fresh training data.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "NAMES",
    "PLACES",
    "OBJECTS",
    "IOI_TEMPLATES",
    "FACTS",
    "FACT_TEMPLATES",
    "INDUCTION_WORDS",
    "make_ioi",
    "make_facts",
    "make_induction",
    "TASKS",
    "SHIPPED",
    "write_jsonl",
]

NAMES = (
    "Mary John Alice Bob Sarah Tom Emma James Lucy David Anna Paul Kate Mark Laura Peter "
    "Julia Sam Rachel Daniel Grace Henry Sophie Jack Clara Oliver Nina Leo Eva Max"
).split()
PLACES = "store park school office market garden station beach library hospital cafe museum".split()
OBJECTS = "drink book ring bag letter key gift ball cake pen flower ticket".split()

# {A} {B}: the two names of the first clause; {S}: the repeated name.
IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "After {A} and {B} arrived at the {place}, {S} handed the {object} to",
    "Then, {A} and {B} had a long day at the {place}. {S} gave the {object} to",
    "{A} and {B} were working at the {place}. {S} passed the {object} to",
    "While {A} and {B} were at the {place}, {S} sold the {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
)

# relation -> ((subject, attribute), ...); every attribute is one word.
FACTS: dict[str, tuple[tuple[str, str], ...]] = {
    "capital": tuple(
        (s, a)
        for s, a in (
            ("France", "Paris"),
            ("Germany", "Berlin"),
            ("Italy", "Rome"),
            ("Spain", "Madrid"),
            ("Portugal", "Lisbon"),
            ("Japan", "Tokyo"),
            ("China", "Beijing"),
            ("Russia", "Moscow"),
            ("Greece", "Athens"),
            ("Egypt", "Cairo"),
            ("Poland", "Warsaw"),
            ("Sweden", "Stockholm"),
            ("Norway", "Oslo"),
            ("Finland", "Helsinki"),
            ("Denmark", "Copenhagen"),
            ("Netherlands", "Amsterdam"),
            ("Turkey", "Ankara"),
            ("Iran", "Tehran"),
            ("Thailand", "Bangkok"),
            ("Vietnam", "Hanoi"),
            ("Peru", "Lima"),
            ("Chile", "Santiago"),
            ("Canada", "Ottawa"),
            ("Australia", "Canberra"),
            ("Kenya", "Nairobi"),
            ("Hungary", "Budapest"),
            ("Austria", "Vienna"),
            ("Ireland", "Dublin"),
            ("Romania", "Bucharest"),
            ("Ukraine", "Kyiv"),
            ("Indonesia", "Jakarta"),
            ("Cuba", "Havana"),
            ("Colombia", "Bogota"),
            ("Venezuela", "Caracas"),
            ("Iraq", "Baghdad"),
            ("Syria", "Damascus"),
            ("Pakistan", "Islamabad"),
            ("Bangladesh", "Dhaka"),
            ("Nigeria", "Abuja"),
            ("Morocco", "Rabat"),
            ("Belgium", "Brussels"),
            ("Switzerland", "Bern"),
            ("Iceland", "Reykjavik"),
            ("Croatia", "Zagreb"),
            ("Serbia", "Belgrade"),
            ("Bulgaria", "Sofia"),
            ("Philippines", "Manila"),
            ("United Kingdom", "London"),
            ("New Zealand", "Wellington"),
            ("Saudi Arabia", "Riyadh"),
            ("North Korea", "Pyongyang"),
            ("South Korea", "Seoul"),
            ("United States", "Washington"),
            ("Sri Lanka", "Colombo"),
            ("Czech Republic", "Prague"),
        )  # fmt: skip
    ),
    "language": tuple(
        (s, a)
        for s, a in (
            ("France", "French"),
            ("Germany", "German"),
            ("Italy", "Italian"),
            ("Spain", "Spanish"),
            ("Portugal", "Portuguese"),
            ("Japan", "Japanese"),
            ("China", "Chinese"),
            ("Russia", "Russian"),
            ("Greece", "Greek"),
            ("Egypt", "Arabic"),
            ("Poland", "Polish"),
            ("Sweden", "Swedish"),
            ("Norway", "Norwegian"),
            ("Finland", "Finnish"),
            ("Denmark", "Danish"),
            ("Netherlands", "Dutch"),
            ("Turkey", "Turkish"),
            ("Iran", "Persian"),
            ("Thailand", "Thai"),
            ("Vietnam", "Vietnamese"),
            ("Peru", "Spanish"),
            ("Hungary", "Hungarian"),
            ("Austria", "German"),
            ("Romania", "Romanian"),
            ("Ukraine", "Ukrainian"),
            ("Indonesia", "Indonesian"),
            ("Cuba", "Spanish"),
            ("Iraq", "Arabic"),
            ("Pakistan", "Urdu"),
            ("Bangladesh", "Bengali"),
            ("Iceland", "Icelandic"),
            ("Croatia", "Croatian"),
            ("Serbia", "Serbian"),
            ("Bulgaria", "Bulgarian"),
            ("Brazil", "Portuguese"),
            ("Mexico", "Spanish"),
            ("Kenya", "Swahili"),
            ("Israel", "Hebrew"),
            ("Australia", "English"),
            ("United Kingdom", "English"),
            ("New Zealand", "English"),
            ("Saudi Arabia", "Arabic"),
            ("South Korea", "Korean"),
            ("United States", "English"),
            ("Sri Lanka", "Sinhala"),
            ("Czech Republic", "Czech"),
        )  # fmt: skip
    ),
    "landmark": tuple(
        (s, a)
        for s, a in (
            ("Eiffel Tower", "Paris"),
            ("Louvre", "Paris"),
            ("Colosseum", "Rome"),
            ("Pantheon", "Rome"),
            ("Trevi Fountain", "Rome"),
            ("Big Ben", "London"),
            ("Tower Bridge", "London"),
            ("Brandenburg Gate", "Berlin"),
            ("Acropolis", "Athens"),
            ("Parthenon", "Athens"),
            ("Kremlin", "Moscow"),
            ("Sagrada Familia", "Barcelona"),
            ("Forbidden City", "Beijing"),
            ("Opera House", "Sydney"),
            ("Taj Mahal", "Agra"),
            ("Space Needle", "Seattle"),
            ("Rijksmuseum", "Amsterdam"),
            ("Prado", "Madrid"),
            ("Hagia Sophia", "Istanbul"),
            ("Blue Mosque", "Istanbul"),
            ("Charles Bridge", "Prague"),
            ("Little Mermaid", "Copenhagen"),
            ("Leaning Tower", "Pisa"),
            ("Alhambra", "Granada"),
            ("Burj Khalifa", "Dubai"),
            ("CN Tower", "Toronto"),
            ("Atomium", "Brussels"),
            ("Wawel Castle", "Krakow"),
            ("Tokyo Tower", "Tokyo"),
            ("Belem Tower", "Lisbon"),
        )  # fmt: skip
    ),
}
FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": ("The capital city of {s} is", "{s} has its capital in the city of"),
    "language": ("The official language of {s} is", "In {s}, most people speak"),
    "landmark": ("The {s} is located in the city of", "To see the {s}, you travel to"),
}

INDUCTION_WORDS = (
    "apple river stone cloud tiger lamp mirror forest candle bridge violin rocket "
    "pepper island window feather hammer button ocean pillow dragon engine garlic "
    "helmet jacket kettle ladder magnet needle orange parrot rabbit saddle tunnel "
    "umbrella wallet yogurt zebra anchor basket"
).split()


def _span(text: str, start: int, word: str) -> list[int]:
    """Half-open character span of ``word`` found in ``text`` at or after ``start``."""
    i = text.index(word, start)
    return [i, i + len(word)]


def _ioi_text(template: str, a: str, b: str, s: str, place: str, obj: str) -> tuple[str, dict]:
    text = template.format(A=a, B=b, S=s, place=place, object=obj)
    first = _span(text, 0, a)
    second = _span(text, first[1], b)
    after_place = text.index(place, second[1]) + len(place)
    clause2 = text.index(s, after_place)  # the name in the second clause
    return text, {"first": first, "second": second, "s2": [clause2, clause2 + len(s)]}


def make_ioi(n: int, seed: int) -> list[dict]:
    """``n`` IOI pairs: answer = the name that appears once; corrupted repeats the other name."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        t = rng.randrange(len(IOI_TEMPLATES))
        io, s = rng.sample(NAMES, 2)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        io_first = rng.random() < 0.5
        a, b = (io, s) if io_first else (s, io)
        clean, cs = _ioi_text(IOI_TEMPLATES[t], a, b, s, place, obj)
        corrupted, xs = _ioi_text(IOI_TEMPLATES[t], a, b, io, place, obj)
        io_key, s_key = ("first", "second") if io_first else ("second", "first")
        rows.append(
            {
                "id": f"ioi-{k:04d}",
                "clean": clean,
                "corrupted": corrupted,
                "answer": " " + io,
                "wrong": " " + s,
                "spans": {"io": cs[io_key], "s1": cs[s_key], "s2": cs["s2"]},
                "corrupted_spans": {"io": xs[io_key], "s1": xs[s_key], "s2": xs["s2"]},
                "task": "ioi",
                "template": f"ioi{t}_{'ABBA' if io_first else 'BABA'}",
            }
        )
    return rows


def _fact_prompts() -> list[tuple[str, int, str, str]]:
    """Every (relation, template index, subject, attribute) the facts task covers."""
    return [
        (rel, t, s, a)
        for rel, facts in FACTS.items()
        for t in range(len(FACT_TEMPLATES[rel]))
        for s, a in facts
    ]


def make_facts(seed: int) -> list[dict]:
    """One pair per (relation, template, subject): every fact under every template."""
    rng = random.Random(seed)
    rows = []
    for k, (rel, t, subject, attribute) in enumerate(_fact_prompts()):
        template = FACT_TEMPLATES[rel][t]
        others = [
            (s, a)
            for s, a in FACTS[rel]
            if a != attribute and len(s.split()) == len(subject.split())
        ]
        other, other_attribute = rng.choice(others)
        clean, corrupted = template.format(s=subject), template.format(s=other)
        rows.append(
            {
                "id": f"facts-{k:04d}",
                "clean": clean,
                "corrupted": corrupted,
                "answer": " " + attribute,
                "wrong": " " + other_attribute,
                "spans": {"subject": _span(clean, 0, subject)},
                "corrupted_spans": {"subject": _span(corrupted, 0, other)},
                "task": "facts",
                "template": f"{rel}{t}",
            }
        )
    return rows


def _induction_spans(first_copy: list[str], m: int) -> dict:
    """``cue`` = first copy of word ``m - 1`` (the prompt's last word), ``target`` = of word ``m``."""
    cue = len(" ".join(first_copy[: m - 1])) + 1  # m >= 2, so a space precedes it
    target = cue + len(first_copy[m - 1]) + 1
    return {
        "cue": [cue, cue + len(first_copy[m - 1])],
        "target": [target, target + len(first_copy[m])],
    }


def make_induction(n: int, seed: int) -> list[dict]:
    """``n`` induction pairs over sequences of 6-10 distinct words."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        length = rng.randint(6, 10)
        words = rng.sample(INDUCTION_WORDS, length + 1)
        seq, replacement = words[:length], words[length]
        m = rng.randint(2, length - 1)
        answer = seq[m]
        corrupted_seq = seq[:m] + [replacement] + seq[m + 1 :]
        clean = " ".join(seq) + " . " + " ".join(seq[:m])
        corrupted = " ".join(corrupted_seq) + " . " + " ".join(seq[:m])

        rows.append(
            {
                "id": f"induction-{k:04d}",
                "clean": clean,
                "corrupted": corrupted,
                "answer": " " + answer,
                "wrong": " " + replacement,
                "spans": _induction_spans(seq, m),
                "corrupted_spans": _induction_spans(corrupted_seq, m),
                "task": "induction",
                "template": f"len{length}_prefix{m}",
            }
        )
    return rows


# task name -> generator(n, seed); facts ignores n (it always covers every fact).
TASKS: dict[str, Callable[[int, int], list[dict]]] = {
    "ioi": make_ioi,
    "facts": lambda n, seed: make_facts(seed),
    "induction": make_induction,
}
# What ships in datasets/: task -> (n, seed). Training uses other seeds.
SHIPPED: dict[str, tuple[int, int]] = {"ioi": (300, 1), "facts": (0, 2), "induction": (300, 3)}


def write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for task, (n, seed) in SHIPPED.items():
        rows = TASKS[task](n, seed)
        write_jsonl(rows, args.out / f"{task}.jsonl")
        print(f"{task}: {len(rows)} pairs -> {args.out / f'{task}.jsonl'}")


if __name__ == "__main__":
    main()
