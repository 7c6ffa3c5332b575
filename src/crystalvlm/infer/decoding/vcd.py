"""Visual Contrastive Decoding (VCD; Leng et al., 2023).

Each step runs the model twice: on the image and on the same image distorted by diffusion noise.
Tokens the model would say anyway without a clear view of the image are the ones VCD suppresses:

    contrastive = (1 + alpha) * logits_clean - alpha * logits_distorted
    keep only tokens with p_clean >= beta * max p_clean   (adaptive plausibility constraint)

and the base strategy (greedy, or sampling with its temperature / top-k / top-p applied after the
constraint, as VCD's sampler does) picks from what is left. The distortion is the forward diffusion
process q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at step t = 500 of 1000, with VCD's
schedule: beta_t = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5, applied to the normalised
pixel values.

Both passes share one batch: rows [clean_0..clean_{n-1}, distorted_0..distorted_{n-1}], one cache,
one forward per step. With alpha = 0 the contrastive logits equal the clean ones and the argmax is
always plausible, so greedy VCD is exactly greedy decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from crystalvlm.infer.decoding.greedy_sampling import PlainLogits, TokenChooser, answer_token_by_token
from crystalvlm.infer.decoding.settings import setting
from crystalvlm.infer.decoding.strategy import LENGTH, SAMPLING, DecodingStrategy
from crystalvlm.infer.runner import ModelRunner, PromptBatch

DIFFUSION_STEPS = 1000
VCD_BASES = ("greedy", "sample")


@dataclass(frozen=True)
class VcdParams:
    """VCD's own settings (`vcd:key=value`); the published ones are the defaults."""

    alpha: float = setting(1.0, low=0, server_cap=10)  # contrast strength: (1 + alpha) * clean - alpha * distorted
    beta: float = setting(0.1, low=0, high=1)  # plausibility: keep tokens with clean probability >= beta * max probability
    noise_step: int = setting(500, low=0, high=DIFFUSION_STEPS - 1)  # diffusion step of the distorted image
    base: str = setting("greedy", choices=VCD_BASES)  # how a token is chosen from the contrastive logits


class VcdDecoding(DecodingStrategy):
    name = "vcd"
    params_type = VcdParams
    uses = LENGTH | SAMPLING  # the seed also seeds the image noise
    shares_prefixes = False  # its prefill is its own paired batch of clean and distorted rows

    @property
    def samples(self) -> bool:
        return self.params.base == "sample"

    def decode(self, context, batch, controls):
        config, params = self.config, self.params
        if batch.pixel_values is None:  # nothing to contrast: the base strategy
            source = PlainLogits(context.runner)
        else:
            seed = config.seed if config.seed is not None else 0
            source = ContrastiveLogits(context.runner, params.alpha, params.beta, params.noise_step, [seed] * batch.rows)
        choose = TokenChooser(config, sample=self.samples)
        return answer_token_by_token(source, batch, controls, choose, context.tokenizer, config.max_new_tokens)


def noise_schedule_alpha_bar(steps: int = DIFFUSION_STEPS) -> torch.Tensor:
    """Cumulative product of (1 - beta_t) for VCD's sigmoid beta schedule, (steps,) float64."""
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0)


def add_diffusion_noise(pixel_values: torch.Tensor, noise_step: int, generator: torch.Generator) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for (I, 3, S, S) pixel values.

    eps is drawn on the generator's device (a CPU generator gives the same noise on every device).
    """
    alpha_bar = float(noise_schedule_alpha_bar()[noise_step])
    clean = pixel_values.float()
    noise = torch.randn(clean.shape, generator=generator, device=generator.device, dtype=torch.float32).to(clean.device)
    noisy = math.sqrt(alpha_bar) * clean + math.sqrt(1 - alpha_bar) * noise
    return noisy.to(pixel_values.dtype)


def contrastive_logits(clean: torch.Tensor, distorted: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """(R, V) contrastive logits with implausible tokens at -inf.

    The cut compares log-probabilities: log p_clean >= log(beta) + max log p_clean, i.e. p >= beta * max p
    (softmax shifts every logit of a row by the same amount, so raw logits give the same cut).
    """
    contrast = (1 + alpha) * clean - alpha * distorted
    if beta <= 0:
        return contrast
    cutoff = math.log(beta) + clean.max(dim=-1, keepdim=True).values
    return contrast.masked_fill(clean < cutoff, float("-inf"))


class ContrastiveLogits:
    """A LogitsSource (see greedy_sampling.py) running clean and distorted rows side by side."""

    def __init__(self, runner: ModelRunner, alpha: float, beta: float, noise_step: int, noise_seeds: list[int]) -> None:
        self.runner = runner
        self.alpha = alpha
        self.beta = beta
        self.noise_step = noise_step
        self.noise_seeds = noise_seeds  # one per row: a request's noise does not depend on its batch
        self.requests = 0  # live requests; the runner holds twice as many rows

    def prefill(self, batch: PromptBatch) -> torch.Tensor:
        if batch.pixel_values is None:
            raise ValueError("VCD needs images; a batch without images decodes with the base strategy")
        self.requests = batch.rows
        distorted_pixels = torch.cat([
            add_diffusion_noise(pixels, self.noise_step, torch.Generator().manual_seed(seed))
            for pixels, seed in zip(batch.pixel_values.split(batch.images_per_row), self.noise_seeds)
        ])
        paired = PromptBatch(
            input_ids=torch.cat([batch.input_ids, batch.input_ids]),
            attention_mask=torch.cat([batch.attention_mask, batch.attention_mask]),
            # Image features are matched to image tokens in row order: clean rows' images, then the same
            # images distorted for the distorted rows.
            pixel_values=torch.cat([batch.pixel_values, distorted_pixels]),
            prompt_lengths=batch.prompt_lengths * 2,
            images_per_row=batch.images_per_row * 2,
            image_sizes=None if batch.image_sizes is None else torch.cat([batch.image_sizes, batch.image_sizes]),
        )
        return self._combine(self.runner.prefill(paired))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._combine(self.runner.step(torch.cat([tokens, tokens])))

    def keep_rows(self, rows: list[int]) -> None:
        self.runner.select_rows(list(rows) + [row + self.requests for row in rows])
        self.requests = len(rows)

    def _combine(self, logits: torch.Tensor) -> torch.Tensor:
        clean, distorted = logits[: self.requests], logits[self.requests :]
        return contrastive_logits(clean, distorted, self.alpha, self.beta)
