"""Analysis of finished samples and runs: best-of-n estimators, scaling-law fits."""
