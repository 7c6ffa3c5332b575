"""Direct preference optimisation (Rafailov et al. 2023) for a `kind: dpo` stage.

    loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

averaged over the pairs of the global batch, where log pi(y|x) is the sum of the answer tokens' log
probabilities (the template's labels pick exactly those tokens) and `ref` is the model the stage
starts from, frozen. This is TRL's DPOTrainer "sigmoid" loss; tests/core/test_dpo_stage.py checks it
against TRL's on the same batch.

With `rpo_alpha` (RPO, Pang et al. 2024) the stage adds rpo_alpha x the chosen answers' negative log
likelihood, averaged over their tokens in the batch: TRL's `rpo_alpha` (in TRL 1.16, `loss_type:
[sigmoid, sft]` with `loss_weights: [1, rpo_alpha]`). The SFT term keeps the chosen answers'
likelihood from falling while DPO widens the margin, which plain DPO lets happen.

Why our own loss inside the project's trainer rather than TRL's DPOTrainer: the stage must keep the
trainer's exact resume (batch order a pure function of seed and step, RNG and optimizer restored),
atomic checkpoints, per-part learning rates, freeze policies and provenance, and must encode pairs
with the project's templates; DPOTrainer brings HF Trainer's own loop, checkpoints and tokenisation.

The reference needs no second model in memory: its log probabilities of every pair are computed once
by the starting model before the first step (eval mode, no gradient) and kept in
`RUN/<stage>/reference_logps.json` (atomic), keyed by the pairs file and the start; a resumed stage
reads them back, so a resumed run and an uninterrupted one see the same reference.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from crystalvlm.data.collate import collate_conversations
from crystalvlm.data.dataset import DataSource
from crystalvlm.data.preference_records import PreferencePair, load_pairs
from crystalvlm.data.records import RecordProblem
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import IGNORE_INDEX


# ----------------------------------------------------------------------------- the loss
def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log probability of each row's trained tokens. logits (B, T, V), labels (B, T) -> (B,)."""
    shifted_logits = logits[:, :-1, :].float()  # (B, T-1, V): position t predicts token t+1
    shifted_labels = labels[:, 1:]  # (B, T-1)
    mask = shifted_labels != IGNORE_INDEX
    token_logps = torch.gather(shifted_logits.log_softmax(-1), 2,
                               shifted_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (token_logps * mask).sum(-1)


def chosen_token_nll(chosen_logps: torch.Tensor, chosen_labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log likelihood per trained token of the chosen answers (a scalar): their summed
    log probabilities (n,) over the count of their trained tokens in `chosen_labels` (n, T)."""
    tokens = (chosen_labels[:, 1:] != IGNORE_INDEX).sum()  # position 0 is never predicted
    return -chosen_logps.sum() / tokens.clamp(min=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and the implicit rewards beta * (log pi - log ref) of chosen and rejected; all (B,)."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


# ----------------------------------------------------------------------------- the data
@dataclass
class PreparedPairs:
    pairs: list[tuple[PreferencePair, Path | None, int]] = field(default_factory=list)  # pair, image folder, length
    problems: list[RecordProblem] = field(default_factory=list)


def prepare_pairs(sources: list[DataSource], encoder: SampleEncoder, progress: bool = False) -> PreparedPairs:
    """Every pair of every source checked as two conversations (images opened, lengths against
    max_length); a pair with a bad half is listed with its reason and left out whole."""
    from tqdm.auto import tqdm

    encoder.check_tokenizer()
    prepared = PreparedPairs()
    for source in sources:
        loaded = load_pairs(source.file)
        prepared.problems += loaded.problems
        for pair in tqdm(loaded.pairs, desc=f"checking {source.file.name}", disable=not progress, leave=False):
            lengths = []
            for record in (pair.chosen, pair.rejected):
                checked = encoder.check_record(record, source.image_folder)
                if isinstance(checked, RecordProblem):
                    prepared.problems.append(checked)
                    break
                lengths.append(checked)
            else:
                prepared.pairs.append((pair, source.image_folder, max(lengths)))
    return prepared


class PreferenceDataset(torch.utils.data.Dataset):
    """Item i: the encoded chosen and rejected conversations of pair i, and its index (for the reference)."""

    def __init__(self, prepared: PreparedPairs, encoder: SampleEncoder) -> None:
        self.items = prepared.pairs
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [length for _, _, length in self.items]

    @property
    def has_image(self) -> list[bool]:
        return [pair.has_image for pair, _, _ in self.items]

    def __getitem__(self, index: int) -> dict:
        pair, folder, _ = self.items[index]
        return {"index": index, "chosen": self.encoder.sample(pair.chosen, folder),
                "rejected": self.encoder.sample(pair.rejected, folder)}


def collate_pairs(samples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows [chosen_0 .. chosen_{n-1}, rejected_0 .. rejected_{n-1}] in one padded batch (as TRL
    concatenates them), plus `pair_index` (n,)."""
    batch = collate_conversations([s["chosen"] for s in samples] + [s["rejected"] for s in samples], pad_token_id)
    batch["pair_index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
    return batch


def pair_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed answer log probabilities, each (n,), of a `collate_pairs` batch."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "pair_index")}
    logits = model(**inputs, use_cache=False).logits  # (2n, T, V)
    logps = sequence_logps(logits, batch["labels"])
    return logps.chunk(2)


# ----------------------------------------------------------------------------- the reference
REFERENCE_FILE = "reference_logps.json"


def reference_logps(model, dataset: PreferenceDataset, folder: Path, key: dict, batch_size: int, pad_token_id: int,
                    device, progress: bool = False) -> torch.Tensor:
    """(N, 2) reference log probabilities [chosen, rejected] of every pair, computed by `model` as it
    is now (the stage's start) or read back from `folder/reference_logps.json` when `key` matches."""
    from tqdm.auto import tqdm

    path = Path(folder) / REFERENCE_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = None  # cannot happen with atomic writes; recomputed rather than trusted
        if isinstance(saved, dict) and saved.get("key") == key and len(saved.get("logps", [])) == len(dataset):
            return torch.tensor(saved["logps"], dtype=torch.float64)
    was_training = model.training
    model.eval()
    values = torch.zeros(len(dataset), 2, dtype=torch.float64)
    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), batch_size), desc="reference log-probs", disable=not progress):
            indices = list(range(start, min(start + batch_size, len(dataset))))
            batch = collate_pairs([dataset[i] for i in indices], pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            chosen, rejected = pair_logps(model, batch)
            values[indices, 0] = chosen.double().cpu()
            values[indices, 1] = rejected.double().cpu()
    model.train(was_training)
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    partial.write_text(json.dumps({"key": key, "logps": values.tolist()}))
    os.replace(partial, path)
    return values


# ----------------------------------------------------------------------------- the objective the loop runs
@dataclass
class DpoObjective:
    """What the trainer's loop asks of a dpo stage: per micro-batch, the summed loss and statistics
    over its pairs; the loop divides by the pairs of the global batch."""

    beta: float
    reference: torch.Tensor  # (N, 2) float64
    rpo_alpha: float | None = None  # weight of the chosen answers' token-mean NLL (None: plain DPO)
    unit: str = "pairs"

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["pair_index"].numel())

    def loss_sum(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected = pair_logps(model, batch)
        reference = self.reference[batch["pair_index"].cpu()].to(chosen.device, chosen.dtype)  # (n, 2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, reference[:, 0], reference[:, 1], self.beta)
        stats = {"reward_accuracy": (chosen_rewards > rejected_rewards).float().sum(),
                 "reward_margin": (chosen_rewards - rejected_rewards).sum(),
                 "chosen_logp": chosen.detach().sum(), "rejected_logp": rejected.detach().sum()}
        loss = losses.sum()
        if self.rpo_alpha is not None:
            # A batch-level token mean (as TRL's), counted once per pair so that the loop's division by
            # the global batch's pairs leaves dpo_mean + rpo_alpha * nll (one micro-batch per step).
            pairs = chosen.shape[0]
            nll = chosen_token_nll(chosen, batch["labels"][:pairs])
            loss = loss + self.rpo_alpha * nll * pairs
            stats["chosen_nll"] = nll.detach() * pairs
        return loss, stats
