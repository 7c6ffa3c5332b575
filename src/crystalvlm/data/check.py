"""`crystalvlm data check`: every problem record and token-length statistics, before training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from crystalvlm.data.check_cache import CheckCache
from crystalvlm.data.dataset import DataSource, PreparedData, default_check_workers, prepare_dataset
from crystalvlm.data.sample_encoder import SampleEncoder


def check_data(file: Path, image_folder: Path | None, encoder: SampleEncoder,
               progress: bool = True) -> tuple[PreparedData, dict]:
    """Check a data file with a model's encoder (its tokenizer, template, image-token count, max_length).

    The encoder of a checkpoint comes from `crystalvlm.infer.prompts.checkpoint_encoder`: this module
    stays below `models` (data never imports models)."""
    prepared = prepare_dataset([DataSource(Path(file), image_folder)], encoder, progress=progress,
                               workers=default_check_workers(), cache=CheckCache())
    reasons = Counter(problem.reason.split(" (")[0] for problem in prepared.problems)
    template = encoder.template.name if encoder.template is not None else None
    summary = {"file": str(file), "template": template, "good": len(prepared.items),
               "bad": len(prepared.problems), "problems_by_reason": dict(reasons.most_common()),
               "tokens": prepared.length_stats()}
    return prepared, summary
