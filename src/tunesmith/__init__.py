"""tunesmith: from your own instruction or role-play data to a fine-tuned LLM."""

__version__ = "0.1.0"
