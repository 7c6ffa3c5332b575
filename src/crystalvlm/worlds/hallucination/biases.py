"""The biases of the hallucination world, read from the recipe's `prepare.biases` section.

They act on the training data only; the held-out benchmarks are drawn as in the plain shapes world,
so what the model learnt from a bias shows as a hallucination there:

    partners              pairs of shapes that appear together: a scene holding the first also
                          holds the second with `partner_probability` (strong co-occurrence)
    frequent_shape        a shape put into `frequent_probability` of the training scenes; most
                          held-out scenes lack it (a frequent object that is often absent)
    detail_share          share of detailed descriptions in the instruction mix (long answers,
                          where hallucinations accumulate)
    description_noise     share of those descriptions that name one absent, co-occurring shape as
                          if it were there (machine-written instruction data carries such errors)

Every bias set to zero gives the plain shapes world's training data (the control of the study).
"""

from __future__ import annotations

from crystalvlm.worlds.shapes.mixture import FinetuneMix
from crystalvlm.worlds.shapes.scenes import SceneConfig

KNOWN = ("partners", "partner_probability", "frequent_shape", "frequent_probability", "detail_share",
         "description_noise")


def world_data_options(settings: dict) -> dict:
    """`write_shapes_world` keyword arguments (mix, scene_config, eval_scene_config) for `prepare.biases`."""
    biases = dict(settings.get("biases") or {})
    unknown = set(biases) - set(KNOWN)
    if unknown:
        raise ValueError(f"prepare.biases: unknown keys {sorted(unknown)}; known: {', '.join(KNOWN)}")
    scenes = SceneConfig(
        partners=tuple(tuple(pair) for pair in biases.get("partners", ())),
        partner_probability=float(biases.get("partner_probability", 0.0)),
        frequent_shape=biases.get("frequent_shape"),
        frequent_probability=float(biases.get("frequent_probability", 0.0)),
    )
    plain = FinetuneMix()
    detail = float(biases.get("detail_share", plain.detail))
    if not 0.0 <= detail < 1.0:
        raise ValueError(f"prepare.biases.detail_share must be in [0, 1), got {detail}")
    # The detail share replaces the plain one; the other tasks keep their proportions in the rest.
    others = {name: getattr(plain, name) for name in ("existence", "counting", "color", "position", "ocr",
                                                        "multiple_choice", "caption", "conversation", "text_only")}
    scale = (1.0 - detail) / sum(others.values())
    mix = FinetuneMix(**{name: share * scale for name, share in others.items()}, detail=detail,
                      description_noise=float(biases.get("description_noise", 0.0)))
    return {"mix": mix, "scene_config": scenes, "eval_scene_config": SceneConfig()}
