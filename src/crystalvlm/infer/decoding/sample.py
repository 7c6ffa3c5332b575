"""Sampling: each step draws the next token from the model's distribution, warped as `transformers`
warps it (temperature, then top-k, then top-p; greedy_sampling.warp_logits).

Every request draws with its own `torch.Generator`, seeded by `seed` when given, so a seeded request
gets the same answer alone or in any batch.
"""

from __future__ import annotations

from crystalvlm.infer.decoding.greedy_sampling import PlainLogits, TokenChooser, answer_token_by_token
from crystalvlm.infer.decoding.strategy import LENGTH, SAMPLING, DecodingStrategy


class SampleDecoding(DecodingStrategy):
    name = "sample"
    uses = LENGTH | SAMPLING

    @property
    def samples(self) -> bool:
        return True

    def decode(self, context, batch, controls):
        choose = TokenChooser(self.config, sample=True)
        return answer_token_by_token(PlainLogits(context.runner), batch, controls, choose, context.tokenizer,
                                     self.config.max_new_tokens)
