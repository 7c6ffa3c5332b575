"""The synthetic demo worlds and the quickstarts built on them.

Everything here exists only for the worlds: their data generators and ground truth, the tiny
parts they pretrain (tokenizer, CLIP, reader, LM, through one optimisation loop), and the
quickstart pipeline that runs any world. It uses the public library like any user's script; the
library never imports it (only `crystalvlm.cli` does). See docs/architecture.md.
"""
