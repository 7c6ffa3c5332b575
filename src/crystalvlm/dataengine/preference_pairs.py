"""HA-DPO preference pairs (Zhao et al. 2023) from a model's own descriptions and ground truth.

The paper asks GPT-4 to find the hallucinations in a model's detailed description, to correct them
(the positive), to keep or add hallucinations (the negative), and to rewrite both so that they share
the model's style, because a pair that differs in style teaches style rather than faithfulness. With
annotated images the judge can be exact instead:

1. `find_hallucinations`: split the description into sentences; in each, find the object names
   (through a CHAIR synonyms vocabulary) and the attribute words (every value an attribute takes in
   the annotations: colours, sizes, positions, ...). A named object the image lacks is a hallucinated
   object; an object that is there but whose stated attributes match none of the image's objects of
   that name is an attribute hallucination (the wrong values are named).
2. `correct`: the positive rewrites every sentence naming a hallucinated object about an object of
   the image the description left out (dropping it only when none is left), and replaces each wrong
   attribute value by the value of the best-matching annotated object.
3. `hallucinate`: the negative is the sample as the model wrote it when it held hallucinations; when
   it held none, one is made in the sample's own words: a sentence of the sample is rewritten about
   an absent object (the one that co-occurs most with the image's objects in the annotations, the
   kind a biased model invents), or, with no object sentence, an attribute value is changed.

Edits replace words rather than add or drop sentences wherever they can: a pair whose positive is
shorter than its negative teaches a model to say less (measured: docs/hallucination.md).

Both sides are the sample edited sentence by sentence, so they share its wording and differ only
where the hallucination is: the paper's style-consistency step, made exact. What the vocabulary
cannot see (counts such as "three shapes", relations) is left as the model wrote it, on both sides.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from crystalvlm.eval.tasks.chair import ObjectVocabulary

NAME_KEYS = ("name", "category", "shape", "label")  # the key that names an annotated object
_SENTENCE = re.compile(r"[^.!?]*(?:[.!?]+|$)")  # every character lands in one sentence


def object_name(obj: dict) -> str:
    for key in NAME_KEYS:
        if isinstance(obj.get(key), str):
            return obj[key]
    raise ValueError(f"annotated object {obj!r} has no name (one of {', '.join(NAME_KEYS)})")


def object_attributes(obj: dict) -> dict[str, str]:
    """The object's string attributes other than its name (colour, size, position, ...)."""
    name_key = next(key for key in NAME_KEYS if isinstance(obj.get(key), str))
    return {key: value for key, value in obj.items() if key != name_key and isinstance(value, str)}


@dataclass(frozen=True)
class AnnotatedImage:
    file: str  # relative to the image folder
    objects: tuple[dict, ...]  # each with a name key and string attributes


@dataclass
class Judge:
    """Finds hallucinated objects and attributes in text against one image's annotation."""

    vocabulary: ObjectVocabulary
    attribute_values: dict[str, set[str]]  # attribute -> every value it takes in the annotations
    cooccurrence: dict[str, Counter] = field(default_factory=dict)  # object -> objects seen with it

    @classmethod
    def from_annotations(cls, images: list[AnnotatedImage], synonyms: Path | None = None,
                         attributes: bool = True) -> "Judge":
        """The vocabulary and co-occurrence of the annotations; `attributes` False judges objects only
        (attribute words are then never marked wrong nor corrected)."""
        names = sorted({object_name(o) for image in images for o in image.objects})
        if synonyms is not None:
            vocabulary = ObjectVocabulary.from_synonyms_file(synonyms)
        else:
            vocabulary = ObjectVocabulary({name.lower(): name.lower() for name in names})
        values: dict[str, set[str]] = {}
        cooccurrence: dict[str, Counter] = {}
        for image in images:
            present = {vocabulary.canonical_of.get(object_name(o).lower(), object_name(o).lower()) for o in image.objects}
            for obj in image.objects:
                for key, value in object_attributes(obj).items():
                    values.setdefault(key, set()).add(value.lower())
            for name in present:
                cooccurrence.setdefault(name, Counter()).update(present - {name})
        # An attribute whose values are object names (or that no sentence could state) is not judged.
        values = {k: v for k, v in values.items() if v and not v & set(vocabulary.canonical_of)} if attributes else {}
        return cls(vocabulary, values, cooccurrence)

    def canonical(self, obj: dict) -> str:
        name = object_name(obj).lower()
        return self.vocabulary.canonical_of.get(name, name)

    def attribute_mentions(self, sentence: str) -> dict[str, str]:
        """attribute -> the value the sentence states (the longest matching value phrase per attribute)."""
        text = " " + " ".join(re.findall(r"[a-z0-9]+", sentence.lower())) + " "
        found = {}
        for key, values in self.attribute_values.items():
            matches = [value for value in values if f" {value} " in text]
            if matches:
                found[key] = max(matches, key=len)
        return found

    def judge_sentence(self, sentence: str, image: AnnotatedImage) -> "SentenceVerdict":
        mentioned = self.vocabulary.mentions(sentence)
        stated = self.attribute_mentions(sentence)
        present = {}
        for obj in image.objects:
            present.setdefault(self.canonical(obj), []).append(object_attributes(obj))
        absent = [name for name in mentioned if name not in present]
        wrong: dict[str, str] = {}
        if not absent and len(set(mentioned)) == 1 and stated:
            # One object named: its stated attributes must all belong to one annotated object of that name.
            candidates = present[mentioned[0]]
            best = max(candidates, key=lambda attrs: sum(attrs.get(k, "").lower() == v for k, v in stated.items()))
            wrong = {key: best[key] for key, value in stated.items() if key in best and best[key].lower() != value}
        return SentenceVerdict(sentence, mentioned, absent, {k: stated[k] for k in wrong}, wrong)

    def absent_candidates(self, image: AnnotatedImage) -> list[str]:
        """Objects the image lacks, most co-occurring with its objects first (ties by name)."""
        present = {self.canonical(o) for o in image.objects}
        score = Counter()
        for name in present:
            score.update(self.cooccurrence.get(name, Counter()))
        absent = sorted({name for name in self.vocabulary.canonical_of.values()} - present)
        return sorted(absent, key=lambda name: (-score[name], name))


@dataclass(frozen=True)
class SentenceVerdict:
    text: str
    objects: list[str]  # canonical objects named, in order
    hallucinated_objects: list[str]  # named but absent
    wrong_values: dict[str, str]  # attribute -> the value the sentence states (wrongly)
    true_values: dict[str, str]  # attribute -> the annotated value that replaces it

    @property
    def hallucinated(self) -> bool:
        return bool(self.hallucinated_objects or self.wrong_values)


def sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE.findall(text) if part.strip()]


def find_hallucinations(text: str, image: AnnotatedImage, judge: Judge) -> list[SentenceVerdict]:
    return [judge.judge_sentence(sentence, image) for sentence in sentences(text)]


def _replace_value(sentence: str, old: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(old)}\b", new, sentence, count=1, flags=re.IGNORECASE)


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _replace_object(sentence: str, judge: Judge, old: str, new: str) -> str | None:
    """`sentence` with its words for object `old` (any synonym, singular or plural) replaced by `new`
    (in the same number); None when no word for `old` is found."""
    surfaces = sorted((w for w, c in judge.vocabulary.canonical_of.items() if c == old), key=len, reverse=True)
    for word in surfaces:
        for form, replacement in ((_plural(word), _plural(new)), (word, new)):
            changed, count = re.subn(rf"\b{re.escape(form)}\b", replacement, sentence, count=1, flags=re.IGNORECASE)
            if count:
                return changed
    return None


def _swap_in(verdict: SentenceVerdict, old: str, new_object: dict, judge: Judge) -> str | None:
    """The sentence about `old` rewritten about `new_object`: its name, and the attribute values the
    sentence states set to the object's own."""
    text = _replace_object(verdict.text, judge, old, judge.canonical(new_object))
    if text is None:
        return None
    attributes = object_attributes(new_object)
    for key, value in judge.attribute_mentions(verdict.text).items():
        if key in attributes and attributes[key].lower() != value:
            text = _replace_value(text, value, attributes[key])
    return text


def correct(verdicts: list[SentenceVerdict], image: AnnotatedImage, judge: Judge) -> str:
    """The positive. A sentence naming an absent object is rewritten about an object of the image the
    description does not mention yet (its name and stated attributes), so the positive keeps the
    sample's length and wording (a positive made by deleting sentences teaches a model to say less);
    with no such object left, the sentence is dropped. Wrong attribute values are replaced by the
    best-matching annotated object's."""
    mentioned = {name for v in verdicts for name in v.objects}
    unmentioned = [o for o in image.objects if judge.canonical(o) not in mentioned]
    kept = []
    for verdict in verdicts:
        text = verdict.text
        if verdict.hallucinated_objects:
            rewritten = None
            if len(set(verdict.objects)) == 1 and unmentioned:
                stated = judge.attribute_mentions(text)
                # the unmentioned object agreeing with most of what the sentence states (its position, say)
                best = max(unmentioned, key=lambda o: sum(object_attributes(o).get(k, "").lower() == v
                                                          for k, v in stated.items()))
                rewritten = _swap_in(verdict, verdict.objects[0], best, judge)
                if rewritten is not None:
                    unmentioned.remove(best)
            if rewritten is not None:
                kept.append(rewritten)
            continue
        for key, wrong in verdict.wrong_values.items():
            text = _replace_value(text, wrong, verdict.true_values[key])
        kept.append(text)
    return " ".join(kept)


def hallucinate(verdicts: list[SentenceVerdict], image: AnnotatedImage, judge: Judge) -> tuple[str, str] | None:
    """The negative when the sample held no hallucination: (text, what was changed), or None when
    the sample gives nothing to edit. The last sentence naming one object is rewritten about the
    absent object that co-occurs most with the image's objects (the kind a biased model invents),
    same length, same words otherwise; with no such sentence, an attribute value is changed."""
    texts = [v.text for v in verdicts]
    absent = judge.absent_candidates(image)
    single = [i for i, v in enumerate(verdicts) if len(set(v.objects)) == 1]
    if single and absent:
        index = single[-1]
        swapped = _replace_object(texts[index], judge, verdicts[index].objects[0], absent[0])
        if swapped is not None:
            texts[index] = swapped
            return " ".join(texts), f"object {absent[0]}"
    for index, verdict in enumerate(verdicts):
        stated = judge.attribute_mentions(verdict.text)
        for key, value in sorted(stated.items()):
            others = sorted(judge.attribute_values[key] - {value})
            if others and verdict.objects:
                texts[index] = _replace_value(verdict.text, value, others[0])
                return " ".join(texts), f"attribute {key} {others[0]}"
    return None


@dataclass(frozen=True)
class Pair:
    image: str
    prompt: str
    sample: str
    chosen: str
    rejected: str
    hallucinated_objects: list[str]
    wrong_attributes: list[str]
    added: str | None  # what the negative added when the sample held no hallucination


def build_pair(sample: str, image: AnnotatedImage, prompt: str, judge: Judge) -> Pair | None:
    """The HA-DPO pair of one sampled description, or None when no pair can be made (nothing to
    correct and nothing to edit into a hallucination, or the correction leaves nothing)."""
    verdicts = find_hallucinations(sample, image, judge)
    positive = correct(verdicts, image, judge)
    objects = [name for v in verdicts for name in v.hallucinated_objects]
    attributes = [f"{key} {value}" for v in verdicts for key, value in v.wrong_values.items()]
    if objects or attributes:
        negative, added = " ".join(v.text for v in verdicts), None
    else:
        made = hallucinate(verdicts, image, judge)
        if made is None:
            return None
        negative, added = made
    if not positive.strip() or positive == negative:
        return None
    return Pair(image.file, prompt, sample, positive, negative, objects, attributes, added)


def read_annotations(path: Path) -> tuple[Path | None, list[AnnotatedImage]]:
    """(image root relative to the file's folder or None, images) of an annotations file
    `{"image_root"?, "images": [{"file", "objects": [{name, attributes...}]}]}`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise ValueError(f"{path}: expected an object with an 'images' list")
    images = []
    for index, entry in enumerate(document["images"]):
        where = f"{path}: images[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("objects"), list):
            raise ValueError(f"{where}: each image needs 'file' and an 'objects' list")
        for obj in entry["objects"]:
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: each object must be an object with a name and attributes")
            object_name(obj)
        images.append(AnnotatedImage(entry["file"], tuple(entry["objects"])))
    root = document.get("image_root")
    return (Path(root) if isinstance(root, str) else None), images
