"""Data: raw text -> tokenized ArrayRecord shards -> Grain mixtures of packed batches.

Modules: `records` (on-disk format), `sources` (raw JSONL/Parquet readers), `filters`
(metadata filter language), `chat` (chat templates + SFT loss mask), `pipeline`
(make_train_iterator), `mixtures` (published Swallow mixtures), `oasst` (OASST threads).
"""
