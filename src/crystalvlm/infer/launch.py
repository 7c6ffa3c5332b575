"""What a model-loading command settles before it loads: the device, the dtype, and the name its outputs carry.

`generate`, `chat`, `eval` and `serve` share these, so `--device auto --dtype auto` (the defaults)
mean the same thing in every command:

- device: `cuda` when a CUDA (or ROCm) GPU is visible — under torchrun `cuda:$LOCAL_RANK`, so that
  each rank loads its own copy on its own GPU instead of all of them on GPU 0 — else `mps`, else `cpu`;
- dtype: bfloat16 on a GPU that computes in it natively (compute capability 8.0 and later: A100,
  H100, RTX 30xx+), float16 on other GPUs and on Apple's mps, float32 on the CPU (half precision on
  a CPU is slow and, for some operations, missing).

`checkpoint_name` gives the name under which a checkpoint's outputs (the eval folder, the model id a
server reports) are filed: `<run>-<stage>` for a checkpoint written by `crystalvlm train` into
`RUN/<stage>/final`, so that the final checkpoints of two runs or two stages no longer all come out
as `final`; the folder's own name for any other checkpoint.

Torch is imported inside the functions: command-line parsers import this module and `--help`
must stay fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

AUTO = "auto"
DTYPE_NAMES = ("float32", "float16", "bfloat16")
# Training writes a stage's checkpoint to RUN/<stage>/<FINAL_FOLDER> (train/trainer.py: final_checkpoint).
FINAL_FOLDER = "final"


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype, defaulting to auto (the rules in this module's docstring)."""
    parser.add_argument("--device", default=AUTO,
                        help="auto (cuda, under torchrun cuda:$LOCAL_RANK; else mps; else cpu), cpu, cuda, cuda:1, "
                             "mps ... (default: %(default)s)")
    parser.add_argument("--dtype", choices=(AUTO, *DTYPE_NAMES), default=AUTO,
                        help="auto: bfloat16 on GPUs that support it, float16 on other GPUs, float32 on the CPU "
                             "(default: %(default)s)")


def local_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's GPU index on its machine under torchrun (LOCAL_RANK), None when not launched so."""
    value = (os.environ if environ is None else environ).get("LOCAL_RANK")
    return int(value) if value not in (None, "") else None


def resolve_device(requested: str = AUTO, environ: Mapping[str, str] | None = None) -> str:
    """The device to load the model on. An explicit device is kept, except that a bare `cuda` under
    torchrun becomes this rank's GPU (every rank on cuda:0 would not fit, or would crawl)."""
    rank = local_rank(environ)
    if requested != AUTO:
        return f"cuda:{rank}" if requested == "cuda" and rank is not None else requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{rank}" if rank is not None else "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(requested: str, device: str) -> str:
    """The dtype name (float32, float16, bfloat16) to load the model in on `device`."""
    if requested != AUTO:
        if requested not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {requested!r}; choose auto or one of {', '.join(DTYPE_NAMES)}")
        return requested
    import torch

    kind = torch.device(device).type
    if kind == "cpu":
        return "float32"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is available here (--device auto picks what is)")
        # Capability 8.0 (Ampere) is where bfloat16 runs natively; earlier GPUs emulate it slowly, so
        # torch.cuda.is_bf16_supported() (which counts emulation) is not the test. ROCm's MI200/MI300
        # report 9.x and compute in bfloat16 too.
        return "bfloat16" if torch.cuda.get_device_capability(torch.device(device)) >= (8, 0) else "float16"
    return "float16"  # mps and other accelerators


def resolve_device_and_dtype(device: str = AUTO, dtype: str = AUTO,
                             environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(device, dtype name) for the --device/--dtype a command was given."""
    chosen = resolve_device(device, environ)
    return chosen, resolve_dtype(dtype, chosen)


def checkpoint_name(model: str | Path) -> str:
    """The name a checkpoint's outputs are filed under (eval folder, served model id).

    Read from the checkpoint's sidecar (crystalvlm.json: the stage that wrote it) and its place in a
    run folder: RUN/<stage>/final -> `<run>-<stage>`; a checkpoint named after its stage (RUN/<stage>)
    -> `<run>-<stage>` as well; a checkpoint in a folder called `final` outside that layout ->
    `<parent>-<stage>`. Anything else, including checkpoints without a sidecar (any HF Llava
    checkpoint), is called by its folder name. The recipe name stands in for the run when the run
    folder has no name (a checkpoint at the file-system root).
    """
    from crystalvlm.models.checkpoint import read_sidecar

    path = Path(model)
    folder = path.resolve() if path.exists() else path
    try:
        info = read_sidecar(folder) if folder.is_dir() else None
    except (OSError, ValueError, TypeError, AttributeError):
        info = None  # an unreadable sidecar: loading the checkpoint reports it; the name falls back to the folder's
    stage, recipe = (info.stage, info.recipe) if info else (None, None)
    if not stage:
        return folder.name or str(model)
    above = folder.parent if folder.name == FINAL_FOLDER else folder
    if above.name == stage:
        run = above.parent.name or recipe
        return f"{run}-{stage}" if run else stage
    if folder.name == FINAL_FOLDER:
        return f"{above.name or recipe or 'checkpoint'}-{stage}"
    return folder.name
