"""The co-emb text rate and the parrot verdicts (keep, remove, rewrite) on hand-made cases."""

from __future__ import annotations

import pytest

from crystalvlm.data.curation.parrot import co_emb_text_rate, judge_caption, rewrite_without, words_of


def test_words_are_case_folded_runs_of_letters_and_digits():
    assert words_of('The word "STOP!" and 3+4') == ["the", "word", "stop", "and", "3", "4"]


@pytest.mark.parametrize("caption, spotted, rate", [
    ("CAT", ["cat"], 1.0),  # the caption only spells the visible text
    ("a red circle", ["CAT"], 0.0),  # describes the image, never mentions its text
    ("a sign that says STOP", ["STOP"], 1 / 5),
    ("STOP stop STOP sign", ["stop"], 1 / 2),  # distinct words: the repeated word counts once
    ("no entry here", ["NO ENTRY"], 2 / 3),  # a spotted piece of several words
    ("anything at all", [], 0.0),  # nothing visible
])
def test_co_emb_text_rate(caption, spotted, rate):
    assert co_emb_text_rate(caption, spotted) == pytest.approx(rate)


def test_a_caption_without_words_has_no_rate():
    with pytest.raises(ValueError, match="no words"):
        co_emb_text_rate(" ... ", ["CAT"])


def test_threshold_separates_parrot_captions():
    assert judge_caption("CAT CAT", ["CAT"], threshold=0.5).keep is False
    kept = judge_caption("a red circle and the word CAT", ["CAT"], threshold=0.5)
    assert kept.keep and not kept.is_parrot and kept.parroted == ["cat"]
    # at the threshold itself the caption is a parrot caption
    assert judge_caption("text CAT", ["CAT"], threshold=0.5).is_parrot
    # threshold 0 removes only captions that parrot at least one word
    assert judge_caption("a red circle", ["CAT"], threshold=0.0).keep


def test_score_mode_keeps_parrot_captions_and_reports_them():
    verdict = judge_caption("CAT", ["CAT"], threshold=0.5, mode="score")
    assert verdict.keep and verdict.is_parrot and verdict.rate == 1.0 and verdict.caption == "CAT"


def test_rewrite_takes_the_spotted_words_out_or_drops_what_is_left_empty():
    verdict = judge_caption('a "SALE" sign, SALE today', ["SALE"], threshold=0.25, mode="rewrite")  # rate 1/4
    assert verdict.keep and verdict.caption == "a sign, today"
    emptied = judge_caption("SALE SALE", ["sale"], threshold=0.3, mode="rewrite")
    assert not emptied.keep and "nothing is left" in emptied.reason
    assert rewrite_without("the word 'CAT' on a mat", {"cat"}) == "the word on a mat"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        judge_caption("CAT", ["CAT"], threshold=1.5)
    with pytest.raises(ValueError, match="mode"):
        judge_caption("CAT", ["CAT"], threshold=0.5, mode="delete")
