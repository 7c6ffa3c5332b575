"""The web world: generated pages, preparation, constant baselines, quickstart hooks and report."""
