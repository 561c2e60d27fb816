"""Model formats, tokenizer, sampler, generation engine and compute backends."""
