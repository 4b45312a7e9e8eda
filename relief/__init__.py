"""relief: NNrelief pruning, baseline pruners, masking, compaction, models and counting for PyTorch."""

from relief import models, nnrelief
from relief.masks import apply_masks, masks_of, remove_masks

__all__ = ["apply_masks", "masks_of", "models", "nnrelief", "remove_masks"]
