"""Data loading, validation and splitting."""

from .formats import FORMATS, Conversation, load_records
from .split import split_records, take

__all__ = ["FORMATS", "Conversation", "load_records", "split_records", "take"]
