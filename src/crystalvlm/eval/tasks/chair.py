"""CHAIR: object hallucination in free-form image descriptions (Rohrbach et al. 2018).

Each description is reduced to the objects it mentions (words matched through a synonyms list to
canonical object names) and compared with the objects annotated for the image:

- CHAIR_s = descriptions mentioning at least one absent object / descriptions;
- CHAIR_i = mentions of absent objects / all object mentions (repeats count, as in chair.py);
- recall  = annotated objects that are mentioned / annotated objects (OPERA's addition).

Annotations (annotations.json) are either COCO instances (`images`, `annotations` with
image_id/category_id, `categories` with id/name) or the simple form
`{"images": [{"id", "file_name", "objects": [name, ...]}]}`. Object names must appear in the
synonyms file (lines `canonical, synonym, synonym, ...`). Ground truth may be widened with the
objects mentioned in reference captions (COCO captions format), as the original metric does.

Matching follows chair.py's rules -- lower-case words, singular forms, multi-word names
("hot dog", "teddy bear"), "baby/adult <animal>" and "passenger jet/train" are the animal or
vehicle (not a person), a "seat" next to a "toilet" is not a chair -- but singular forms come
from simple suffix rules checked against the vocabulary rather than NLTK's WordNet lemmatiser,
so counts on COCO can differ slightly from OPERA's script (docs/eval-conventions.md).
"""

from __future__ import annotations

import re
from pathlib import Path

from crystalvlm.eval.tasks.base import EvalSample, Task, check_scoring, safe_ratio
from crystalvlm.eval.tasks.files import BenchmarkFormatError, image_inside, read_json, require_keys

DESCRIBE_PROMPT = "Please describe this image in detail."  # OPERA's CHAIR prompt

# chair.py's special cases: a qualifier that would otherwise be read as a person.
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
QUALIFIED_NOUNS = {**{f"{q} {animal}": animal for q in ("baby", "adult") for animal in ANIMAL_WORDS},
                   "passenger jet": "jet", "passenger train": "train", "toilet seat": "toilet"}
_IRREGULAR_SINGULARS = {"men": "man", "women": "woman", "people": "person", "children": "child", "mice": "mouse",
                        "geese": "goose", "teeth": "tooth", "feet": "foot", "knives": "knife", "oxen": "ox",
                        "sheep": "sheep"}
_WORD = re.compile(r"[a-z]+")  # "dog's" -> "dog", "s", as a word tokenizer splits it


def singular_candidates(word: str) -> list[str]:
    """The word and its possible singular forms, most specific first ("boxes" -> boxes, box, boxe)."""
    candidates = [word]
    if word in _IRREGULAR_SINGULARS:
        candidates.append(_IRREGULAR_SINGULARS[word])
    if word.endswith("ies") and len(word) > 4:
        candidates.append(word[:-3] + "y")
    if word.endswith("ves") and len(word) > 4:
        candidates += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and len(word) > 3:
        candidates.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        candidates.append(word[:-1])
    return candidates


class ObjectVocabulary:
    """Every surface form (single or multi-word) mapped to its canonical object name."""

    def __init__(self, canonical_of: dict[str, str]) -> None:
        if not canonical_of:
            raise ValueError("an object vocabulary needs at least one name")
        self.canonical_of = canonical_of
        self.longest = max(len(name.split()) for name in canonical_of)  # words in the longest name

    @classmethod
    def from_synonyms_file(cls, path: Path) -> ObjectVocabulary:
        path = Path(path)
        if not path.is_file():
            raise BenchmarkFormatError(f"{path}: CHAIR synonyms file not found")
        canonical_of: dict[str, str] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            # Entries are stripped one by one; chair.py splits on ", " only, so its
            # "scooter,  motor bike" entry (two spaces) never matches there.
            names = [name.strip().lower() for name in line.split(",") if name.strip()]
            for name in names:
                canonical_of.setdefault(name, names[0])  # a name listed twice keeps its first object
        if not canonical_of:
            raise BenchmarkFormatError(f"{path}: no synonyms (expected lines 'canonical, synonym, ...')")
        return cls(canonical_of)

    def canonical(self, name: str, where: str) -> str:
        key = name.strip().lower()
        if key not in self.canonical_of:
            raise BenchmarkFormatError(f"{where}: object {name!r} is not in the synonyms file; add a line for it")
        return self.canonical_of[key]

    def _match_at(self, words: list[str], start: int) -> tuple[str, str, int] | None:
        """(canonical object, matched singular phrase, words consumed) of the longest name at `start`."""
        for length in range(min(self.longest, len(words) - start), 0, -1):
            head = words[start:start + length - 1]
            for last in singular_candidates(words[start + length - 1]):
                phrase = " ".join(head + [last])
                if phrase in QUALIFIED_NOUNS and QUALIFIED_NOUNS[phrase] in self.canonical_of:
                    return self.canonical_of[QUALIFIED_NOUNS[phrase]], QUALIFIED_NOUNS[phrase], length
                if phrase in self.canonical_of:
                    return self.canonical_of[phrase], phrase, length
        return None

    def mentions(self, text: str) -> list[str]:
        """Canonical objects mentioned in `text`, one entry per mention, in order."""
        words = _WORD.findall(text.lower())
        found: list[tuple[str, str]] = []  # (matched singular phrase, canonical object)
        position = 0
        while position < len(words):
            match = self._match_at(words, position)
            if match is None:
                position += 1
                continue
            canonical, phrase, consumed = match
            found.append((phrase, canonical))
            position += consumed
        phrases = {phrase for phrase, _ in found}
        if "toilet" in phrases and "seat" in phrases:  # "the seat of the toilet" is not a chair
            found = [(phrase, canonical) for phrase, canonical in found if phrase != "seat"]
        return [canonical for _, canonical in found]


def chair_metrics(descriptions: list[tuple[list[str], set[str]]]) -> dict[str, float]:
    """descriptions are (mentioned canonical objects, annotated canonical objects) per image."""
    hallucinated_descriptions = mentions = hallucinated_mentions = recalled = annotated = 0
    for mentioned, truth in descriptions:
        absent = [name for name in mentioned if name not in truth]
        hallucinated_descriptions += bool(absent)
        mentions += len(mentioned)
        hallucinated_mentions += len(absent)
        recalled += len(set(mentioned) & truth)
        annotated += len(truth)
    return {
        "chair_s": safe_ratio(hallucinated_descriptions, len(descriptions)),
        "chair_i": safe_ratio(hallucinated_mentions, mentions),
        "recall": safe_ratio(recalled, annotated),
    }


class ChairTask(Task):
    name = "chair"
    max_new_tokens = 512  # OPERA's CHAIR setting; detailed descriptions run long

    def __init__(self, annotations_json: Path, synonyms_path: Path, image_folder: Path,
                 captions_json: Path | None = None, max_new_tokens: int | None = None) -> None:
        self.annotations_json = Path(annotations_json)
        self.synonyms_path = Path(synonyms_path)
        self.image_folder = Path(image_folder)
        self.captions_json = Path(captions_json) if captions_json is not None else None
        self.vocabulary = ObjectVocabulary.from_synonyms_file(self.synonyms_path)
        if max_new_tokens is not None:
            self.max_new_tokens = max_new_tokens

    def _images_and_objects(self) -> tuple[dict[str, str], dict[str, set[str]]]:
        """image id -> file name, image id -> annotated canonical objects."""
        document = read_json(self.annotations_json, "CHAIR annotations")
        if not isinstance(document, dict) or not isinstance(document.get("images"), list):
            raise BenchmarkFormatError(f"{self.annotations_json}: expected a JSON object with an 'images' list")
        files: dict[str, str] = {}
        objects: dict[str, set[str]] = {}
        for index, image in enumerate(document["images"]):
            where = f"{self.annotations_json}: images[{index}]"
            require_keys(image, ("id", "file_name"), where)
            image_id = str(image["id"])
            files[image_id] = image["file_name"]
            objects[image_id] = {self.vocabulary.canonical(name, where) for name in image.get("objects", [])}
        if "annotations" in document:  # COCO instances
            names = {str(category["id"]): category["name"] for category in document.get("categories", [])}
            for index, annotation in enumerate(document["annotations"]):
                where = f"{self.annotations_json}: annotations[{index}]"
                require_keys(annotation, ("image_id", "category_id"), where)
                image_id, category = str(annotation["image_id"]), str(annotation["category_id"])
                if category not in names:
                    raise BenchmarkFormatError(f"{where}: category_id {category} is not in 'categories'")
                if image_id not in objects:
                    continue  # COCO instance files annotate more images than a CHAIR subset uses
                objects[image_id].add(self.vocabulary.canonical(names[category], where))
        if self.captions_json is not None:
            captions = read_json(self.captions_json, "CHAIR reference captions")
            for index, caption in enumerate(captions.get("annotations", []) if isinstance(captions, dict) else []):
                require_keys(caption, ("image_id", "caption"), f"{self.captions_json}: annotations[{index}]")
                image_id = str(caption["image_id"])
                if image_id in objects:
                    objects[image_id].update(self.vocabulary.mentions(caption["caption"]))
        if not files:
            raise BenchmarkFormatError(f"{self.annotations_json}: no images")
        return files, objects

    def load_samples(self) -> list[EvalSample]:
        files, objects = self._images_and_objects()
        return [
            EvalSample(image_id, image_inside(self.image_folder, files[image_id], f"{self.annotations_json}: image {image_id}"),
                       DESCRIBE_PROMPT, sorted(objects[image_id]), {"image_id": image_id})
            for image_id in files
        ]

    def score(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        check_scoring(scoring)  # CHAIR has one definition; both conventions give the same numbers
        return chair_metrics([(self.vocabulary.mentions(text), set(sample.target))
                              for sample, text in self.paired(predictions)])
