"""Data: raw text -> tokenized ArrayRecord shards -> Grain mixtures of packed batches."""
