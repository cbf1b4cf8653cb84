"""Detectron2 transfer: weight conversion, training and COCO evaluation."""

from transfer.detectron2_env import ensure_detectron2

DETECTRON2_C = ensure_detectron2()
