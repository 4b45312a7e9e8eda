"""Datasets as uint8 tensors in memory: `load(name, root, mirrors=...)` fetches, verifies, splits and batches them."""

from relief.data.memory import Dataset, Split, load
from relief.data.sources import DATASETS, DatasetError, DatasetSpec, FileSpec, read_checksums

__all__ = ["DATASETS", "Dataset", "DatasetError", "DatasetSpec", "FileSpec", "Split", "load", "read_checksums"]
