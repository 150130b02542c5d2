"""The RefCOCO-Edit dataset on disk: Hugging Face export with its card, reading exported datasets
back, and the self-supervised stage-1 data of ReferDiffusion."""
