"""Datasets that are not a topics tree: OpenAI-style `messages`, ShareGPT and Alpaca records in JSONL, JSON or
parquet files, read into the conversations the train stage consumes (train_data.jsonl `{"messages": [...]}`)."""
