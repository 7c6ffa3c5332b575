"""The shapes world: scenes, captions, instructions, benchmarks, preparation, quickstart hooks."""
