"""`crystalvlm data clean` on the shapes world's LM corpus with injected dirt: what it removes against
the injected truth, and what cleaning changes for the tiny LM trained on the text.

The world's corpus (text_corpus.txt: every training conversation after its image's caption, and
existence surveys) is clean by construction. This script holds out lines for evaluation, then
injects into the rest, at known positions:

- exact duplicates: copies of earlier lines;
- near duplicates: copies of earlier lines with one small edit (a word dropped, a word added, a
  typo, changed case or punctuation, a suffix like "(repost)");
- boilerplate: web page furniture (newsletter, cookie and copyright lines, share bars) with small
  variations;
- junk: random characters, symbol runs, encoded blobs, URL lists, one word repeated, lorem ipsum,
  sentences in other languages;
- PII: e-mail addresses or phone numbers added to some clean lines (not dirt: `--pii report`
  should find them, the lines should stay).

It runs `data clean` with several settings and reports precision and recall of removal per kind
(removed lines that are not injected but repeat a line of the world's own corpus are counted apart:
the world repeats some short conversations itself). Then it trains the tiny LM (worlds/parts/lm.py)
on the raw and on the cleaned text with the same steps and seed, and reports the loss on the
held-out clean lines and the knowledge text probe (facts about shapes, scored by likelihood).

    PYTHONPATH=src python benchmarks/corpus_cleaning.py --world runs/quickstart/world --out runs/corpus-cleaning

Without --world a small shapes world is written first. Results: benchmarks/results/corpus_cleaning.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import random
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

BOILERPLATE = [
    "Subscribe to our newsletter for the latest updates and offers! Click here to sign up.",
    "This website uses cookies to improve your experience. Accept all cookies | Cookie policy | Privacy policy",
    "Copyright © {year} All rights reserved. Terms of use | Privacy | Contact us | Sitemap",
    "Share this: Facebook Twitter Pinterest Email WhatsApp Print",
    "Home > Shop > Shapes > Page {n} of {m} | Next page >> | Previous page",
    "Read more >> Posted by admin on {month} {n}, {year} | {n} comments",
]
FOREIGN = [
    "Der kleine rote Kreis liegt über dem großen blauen Quadrat am linken Rand des Bildes.",
    "Le petit cercle rouge se trouve au-dessus du grand carré bleu sur le bord gauche de l'image.",
    "El pequeño círculo rojo está encima del gran cuadrado azul en el borde izquierdo de la imagen.",
    "Il piccolo cerchio rosso si trova sopra il grande quadrato blu sul bordo sinistro dell'immagine.",
    "Het kleine rode cirkeltje ligt boven het grote blauwe vierkant aan de linkerkant van de afbeelding.",
]
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
         "et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation")
MONTHS = ["January", "March", "May", "July", "September", "November"]
FILLERS = ["really", "also", "just", "clearly", "here"]


def near_copy(text: str, rng: random.Random) -> str:
    words = text.split()
    edit = rng.choice(["drop", "add", "typo", "case", "suffix", "punct"])
    if edit == "drop" and len(words) > 4:
        del words[rng.randrange(1, len(words))]
    elif edit == "add":
        words.insert(rng.randrange(1, len(words)), rng.choice(FILLERS))
    elif edit == "typo":
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(1, len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        else:
            words[i] = w + w[-1]
    elif edit == "case":
        words = [w.upper() if k % 3 == 0 else w for k, w in enumerate(words)]
    elif edit == "suffix":
        words.append(rng.choice(["(repost)", "[updated]", "- via the forum"]))
    else:
        return text.replace("?", " ?").replace(".", " .") + " !!"
    return " ".join(words)


def junk_line(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return "".join(rng.choice(string.ascii_letters + string.digits + "$%&*#@!") for _ in range(rng.randint(30, 120)))
    if kind == 1:
        return " ".join(rng.choice(["###", "***", "|||", "---", ">>>", "@@@"]) for _ in range(rng.randint(8, 30)))
    if kind == 2:
        return base64.b64encode(rng.randbytes(rng.randint(40, 120))).decode()
    if kind == 3:
        return " ".join(f"http://www.site{rng.randrange(999)}.example/p?id={rng.randrange(10**6)}"
                        for _ in range(rng.randint(3, 8)))
    if kind == 4:
        return " ".join([rng.choice(["buy", "cheap", "click", "free", "win"])] * rng.randint(12, 40))
    if kind == 5:
        return LOREM[: rng.randint(60, len(LOREM))]
    return rng.choice(FOREIGN)


def boilerplate_line(rng: random.Random) -> str:
    return rng.choice(BOILERPLATE).format(year=rng.choice([2021, 2022, 2023, 2024]), n=rng.randint(1, 30),
                                          m=rng.randint(30, 60), month=rng.choice(MONTHS))


def with_pii(text: str, rng: random.Random) -> str:
    name = rng.choice(["anna", "li.wei", "j.smith", "maria_k", "tom"])
    if rng.random() < 0.5:
        return f"{text} Contact {name}@mail{rng.randrange(99)}.example.com for the full set."
    return f"{text} Questions? Call +1 {rng.randint(200, 999)}-555-{rng.randint(1000, 9999)}."


def build_corpus(lines: list[str], seed: int, rates: dict) -> tuple[list[dict], dict[int, str]]:
    """Records {"id", "text"} with dirt mixed in; truth maps each injected id to its kind."""
    rng = random.Random(seed)
    records, truth, originals = [], {}, []
    for text in lines:
        if rng.random() < rates["pii"]:
            text = with_pii(text, rng)
            truth[len(records)] = "pii (keep)"
        originals.append(text)  # copies are made of the world's lines seen so far, never of dirt
        records.append({"id": len(records), "text": text})
        for kind, make in (("exact duplicate", lambda: rng.choice(originals)),
                           ("near duplicate", lambda: near_copy(rng.choice(originals), rng)),
                           ("boilerplate", lambda: boilerplate_line(rng)), ("junk", lambda: junk_line(rng))):
            if rng.random() < rates[kind]:
                truth[len(records)] = kind
                records.append({"id": len(records), "text": make()})
    return records, truth


def run_clean(source: Path, out: Path, extra: list[str]) -> dict:
    from crystalvlm.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        started = time.perf_counter()
        code = main(["data", "clean", str(source), "--out", str(out), "--quiet", *extra])
        seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"data clean failed with {code}")
    summary = json.loads(buffer.getvalue())
    summary["wall_seconds"] = round(seconds, 2)
    return summary


def score_removal(out: Path, records: list[dict], truth: dict[int, str]) -> dict:
    from crystalvlm.data.curation.stream import removed_path

    removed = [json.loads(line) for line in removed_path(out).read_text().splitlines()]
    removed_ids = {r["record"]["id"] for r in removed}
    reason_of = {r["record"]["id"]: r["reason"] for r in removed}
    dirt = {i for i, kind in truth.items() if kind != "pii (keep)"}
    hits = removed_ids & dirt
    natural = {i for i in removed_ids - dirt if reason_of[i] in ("exact duplicate", "near duplicate")}
    other_false = removed_ids - dirt - natural
    per_kind = {}
    for kind in ("exact duplicate", "near duplicate", "boilerplate", "junk"):
        ids = {i for i, k in truth.items() if k == kind}
        per_kind[kind] = {"injected": len(ids), "removed": len(ids & removed_ids),
                          "recall": round(len(ids & removed_ids) / len(ids), 4) if ids else None}
    pii_ids = {i for i, k in truth.items() if k == "pii (keep)"}
    return {
        "removed": len(removed_ids), "injected_dirt": len(dirt), "true_removals": len(hits),
        "precision": round(len(hits) / len(removed_ids), 4) if removed_ids else None,
        "precision_counting_natural_duplicates": round((len(hits) + len(natural)) / len(removed_ids), 4)
        if removed_ids else None,
        "recall": round(len(hits) / len(dirt), 4),
        "natural_duplicates_removed": len(natural),
        "natural_exact_repeats_removed": sum(1 for i in natural if reason_of[i] == "exact duplicate"),
        "clean_lines_removed_otherwise": len(other_false),
        "clean_lines_removed_by_reason": _count(reason_of[i] for i in other_false),
        "pii_lines_removed": len(pii_ids & removed_ids),
        "per_kind": per_kind,
        "clean_removed_examples": [records[i]["text"][:120] for i in sorted(other_false)[:5]],
        "missed_examples": {kind: [records[i]["text"][:120] for i in sorted(dirt - removed_ids) if truth[i] == kind][:3]
                            for kind in ("near duplicate", "boilerplate", "junk")},
    }


def _count(items) -> dict:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def pii_detection(records: list[dict], truth: dict[int, str]) -> dict:
    from crystalvlm.data.curation.clean import find_pii

    flagged = {r["id"] for r in records if find_pii(r["text"])}
    # planted: the lines given an address or number, and the copies injected of them
    # (case and spacing may have been changed by a near-copy edit)
    planted = {r["id"] for r in records if "@mail" in r["text"].lower() or "call +1" in r["text"].lower()}
    return {"planted": len(planted), "flagged": len(flagged), "recall": round(len(flagged & planted) / len(planted), 4),
            "precision": round(len(flagged & planted) / len(flagged), 4) if flagged else None,
            "false_flags_examples": [records[i]["text"][:120] for i in sorted(flagged - planted)[:3]]}


# ----------------------------------------------------------------------------- tiny LM
def train_and_probe(texts: list[str], held_out: list[str], tokenizer_dir: Path, out: Path, steps: int, seed: int,
                    probe_items: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crystalvlm.worlds.parts.lm import pretrain_tiny_lm
    from crystalvlm.worlds.parts.tiny import tiny_llm_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    report = pretrain_tiny_lm(texts, tokenizer, tiny_llm_config(len(tokenizer), hidden=128, layers=2), out,
                              steps=steps, lr=1e-3, seed=seed, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in held_out:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:255] + [tokenizer.eos_token_id]
            ids = torch.tensor([[tokenizer.bos_token_id] + ids])  # (1, T)
            loss = model(input_ids=ids, labels=ids).loss
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return {"train_lines": len(texts), "steps": report.steps, "first_loss": report.first_loss,
            "last_loss": report.last_loss, "seconds": report.seconds,
            "held_out_loss": round(total / count, 4), "text_probe": knowledge_probe(model, tokenizer, probe_items)}


def knowledge_probe(model, tokenizer, n_items: int, seed: int = 1) -> dict:
    """The world's knowledge items in the corpus's form, scored by the likelihood of each candidate
    (the same probe as benchmarks/adapter_methods.py, on a plain LM)."""
    import torch

    from crystalvlm.worlds.shapes.mixture import knowledge_item
    from crystalvlm.worlds.shapes.questions import SHORT_ANSWER_PROMPT

    rng = random.Random(seed)
    right = []
    with torch.no_grad():
        for _ in range(n_items):
            item = knowledge_item(rng)
            prefix = [tokenizer.bos_token_id] + tokenizer(" ".join(f"{item.prompt()} {SHORT_ANSWER_PROMPT}".split()),
                                                          add_special_tokens=False)["input_ids"]
            scores = []
            for candidate in item.pool:
                answer = tokenizer(" " + candidate, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prefix + answer])  # (1, T)
                log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # (T-1, V)
                picked = log_probs[torch.arange(ids.shape[1] - 1), ids[0, 1:]][len(prefix) - 1:]
                scores.append(float(picked.sum()))
            right.append(item.pool[max(range(len(scores)), key=scores.__getitem__)] == item.answer)
    return {"items": n_items, "accuracy": round(sum(right) / len(right), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", help="a prepared shapes world (text_corpus.txt, parts/tokenizer); default: write one")
    parser.add_argument("--out", default="runs/corpus-cleaning", help="work folder")
    parser.add_argument("--held-out", type=int, default=800, help="clean corpus lines kept out of training")
    parser.add_argument("--lm-steps", type=int, default=600, help="tiny LM steps, the same for raw and cleaned text")
    parser.add_argument("--probe-items", type=int, default=400, help="knowledge items in the text probe")
    parser.add_argument("--skip-lm", action="store_true", help="only the removal measurements")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/corpus_cleaning.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.world:
        world = Path(args.world)
    else:
        from crystalvlm.worlds.shapes.writer import write_shapes_world

        world = out / "world"
        if not (world / "text_corpus.txt").exists():
            write_shapes_world(world, n_train=2000, n_eval=50, seed=args.seed, image_size=48, progress=True)
    lines = [line for line in (world / "text_corpus.txt").read_text().splitlines() if line.strip()]
    rng = random.Random(args.seed)
    order = list(range(len(lines)))
    rng.shuffle(order)
    held_out = [lines[i] for i in order[:args.held_out]]
    train_lines = [lines[i] for i in sorted(order[args.held_out:])]
    rates = {"pii": 0.02, "exact duplicate": 0.06, "near duplicate": 0.06, "boilerplate": 0.03, "junk": 0.04}
    records, truth = build_corpus(train_lines, args.seed, rates)
    source = out / "raw.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(records)} records, {len(truth)} injected ({_count(truth.values())})")

    settings = {
        "default": [],
        "default + --languages en": ["--languages", "en"],
        "+ gopher-repetition, --languages en": ["--languages", "en", "--filters", "gopher-quality,gopher-repetition"],
        "--languages en --near-threshold 0.7": ["--languages", "en", "--near-threshold", "0.7"],
        "--languages en --near-threshold 0.7 --shingle 2": ["--languages", "en", "--near-threshold", "0.7",
                                                            "--shingle", "2"],
        "no filters, dedup only": ["--filters", ""],
        "--languages en --no-near": ["--languages", "en", "--no-near"],
    }
    removal = {}
    for name, extra in settings.items():
        target = out / f"clean-{len(removal)}.jsonl"
        summary = run_clean(source, target, extra)
        removal[name] = {"command": "crystalvlm data clean raw.jsonl --out clean.jsonl " + " ".join(extra),
                         "removed_by_reason": summary["removed_by_reason"], "seconds": summary["wall_seconds"],
                         **score_removal(target, records, truth)}
        r = removal[name]
        print(f"{name:55s} P={r['precision']:.3f} (with natural dups {r['precision_counting_natural_duplicates']:.3f}) "
              f"R={r['recall']:.3f} " + " ".join(f"{k}={v['recall']}" for k, v in r["per_kind"].items()))
    results = {
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "load_average_start": os.getloadavg(), "note": "shared 2-core machine"},
        "corpus": {"world": str(world), "world_lines": len(lines), "held_out": len(held_out),
                   "records": len(records), "injected": _count(truth.values()), "rates": rates},
        "removal": removal,
        "pii_detection": pii_detection(records, truth),
    }
    if not args.skip_lm:
        def kept_texts(name: str) -> list[str]:
            path = out / f"clean-{list(settings).index(name)}.jsonl"
            return [json.loads(line)["text"] for line in path.read_text().splitlines()]

        raw = [r["text"] for r in records]
        tokenizer_dir = world / "parts" / "tokenizer"
        if not tokenizer_dir.exists():
            from crystalvlm.worlds.parts.tiny import train_tiny_tokenizer

            tokenizer_dir = out / "tokenizer"
            train_tiny_tokenizer(train_lines, tokenizer_dir, vocab_size=1024)
        lm = {}
        variants = (("raw", raw), ("cleaned (--languages en)", kept_texts("default + --languages en")),
                    ("cleaned without near-dedup (--languages en --no-near)", kept_texts("--languages en --no-near")),
                    ("clean world lines (no dirt)", train_lines))
        for name, texts in variants:
            lm[name] = train_and_probe(texts, held_out, tokenizer_dir, out / f"lm-{len(lm)}", args.lm_steps,
                                       args.seed, args.probe_items)
            print(name, json.dumps(lm[name]))
        results["tiny_lm"] = {"tokenizer": str(tokenizer_dir), **lm}
    results["machine"]["load_average_end"] = os.getloadavg()
    Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    print(f"-> {args.results}")


if __name__ == "__main__":
    main()
