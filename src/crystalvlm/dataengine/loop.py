"""The closed eval-to-data loop (MLLM-DataEngine): evaluate -> weakness profile -> adaptive bad-case
sampling of a budget of new records -> generation -> finetune -> evaluate, for N rounds.

The loop knows three roles, passed in (it knows nothing of where data or scores come from):

    CapabilityEvaluator  judges a checkpoint per capability (a list of eval.analysis.Outcome)
    RecordSource         makes records of the requested capabilities (a world's generator, VIGC on
                         unlabelled images, an OpenAI-compatible endpoint)
    Finetuner            trains a checkpoint on a data file (dataengine.finetune.StageFinetuner)

Layout of `out` (every round's data, checkpoint, scores and weights kept):

    engine.json                    the run's settings; a rerun with --resume must match them
    round_0/scores.json            the starting model: {"overall", "scores", "checkpoint"}
    round_0/weakness_profile.json  and analysis.html (eval.analysis)
    round_i/weights.json           the sampling weights and record counts of round i
    round_i/data/records.json      the kept records (LLaVA format); data/dropped.jsonl: junk, with reasons
    round_i/source/                the source's own files that survive a kill (an endpoint's response cache)
    round_i/train/...              the finetune run; its final checkpoint is round i's model
    round_i/scores.json, weakness_profile.json, analysis.html
    summary.json                   {"rounds": [{"round", "overall", "scores", "weights", "records"}]}
    report.html                    scores per round

With `training="accumulate"` each round trains the starting model on the records of all rounds so
far (round_i/accumulated.json) instead of the previous model on the new ones.

Round 0 is the starting model (weights {}, records 0); round i's weights are the ones its records
were sampled with, computed from round i-1's error rates. Every step's output appears whole (written
beside its name, then renamed), and a step whose output exists is not redone, so a run killed at
any point and restarted with --resume finishes with the same files as an uninterrupted run: each
step is a deterministic function of the previous steps' files and the seed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from crystalvlm.data.dataset import DataSource
from crystalvlm.dataengine.sampling import SAMPLING_MODES, allocate, round_weights
from crystalvlm.eval.analysis import Outcome, analyse, write_analysis
from crystalvlm.eval.outputs import write_atomically

SETTINGS_FILE = "engine.json"
SUMMARY_FILE = "summary.json"
# continue: round i finetunes round i-1's model on round i's records (the paper's incremental rounds);
# accumulate: round i finetunes the starting model on the records of rounds 1..i (a growing dataset).
TRAINING_MODES = ("continue", "accumulate")


@dataclass
class GeneratedData:
    """What a source made for one round: records whose image paths are relative to the round's
    `data/images` folder, and the dropped ones (`{"capability", "reason", ...}`)."""

    records: list[dict]
    dropped: list[dict] = field(default_factory=list)


class CapabilityEvaluator(Protocol):
    capabilities: list[str]

    def evaluate(self, checkpoint: Path, folder: Path) -> list[Outcome]:
        """Every probe sample judged; `folder` is the round's scratch space."""


class RecordSource(Protocol):
    description: str  # recorded in engine.json: a rerun with another source is refused

    def generate(self, counts: dict[str, int], folder: Path, seed: int, profile: dict,
                 checkpoint: Path, workspace: Path) -> GeneratedData:
        """`counts[capability]` records, images written under `folder / "images"`. `profile` is the
        previous round's weakness profile (worst examples included) and `checkpoint` its model;
        `workspace` is the round's folder for anything that must survive a kill (a response cache)."""


class Finetuner(Protocol):
    description: str

    def finetune(self, start: Path, data: DataSource, folder: Path, seed: int) -> Path:
        """Train `start` on `data` under `folder`; return the final checkpoint (an existing one is kept)."""


@dataclass(frozen=True)
class EngineSettings:
    rounds: int
    budget: int  # new records per round
    sampling: str = "adaptive"
    floor: float = 0.05  # the smallest share of a round's budget any capability gets (ABS)
    seed: int = 0
    training: str = "continue"  # TRAINING_MODES

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if self.budget < 1:
            raise ValueError(f"--budget must be at least 1, got {self.budget}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling {self.sampling!r}; known: {', '.join(SAMPLING_MODES)}")
        if self.training not in TRAINING_MODES:
            raise ValueError(f"unknown training {self.training!r}; known: {', '.join(TRAINING_MODES)}")


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def capability_scores(outcomes: list[Outcome], capabilities: list[str]) -> tuple[float, dict[str, float]]:
    """(overall, per-capability accuracy): the overall score is the mean over capabilities, so each
    capability counts the same whatever its number of probe samples."""
    totals: dict[str, list[float]] = {name: [] for name in capabilities}
    for outcome in outcomes:
        if outcome.capability not in totals:
            raise ValueError(f"the evaluator judged capability {outcome.capability!r}, which is not one of {capabilities}")
        totals[outcome.capability].append(outcome.score)
    empty = [name for name, scores in totals.items() if not scores]
    if empty:
        raise ValueError(f"the evaluator judged no sample of capabilities {empty}")
    scores = {name: sum(values) / len(values) for name, values in totals.items()}
    return sum(scores.values()) / len(scores), scores


class DataEngine:
    """One engine run in `out` (module docstring)."""

    def __init__(self, out: Path, settings: EngineSettings, start: Path, evaluator: CapabilityEvaluator,
                 source: RecordSource, finetuner: Finetuner, progress: bool = True, reports: bool = True) -> None:
        self.out = Path(out)
        self.settings = settings
        self.start = Path(start)
        self.evaluator = evaluator
        self.source = source
        self.finetuner = finetuner
        self.progress = progress
        self.reports = reports  # the HTML pages (analysis.html, report.html); the JSON files are always written
        capabilities = list(evaluator.capabilities)
        if settings.budget < len(capabilities):
            raise ValueError(f"--budget {settings.budget} is smaller than the number of capabilities "
                             f"({len(capabilities)}: {', '.join(capabilities)}); each needs at least one record")
        self.capabilities = capabilities

    # ------------------------------------------------------------------ run state
    def identity(self) -> dict:
        """What must not change between a run and its resumption (the number of rounds may grow)."""
        chosen = {k: v for k, v in asdict(self.settings).items() if k != "rounds"}
        return {**chosen, "start": str(self.start.resolve()), "capabilities": self.capabilities,
                "source": self.source.description, "finetuner": self.finetuner.description}

    def open(self, resume: bool) -> None:
        path = self.out / SETTINGS_FILE
        if path.is_file():
            if not resume:
                raise FileExistsError(f"{self.out} holds an engine run already; pass --resume to continue it, "
                                      "or choose another --out")
            previous = _read_json(path)
            if previous != self.identity():
                changed = sorted(k for k in set(previous) | set(self.identity())
                                 if previous.get(k) != self.identity().get(k))
                raise ValueError(f"{self.out} holds an engine run with other settings ({', '.join(changed)}); "
                                 "choose another --out")
        else:
            _write_json(path, self.identity())

    def round_dir(self, index: int) -> Path:
        return self.out / f"round_{index}"

    def say(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    # ------------------------------------------------------------------ steps
    def evaluate(self, index: int, checkpoint: Path) -> dict:
        folder = self.round_dir(index)
        done = folder / "scores.json"
        if done.is_file():
            return _read_json(done)
        self.say(f"round {index}: evaluating {checkpoint}")
        outcomes = self.evaluator.evaluate(checkpoint, folder / "eval")
        profile = analyse(outcomes)
        overall, scores = capability_scores(outcomes, self.capabilities)
        if self.reports:
            write_analysis(folder, profile, title=f"Data engine round {index}: bad cases")
        else:
            _write_json(folder / "weakness_profile.json", profile)
        result = {"overall": overall, "scores": scores, "checkpoint": str(checkpoint)}
        _write_json(done, result)  # last: its presence means the round is complete
        return result

    def weights(self, index: int) -> dict:
        """Round `index`'s weights and counts from round index-1's weakness profile (recomputed: cheap, pure)."""
        profile = _read_json(self.round_dir(index - 1) / "weakness_profile.json")
        error_rates = {name: profile["capabilities"][name]["error_rate"] for name in self.capabilities}
        weights = round_weights(self.settings.sampling, error_rates, self.settings.floor)
        plan = {"sampling": self.settings.sampling, "floor": self.settings.floor, "error_rates": error_rates,
                "weights": weights, "counts": allocate(weights, self.settings.budget)}
        _write_json(self.round_dir(index) / "weights.json", plan)
        return plan

    def generate(self, index: int, plan: dict, checkpoint: Path) -> Path:
        data = self.round_dir(index) / "data"
        if (data / "records.json").is_file():
            return data
        for stale in self.round_dir(index).glob(".data.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = self.round_dir(index) / f".data.partial-{os.getpid()}"
        (staging / "images").mkdir(parents=True, exist_ok=True)
        self.say(f"round {index}: generating {sum(plan['counts'].values())} records {plan['counts']}")
        profile = _read_json(self.round_dir(index - 1) / "weakness_profile.json")
        workspace = self.round_dir(index) / "source"
        workspace.mkdir(parents=True, exist_ok=True)
        made = self.source.generate(plan["counts"], staging, self._seed(index), profile, checkpoint, workspace)
        if not made.records:
            raise RuntimeError(f"round {index}: the source kept no record ({len(made.dropped)} dropped; see "
                               f"{staging / 'dropped.jsonl'})")
        write_atomically(staging / "dropped.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in made.dropped))
        write_atomically(staging / "records.json", json.dumps(made.records, ensure_ascii=False, indent=1))
        if data.exists():  # a folder without records.json: cut before it was complete
            shutil.rmtree(data)
        os.replace(staging, data)
        if made.dropped:
            self.say(f"round {index}: {len(made.dropped)} generated record(s) dropped (reasons in {data / 'dropped.jsonl'})")
        return data

    def accumulated_records(self, index: int) -> Path:
        """round_<index>/accumulated.json: the records of rounds 1..index, image paths relative to `out`."""
        path = self.round_dir(index) / "accumulated.json"
        if not path.is_file():
            records = []
            for earlier in range(1, index + 1):
                for record in _read_json(self.round_dir(earlier) / "data" / "records.json"):
                    if record.get("image"):
                        record = {**record, "image": f"round_{earlier}/data/images/{record['image']}"}
                    records.append(record)
            write_atomically(path, json.dumps(records, ensure_ascii=False))
        return path

    def _seed(self, index: int) -> int:
        return self.settings.seed * 1000 + index

    # ------------------------------------------------------------------ the run
    def run(self, resume: bool = False) -> dict:
        self.open(resume)
        checkpoint = self.start
        self.evaluate(0, checkpoint)
        self.write_summary()
        for index in range(1, self.settings.rounds + 1):
            plan = self.weights(index)
            data = self.generate(index, plan, checkpoint)
            if self.settings.training == "accumulate":
                source, base = DataSource(self.accumulated_records(index), self.out), self.start
            else:
                source, base = DataSource(data / "records.json", data / "images"), checkpoint
            self.say(f"round {index}: finetuning {base} on {source.file}")
            checkpoint = self.finetuner.finetune(base, source, self.round_dir(index) / "train", self._seed(index))
            self.evaluate(index, checkpoint)
            self.write_summary()
        return _read_json(self.out / SUMMARY_FILE)

    def write_summary(self) -> dict:
        rounds = []
        index = 0
        while (self.round_dir(index) / "scores.json").is_file():
            scores = _read_json(self.round_dir(index) / "scores.json")
            entry = {"round": index, "overall": scores["overall"], "scores": scores["scores"], "weights": {}, "records": 0}
            if index > 0:
                entry["weights"] = _read_json(self.round_dir(index) / "weights.json")["weights"]
                entry["records"] = len(_read_json(self.round_dir(index) / "data" / "records.json"))
            rounds.append(entry)
            index += 1
        summary = {"rounds": rounds}
        _write_json(self.out / SUMMARY_FILE, summary)
        if self.reports:
            write_summary_report(self.out, summary)
        return summary


def write_summary_report(out: Path, summary: dict) -> Path:
    """out/report.html: overall and per-capability scores per round, the weights and record counts."""
    from crystalvlm.reporting import HtmlReport, close, new_figure

    page = HtmlReport("Data engine")
    rounds = summary["rounds"]
    capabilities = list(rounds[0]["scores"]) if rounds else []
    page.table(["round", "overall", *capabilities, "records"],
               [[r["round"], r["overall"], *[r["scores"][c] for c in capabilities], r["records"]] for r in rounds])
    fig, axis = new_figure(7, 3.6)
    xs = [r["round"] for r in rounds]
    for capability in capabilities:
        axis.plot(xs, [r["scores"][capability] for r in rounds], marker="o", label=capability)
    axis.plot(xs, [r["overall"] for r in rounds], marker="s", color="black", linewidth=2.5, label="overall")
    axis.set_xlabel("round")
    axis.set_ylabel("score")
    axis.set_ylim(0, 1)
    axis.set_xticks(xs)
    axis.legend(fontsize=7, ncol=2)
    page.figure(fig, "scores per round")
    close(fig)
    if len(rounds) > 1:
        page.heading("Sampling weights")
        page.table(["round", *capabilities], [[r["round"], *[r["weights"].get(c, 0.0) for c in capabilities]]
                                               for r in rounds[1:]])
    return page.write(Path(out) / "report.html")
