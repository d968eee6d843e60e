"""Two real handwritten digits side by side: `mmrl build-data digits --question sum --n 600 --eval-n 200 --out DIR`.

The images are scikit-learn's bundled copy of the UCI handwritten digits (1,797 real 8x8 scans, 16 grey levels,
`sklearn.datasets.load_digits`: shipped with the package, no download). An item puts two of them side by side and
asks one question whose answer is a number (`sum`: 0-18, `larger`: 0-9, `product_mod10`: 0-9), so the accuracy
reward scores it as a `number` task; the question needs the two digits read and one reasoning step. `read` asks for
one of the two digits ("Which digit is on the left?", then the right, alternating): a reading stage for a cold start
that must first learn to read the pictures (docs/ablations_digits.md).

The split is of the source scans, fixed and independent of `--seed`: per digit class, a quarter of the scans
(shuffled with SPLIT_SEED) are eval scans, the rest training scans. Training items use only training scans and eval
items only eval scans, so no scan is on both sides (`meta.scans` names the two source indices of every item).

Each scan is upscaled (nearest neighbour: the 8x8 grid stays sharp) to an `--image-size` square, dark ink on white,
and the two are joined into one `2*size x size` picture. The CoT target (`response`) has two lengths, for cold starts
and for PTST's short-then-long stages: `short` ("<think> 3 + 5 = 8 </think>") or `long` (each digit named, then the
step); `mixed` alternates them item by item.

>>> import tempfile
>>> train, held_out = split_scans()
>>> len(train) + len(held_out), sorted(set(train) & set(held_out))
(1797, [])
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from data_pipelines.builder_args import bounded
from data_pipelines.inputs import MAX_SEED
from data_pipelines.registry import register_builder
from mmrl.errors import UserError

QUESTIONS = {
    "sum": "What is the sum of the two digits?",
    "larger": "What is the larger of the two digits?",
    "product_mod10": "What is the last digit of the product of the two digits?",
    "read": "Which digit is on the {side}?",  # `side` alternates item by item: left, right
}
SIDES = ("left", "right")
COT_LENGTHS = ("short", "long", "mixed")
FORMS = ("open", "mc", "yes_no")  # Curr-ReFT's stages: the open question, 4 numbered options, a proposed answer
ANSWER_RANGE = {"sum": (0, 18), "larger": (0, 9), "product_mod10": (0, 9), "left": (0, 9), "right": (0, 9)}
SPLIT_SEED = 0  # the scan split never changes with --seed: every seed and arm evaluates on the same held-out scans
EVAL_FRACTION = 0.25
MAX_ITEMS = 1_000_000
INSTALL = "pip install 'mmrl[digits]' (scikit-learn)"

EXAMPLES = """needs scikit-learn (its bundled digits, no download): pip install 'mmrl[digits]' (the dev extra has it)
examples:
  mmrl build-data digits --n 600 --eval-n 200 --out data/digits                 # "What is the sum ...?" (0-18)
  mmrl build-data digits --question larger --cot long --n 64 --out data/larger
  mmrl build-data digits --question read --n 1200 --out data/read   # "Which digit is on the left?" (then right)
"""


def load_scans() -> tuple[Any, list[int]]:
    """(images: array [1797, 8, 8] of 0..16, labels) from scikit-learn's bundled copy; one line if it is missing."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError(f"build-data digits needs scikit-learn, which is not installed: {INSTALL}") from None
    digits = load_digits()
    return digits.images, [int(v) for v in digits.target]


def split_scans(labels: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(training scan indices, eval scan indices): per class, EVAL_FRACTION of the scans go to eval."""
    if labels is None:
        labels = load_scans()[1]
    rng = random.Random(SPLIT_SEED)
    train: list[int] = []
    held_out: list[int] = []
    for digit in range(10):
        scans = [i for i, label in enumerate(labels) if label == digit]
        rng.shuffle(scans)
        cut = round(len(scans) * EVAL_FRACTION)
        held_out.extend(scans[:cut])
        train.extend(scans[cut:])
    return sorted(train), sorted(held_out)


def answer_of(question: str, left: int, right: int) -> int:
    """The gold number of `question` about the digits `left` and `right`.

    >>> answer_of("sum", 9, 8), answer_of("larger", 2, 7), answer_of("product_mod10", 7, 8), answer_of("right", 2, 7)
    (17, 7, 6, 7)
    """
    if question in SIDES:  # `read`'s two questions
        return left if question == "left" else right
    if question == "sum":
        return left + right
    if question == "larger":
        return max(left, right)
    return (left * right) % 10


def _step(question: str, left: int, right: int, answer: int) -> str:
    if question == "sum":
        return f"{left} + {right} = {answer}"
    if question == "larger":
        return f"the larger of {left} and {right} is {answer}"
    return f"{left} x {right} = {left * right}, last digit {answer}"


def cot_target(question: str, left: int, right: int, length: str) -> str:
    """The SFT target: a short (the step only) or long (each digit named, then the step) chain of thought; a
    reading question (`left`, `right`) names its digit, whatever the length.

    >>> cot_target("sum", 3, 5, "short")
    '<think> 3 + 5 = 8 </think><answer> 8 </answer>'
    >>> cot_target("left", 3, 5, "long")
    '<think> The left digit is 3. </think><answer> 3 </answer>'
    """
    answer = answer_of(question, left, right)
    if question in SIDES:
        return f"<think> The {question} digit is {answer}. </think><answer> {answer} </answer>"
    step = _step(question, left, right, answer)
    if length == "long":
        step = f"The left digit is {left}. The right digit is {right}. So {step}."
    return f"<think> {step} </think><answer> {answer} </answer>"


def form_item(question: str, left: int, right: int, length: str, form: str, rng: random.Random) -> dict[str, Any]:
    """Prompt, answer, task (and choices) of one form, with its CoT target: the open question (task `number`), the
    question with four numbered options A-D (task `mc`: wrong options are nearby numbers of the answer's range), or a
    proposed answer to confirm (task `yes_no`: right or wrong with even odds).

    >>> item = form_item("sum", 3, 5, "short", "yes_no", random.Random(1))
    >>> item["prompt"], item["answer"], item["response"]
    ('What is the sum of the two digits? Proposed answer: 8. Is this correct? Answer yes or no.', 'yes', '<think> 3 + 5 = 8 </think><answer> yes </answer>')
    """
    from data_pipelines.distractors import numeric_distractors

    gold = answer_of(question, left, right)
    target = cot_target(question, left, right, length)
    text = QUESTIONS["read"].format(side=question) if question in SIDES else QUESTIONS[question]
    if form == "open":
        return {"prompt": text, "answer": str(gold), "task": "number", "response": target}
    low, high = ANSWER_RANGE[question]
    wrong = [int(w) for w in numeric_distractors(gold, rng, k=3, minimum=low, maximum=high)]
    thought = target.split("</think>")[0]
    if form == "mc":
        options = [gold, *wrong]
        rng.shuffle(options)
        letter = "ABCD"[options.index(gold)]
        lines = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))
        return {
            "prompt": f"{text}\n{lines}\nAnswer with the letter.",
            "answer": letter,
            "task": "mc",
            "choices": [str(o) for o in options],
            "response": f"{thought}That is option {letter}. </think><answer> {letter} </answer>",
        }
    proposed = gold if rng.random() < 0.5 else rng.choice(wrong)
    verdict = "yes" if proposed == gold else "no"
    return {
        "prompt": f"{text} Proposed answer: {proposed}. Is this correct? Answer yes or no.",
        "answer": verdict,
        "task": "yes_no",
        "response": f"{thought}</think><answer> {verdict} </answer>",
    }


def render_pair(left: Any, right: Any, size: int):
    """Two 8x8 scans (0..16) as one RGB picture `2*size` wide and `size` high, dark ink on white."""
    from PIL import Image

    halves = []
    for scan in (left, right):
        grey = Image.fromarray((255 - scan * (255 / 16)).round().clip(0, 255).astype("uint8"), mode="L")
        halves.append(grey.resize((size, size), Image.Resampling.NEAREST))
    canvas = Image.new("L", (2 * size, size), 255)
    canvas.paste(halves[0], (0, 0))
    canvas.paste(halves[1], (size, 0))
    return canvas.convert("RGB")


def build_digits(
    out_dir: str | Path,
    n: int,
    seed: int,
    split: str,
    question: str = "sum",
    cot: str = "mixed",
    image_size: int = 56,
    forms: tuple[str, ...] = ("open",),
) -> Path:
    """Write `n` items of `split` ('train' or 'eval': which scans they use) to `out_dir/<split>.jsonl` + images/;
    the items cycle through `forms`."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval' (got {split!r})")
    if not forms or any(f not in FORMS for f in forms):
        raise UserError(f"--forms: each of {', '.join(FORMS)}, comma-separated (got {','.join(forms) or 'nothing'})")
    images, labels = load_scans()
    pool = split_scans(labels)[0 if split == "train" else 1]
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rng = random.Random(f"digits:{seed}:{split}:{i}")
        scans = [rng.choice(pool), rng.choice(pool)]
        left, right = (labels[s] for s in scans)
        length = cot if cot != "mixed" else COT_LENGTHS[(i // len(forms)) % 2]
        form = forms[i % len(forms)]
        asked = SIDES[i % 2] if question == "read" else question
        name = f"{split}-{question}-{i:06d}"
        picture = render_pair(images[scans[0]], images[scans[1]], image_size)
        picture.save(out / "images" / f"{name}.png")
        item = form_item(asked, left, right, length, form, rng)
        meta = {
            "digits": [left, right],
            "scans": scans,
            "split": split,
            "question": asked,
            "form": form,
            "cot": length,
            "open_answer": str(answer_of(asked, left, right)),
            "source": "sklearn.datasets.load_digits",
        }
        record = {"id": name, "images": [f"images/{name}.png"], **item, "image_size": list(picture.size), "meta": meta}
        lines.append(json.dumps(record))
    path = out / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- `mmrl build-data digits` ------------------------------------------------------------------------------------
def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--question", default="sum", choices=list(QUESTIONS), help="what is asked about the two digits")
    p.add_argument("--n", type=bounded(int, 1, MAX_ITEMS), default=600, help="training items (train.jsonl)")
    p.add_argument(
        "--eval-n",
        type=bounded(int, 0, MAX_ITEMS),
        default=0,
        help="held-out items from the eval scans (eval.jsonl); 0: none",
    )
    p.add_argument(
        "--seed", type=bounded(int, 0, MAX_SEED), default=0, help="which pairs are drawn (the scan split is fixed)"
    )
    p.add_argument(
        "--cot",
        default="mixed",
        choices=list(COT_LENGTHS),
        help="length of the <think> target: short, long, or mixed (alternating)",
    )
    p.add_argument(
        "--image-size",
        type=bounded(int, 8, 1024),
        default=56,
        help="side of each upscaled digit in pixels (the picture is 2*size x size)",
    )
    p.add_argument("--forms", default="open", help="comma-separated forms the items cycle through: open,mc,yes_no")
    p.add_argument("--out", required=True, help="output directory (train.jsonl [+ eval.jsonl] + images/)")


def _check(args: argparse.Namespace) -> None:
    forms = [f.strip() for f in str(args.forms).split(",") if f.strip()]
    if not forms or any(f not in FORMS for f in forms):
        raise UserError(f"--forms: each of {', '.join(FORMS)}, comma-separated (got {args.forms!r})")
    load_scans()  # a missing scikit-learn is one line when the pipeline loads, not after hours of earlier steps


def _run(args: argparse.Namespace) -> int:
    _check(args)  # the command line too: a bad --forms is refused before anything is written
    forms = tuple(f.strip() for f in args.forms.split(",") if f.strip())
    common = {"question": args.question, "cot": args.cot, "image_size": args.image_size, "forms": forms}
    path = build_digits(args.out, args.n, args.seed, "train", **common)
    print(f"wrote {args.n} items from the training scans to {path}")
    if args.eval_n:
        path = build_digits(args.out, args.eval_n, args.seed, "eval", **common)
        print(f"wrote {args.eval_n} items from the held-out scans to {path}")
    return 0


def _outputs(args: argparse.Namespace) -> dict[str, Path]:
    out = Path(args.out)
    return {"train": out / "train.jsonl", **({"eval": out / "eval.jsonl"} if args.eval_n else {})}


def _writes(args: argparse.Namespace) -> dict[Path, tuple[str, ...]]:
    return {Path(args.out): ("train.jsonl", "eval.jsonl", "images")}


register_builder(
    "digits",
    "two real handwritten digits (scikit-learn's bundled scans), a question with a number answer",
    _args,
    _run,
    EXAMPLES,
    _outputs,
    check=_check,
    writes=_writes,
)
