"""The user's own task (task.name: dataset): prompts from a file or a Hugging Face dataset, rendered with the policy's chat
template, encoded once by `tether prepare`; a Hugging Face causal LM as the policy; any scorers as gold and proxies."""
