"""Families vitx read before issue 21: its own ViT, timm's ViT/DeiT/BEiT/NesT and Hugging Face's ViT/DeiT."""
from families import Family

FAMILIES: list[Family] = []
