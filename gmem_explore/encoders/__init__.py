"""Snippet encoders: images -> D-dimensional feature vectors ("snippets") that fill a memory bank. Every encoder has
the same small interface: encode(uint8 images or PIL images) -> float (N, D), and .dim.

- conv.py     the small convolutional encoder of the embedded models (trained here), and encoder_from_config
- dinov2.py   DINOv2 ViT-B/14, the encoder of the released GMem banks (transformers, an optional extra)
"""
from .conv import ConvEncoder, encoder_from_config, train_conv_encoder
from .dinov2 import DINOv2Encoder

__all__ = ["ConvEncoder", "DINOv2Encoder", "encoder_from_config", "train_conv_encoder"]
