"""HA-DPO pairs from a description and an annotation: hallucinated objects and attributes found,
the positive corrected, the negative kept or given a hallucination in the sample's own words."""

from __future__ import annotations

from crystalvlm.dataengine.preference_pairs import AnnotatedImage, Judge, build_pair, find_hallucinations

IMAGE = AnnotatedImage("a.png", (
    {"shape": "star", "color": "red", "size": "small", "position": "top left"},
    {"shape": "moon", "color": "blue", "size": "large", "position": "center"},
))
OTHER = AnnotatedImage("b.png", (
    {"shape": "moon", "color": "green", "size": "small", "position": "bottom"},
    {"shape": "circle", "color": "red", "size": "large", "position": "right"},
    {"shape": "star", "color": "red", "size": "small", "position": "left"},
))


def _judge(tmp_path) -> Judge:
    synonyms = tmp_path / "synonyms.txt"
    synonyms.write_text("circle\nstar\nmoon, crescent\nsquare\n")
    return Judge.from_annotations([IMAGE, OTHER], synonyms)


def test_hallucinated_objects_and_attributes_are_found_and_corrected(tmp_path):
    judge = _judge(tmp_path)
    sample = ("The image shows three shapes. A small red star is at the top left. A large red crescent is in the "
              "center. Two circles are at the bottom.")
    found = find_hallucinations(sample, IMAGE, judge)
    assert [v.hallucinated_objects for v in found] == [[], [], [], ["circle"]]
    assert found[2].wrong_values == {"color": "red"} and found[2].true_values == {"color": "blue"}
    pair = build_pair(sample, IMAGE, "Describe.", judge)
    assert pair.rejected == sample
    assert pair.chosen == ("The image shows three shapes. A small red star is at the top left. A large blue crescent "
                           "is in the center.")
    assert pair.hallucinated_objects == ["circle"] and pair.wrong_attributes == ["color red"] and pair.added is None


def test_a_faithful_sample_gets_a_cooccurring_hallucination_in_its_own_words(tmp_path):
    judge = _judge(tmp_path)
    sample = "A small red star is at the top left. A large blue moon is in the center."
    pair = build_pair(sample, IMAGE, "Describe.", judge)
    assert pair.chosen == sample
    # circle is the absent shape seen most often with stars and moons in the annotations
    assert pair.rejected == "A small red star is at the top left. A large blue circle is in the center."
    assert pair.added == "object circle"
    assert build_pair("Yes yes yes", IMAGE, "Describe.", judge) is None  # nothing to judge, no pair


def test_an_absent_object_is_replaced_by_one_the_sample_left_out(tmp_path):
    """The positive keeps the sample's length: the sentence about the absent square is rewritten about
    the moon, which the sample did not mention, with the moon's own colour and size."""
    judge = _judge(tmp_path)
    sample = "A small red star is at the top left. A small green square is in the center."
    pair = build_pair(sample, IMAGE, "Describe.", judge)
    assert pair.rejected == sample and pair.hallucinated_objects == ["square"]
    assert pair.chosen == "A small red star is at the top left. A large blue moon is in the center."
