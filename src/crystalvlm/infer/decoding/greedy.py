"""Greedy decoding: each step takes the most likely next token.

Row for row what `model.generate(do_sample=False)` computes (tests/infer/test_engine.py).
"""

from __future__ import annotations

from crystalvlm.infer.decoding.greedy_sampling import PlainLogits, TokenChooser, answer_token_by_token
from crystalvlm.infer.decoding.strategy import DecodingStrategy


class GreedyDecoding(DecodingStrategy):
    name = "greedy"

    def decode(self, context, batch, controls):
        choose = TokenChooser(self.config, sample=False)
        return answer_token_by_token(PlainLogits(context.runner), batch, controls, choose, context.tokenizer,
                                     self.config.max_new_tokens)
