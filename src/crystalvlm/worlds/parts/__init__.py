"""Tiny parts a world pretrains for itself: tokenizer, configs, CLIP, reader, LM, one loop."""
