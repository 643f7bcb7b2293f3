"""Names shared by every stage: the FER2013 classes and image size."""

EMOTIONS: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
NUM_CLASSES: int = len(EMOTIONS)
IMG_SIZE: int = 48
N_PIXELS: int = IMG_SIZE * IMG_SIZE
UNLABELED: int = -1
SPLITS: tuple[str, ...] = ("train", "val", "test", "predict")
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
# Test-time augmentation view modes (ferops.tta.tta_views), cheapest first, and `ferops predict --faces`
# modes (ferops.inference.face_regions): here so the CLI can offer them without importing numpy or Keras.
TTA_VIEW_MODES: tuple[str, ...] = ("none", "flip", "tencrop", "shift")
TTA_SETTINGS: tuple[str, ...] = (*TTA_VIEW_MODES, "auto")  # auto: the mode evaluate chose on val
FACE_MODES: tuple[str, ...] = ("auto", "detect", "whole")
# The registry's names when params.yaml `register:` does not set them (config.registry_names reads the params).
DEFAULT_MODEL_NAME: str = "fer2013-resnet"
DEFAULT_CHAMPION_ALIAS: str = "champion"
DEFAULT_CHALLENGER_ALIAS: str = "challenger"
