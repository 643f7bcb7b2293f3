"""Data: readers, synthetic demo set, validation, split, augmentation."""
