"""Building and loading the offline IMDB task: data, tokenizer, initial policy, gold scorer, proxy ensemble."""
