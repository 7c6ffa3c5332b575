"""Tools that run or train a model to make data (captioning, VIGC, preference pairs, bad-case analysis, the adaptive loop); above infer and train."""
