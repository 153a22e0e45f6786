"""Looking at a dataset through the embeddings: the audit (duplicates, suspect labels), the copy
rule, thumbnails, and the leakage check of a run's report."""
