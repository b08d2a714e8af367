"""The models: backbone variants, the two ViT families (DINOv2/Web-DINO, DINOv3) on shared parts, decoder
heads, the segmentation model, the one builder, model checkpoints, and backbone weights (`weights/`)."""
