"""The names of the data choices, importable without torch or image libraries (the CLI's choices read them)."""

MASK_MODES = ("auto", "ids", "binary", "instances")  # data/images.py reads masks in each mode
FORMATS = ("pennfudan", "folders", "voc", "coco", "yolo", "labelme")  # prepare-data's readers (data/formats/)
