"""Tasks: everything built offline for one training task (data, tokenizer, initial policy, gold, proxies, SFT models)."""
