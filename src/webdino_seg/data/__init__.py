"""Data: reading images and masks, image/mask datasets and their augmentation, preparing Penn-Fudan, and a
preview grid of samples."""
