"""Data preparation: Hub data sets (through `datasets`) or local files, through the same code, into
the JSONL files the job spec names.

- SFT: ChatML rows `{"messages": [system, user, assistant]}`
- DPO: `{"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}`
- GRPO and test: `{"prompt": [system, user], "answer": gold}` (GSM8K answer format for math,
  the reference translation for translation)

Splits are seeded and deterministic; exact duplicates are removed; no test item leaks into train.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainer.errors import BadInput
from trainer.textio import RowError, iter_jsonl, read_lines

MATH_SYSTEM = (
    "You are a careful math tutor. Solve the problem step by step, then give the final answer "
    "on its own last line as '#### <number>'."
)
TRANSLATION_SYSTEM = (
    "You are a professional Korean-to-English translator. Translate the user's Korean text into "
    "fluent, natural English. Reply with the translation only."
)

# Hub sources the guide lists; `--full` adds the larger augmentation sets for SFT.
MATH_HUB = {"gsm8k": ("openai/gsm8k", "main")}
MATH_HUB_FULL = {"metamath": ("meta-math/MetaMathQA", None), "mathinstruct": ("TIGER-Lab/MathInstruct", None)}
MATH_PREFERENCE_HUB = ("argilla/distilabel-math-preference-dpo", None)
TRANSLATION_HUB = ("Helsinki-NLP/opus-100", "en-ko")
TRANSLATION_HUB_FULL = {"nllb": ("NHNDQ/nllb-translation-ko-en", None)}

PROTOTYPE_LIMIT = {"math": 2000, "translation": 50000}
CALCULATOR = re.compile(r"<<[^>]*>>")


class DataSourceError(BadInput):
    """A local data source that is not in the expected format; the message names the file (and line)."""


@dataclass
class PrepResult:
    out_dir: Path
    counts: dict[str, int]
    dropped_duplicates: int
    dropped_test_overlap: int


def _key(text: str) -> str:
    return hashlib.sha1(" ".join(text.split()).lower().encode()).hexdigest()


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def _write_prepared(out: Path, files: dict[str, Iterable[dict]], *, task: str, source: str, full: bool, seed: int,
                    dupes: int, leaks: int) -> PrepResult:
    """Each named JSONL file under `out`, then `data_config.yaml` saying where they came from and what was
    dropped."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {name: _write_jsonl(out / name, rows) for name, rows in files.items()}
    config = {"task": task, "source": source, "full": full, "seed": seed, "files": counts,
              "dropped": {"exact_duplicates": dupes, "test_overlap": leaks}}
    (out / "data_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return PrepResult(out, counts, dupes, leaks)


def _split(rows: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(the first `fraction` of the rows, at least one; the rest): a held-out split of shuffled rows."""
    n = max(1, int(len(rows) * fraction))
    return rows[:n], rows[n:]


def _dedupe(rows: list[dict], key_of, exclude: set[str]) -> tuple[list[dict], int, int]:
    seen: set[str] = set()
    out, dupes, leaks = [], 0, 0
    for row in rows:
        k = key_of(row)
        if k in exclude:
            leaks += 1
        elif k in seen:
            dupes += 1
        else:
            seen.add(k)
            out.append(row)
    return out, dupes, leaks


# ------------------------------------------------------------------------------------- math
def clean_gsm8k_answer(answer: str) -> str:
    """Drop GSM8K's `<<48/2=24>>` calculator annotations; keep the `#### N` last line."""
    return CALCULATOR.sub("", answer).strip()


def math_prompt(question: str) -> list[dict]:
    return [{"role": "system", "content": MATH_SYSTEM}, {"role": "user", "content": question.strip()}]


def wrong_solution(answer: str, rng: random.Random) -> str:
    """A plausible wrong solution for a DPO pair: the final result changed everywhere it appears last."""
    body, _, final_text = answer.rpartition("####")
    final_text = final_text.strip()
    try:
        value = float(final_text.replace(",", ""))
    except ValueError:
        return body + "#### " + final_text + "0"
    wrong = value + rng.choice([-1, 1]) * max(1, round(abs(value) * rng.choice([0.1, 0.5, 1.0])))
    wrong_text = str(int(wrong)) if float(wrong).is_integer() else f"{wrong:g}"
    idx = body.rfind(final_text)  # the last place the result is stated in the reasoning
    if idx >= 0:
        body = body[:idx] + wrong_text + body[idx + len(final_text):]
    return body.rstrip() + "\n#### " + wrong_text


def _gsm8k_rows(source: str, split: str, full: bool) -> list[dict]:
    if source == "hub":
        from datasets import load_dataset

        rows = [dict(r) for r in load_dataset(*MATH_HUB["gsm8k"], split=split)]
        if full and split == "train":
            meta = load_dataset(MATH_HUB_FULL["metamath"][0], split="train")
            rows += [{"question": r["query"], "answer": r["response"].replace("The answer is:", "####")}
                     for r in meta if r.get("type", "").startswith("GSM")]
        return rows
    path = Path(source) / f"{split}.jsonl"
    if not path.exists():
        raise DataSourceError(f"{path}: not found (a local math source is a folder with train.jsonl and test.jsonl "
                              "in GSM8K format)")
    rows = []
    for number, row in iter_jsonl(path):
        if isinstance(row, RowError):
            raise DataSourceError(str(row))
        if not isinstance(row, dict) or "question" not in row or "answer" not in row:
            raise DataSourceError(f"{path}:{number}: expected GSM8K keys 'question' and 'answer'")
        rows.append(row)
    return rows


def prepare_math(source: str, out: Path, full: bool = False, limit: int | None = None,
                 test_limit: int | None = None, val_fraction: float = 0.05, seed: int = 42) -> PrepResult:
    rng = random.Random(seed)
    test = _gsm8k_rows(source, "test", full)
    train = _gsm8k_rows(source, "train", full)
    test, test_dupes, _ = _dedupe(test, lambda r: _key(r["question"]), set())
    test_keys = {_key(r["question"]) for r in test}
    train, dupes, leaks = _dedupe(train, lambda r: _key(r["question"]), test_keys)
    rng.shuffle(train)
    cap = None if full else (limit or PROTOTYPE_LIMIT["math"])
    if limit:
        cap = limit
    train = train[:cap] if cap else train
    if test_limit:
        test = test[:test_limit]
    val, train = _split(train, val_fraction)

    def sft(r: dict) -> dict:
        return {"messages": math_prompt(r["question"]) + [
            {"role": "assistant", "content": clean_gsm8k_answer(r["answer"])}]}

    def pair(r: dict) -> dict:
        good = clean_gsm8k_answer(r["answer"])
        return {"prompt": math_prompt(r["question"]), "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": wrong_solution(good, rng)}]}

    def prompt_row(r: dict) -> dict:
        return {"prompt": math_prompt(r["question"]), "answer": r["answer"]}

    return _write_prepared(out, {
        "sft_train.jsonl": map(sft, train),
        "sft_val.jsonl": map(sft, val),
        "preference_pairs.jsonl": map(pair, train),
        "preference_pairs_val.jsonl": map(pair, val),
        "grpo_prompts.jsonl": map(prompt_row, train),
        "gsm8k_test.jsonl": map(prompt_row, test),
    }, task="math", source=source, full=full, seed=seed, dupes=dupes + test_dupes, leaks=leaks)


# ------------------------------------------------------------------------------ translation
def translation_prompt(korean: str) -> list[dict]:
    return [{"role": "system", "content": TRANSLATION_SYSTEM},
            {"role": "user", "content": f"Translate to English:\n{korean.strip()}"}]


def _parallel_pairs(source: str, full: bool) -> tuple[list[tuple[str, str]], list[tuple[str, str]] | None]:
    """(ko, en) pairs; the second list is a published test split when the source has one."""
    if source == "hub":
        from datasets import load_dataset

        def pairs(split: str) -> list[tuple[str, str]]:
            ds = load_dataset(*TRANSLATION_HUB, split=split)
            return [(r["translation"]["ko"], r["translation"]["en"]) for r in ds]

        train = pairs("train")
        if full:
            nllb = load_dataset(TRANSLATION_HUB_FULL["nllb"][0], split="train")
            cols = nllb.column_names
            ko, en = ("korean", "english") if "korean" in cols else ("ko", "en")
            train += [(r[ko], r[en]) for r in nllb]
        return train, pairs("test")
    folder = Path(source)
    ko_files, en_files = sorted(folder.glob("*.ko")), sorted(folder.glob("*.en"))
    if not ko_files or len(ko_files) != len(en_files):
        raise DataSourceError(f"{folder}: a local translation source is a folder of parallel NAME.ko / NAME.en "
                              "files, one sentence a line")
    pairs: list[tuple[str, str]] = []
    for ko_path, en_path in zip(ko_files, en_files, strict=True):
        ko_lines, en_lines = read_lines(ko_path), read_lines(en_path)
        if len(ko_lines) != len(en_lines):
            raise DataSourceError(f"{ko_path} has {len(ko_lines)} lines but {en_path} has {len(en_lines)}")
        pairs += [(k.strip(), e.strip()) for k, e in zip(ko_lines, en_lines, strict=True) if k.strip() and e.strip()]
    return pairs, None


def prepare_translation(source: str, out: Path, full: bool = False, limit: int | None = None,
                        test_limit: int | None = None, val_fraction: float = 0.05, test_fraction: float = 0.1,
                        seed: int = 42) -> PrepResult:
    rng = random.Random(seed)
    pairs, test = _parallel_pairs(source, full)
    rows = [{"ko": k, "en": e} for k, e in pairs]
    rows, dupes, _ = _dedupe(rows, lambda r: _key(r["ko"]), set())
    rng.shuffle(rows)
    if test is None:
        test_rows, rows = _split(rows, test_fraction)
    else:
        test_rows, test_dupes, _ = _dedupe([{"ko": k, "en": e} for k, e in test], lambda r: _key(r["ko"]), set())
        dupes += test_dupes
    test_keys = {_key(r["ko"]) for r in test_rows}
    rows, _, leaks = _dedupe(rows, lambda r: _key(r["ko"]), test_keys)
    cap = limit or (None if full else PROTOTYPE_LIMIT["translation"])
    rows = rows[:cap] if cap else rows
    if test_limit:
        test_rows = test_rows[:test_limit]
    val, train = _split(rows, val_fraction)

    def sft(r: dict) -> dict:
        return {"messages": translation_prompt(r["ko"]) + [{"role": "assistant", "content": r["en"]}]}

    def prompt_row(r: dict) -> dict:
        return {"prompt": translation_prompt(r["ko"]), "answer": r["en"]}

    return _write_prepared(out, {
        "train.jsonl": map(sft, train),
        "val.jsonl": map(sft, val),
        "grpo_prompts.jsonl": map(prompt_row, train),
        "test.jsonl": map(prompt_row, test_rows),
    }, task="translation", source=source, full=full, seed=seed, dupes=dupes, leaks=leaks)


# ------------------------------------------------------------------------------------ the demo
DEMO_SAMPLE = Path("data/samples/gsm8k")
DEMO_DATA = Path("data/processed/demo")


def prepare_demo_data(root: Path = Path(".")) -> PrepResult:
    """The data `configs/demo.yaml` names: the bundled GSM8K sample, prepared as `ft data prepare` does."""
    return prepare_math(str(root / DEMO_SAMPLE), root / DEMO_DATA, limit=200, test_limit=50)
