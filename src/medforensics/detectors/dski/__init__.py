"""DSKI: frozen CLIP (or EfficientNet-Lite) + cross-domain fine-trace adapters + text adapter + retrieval bank."""

from .bank import FeatureBank, mfrm_logits, retrieval_logits
from .detector import DSKIDetector
from .model import CDFA, DSKIModel, TextAdapter

__all__ = ["CDFA", "DSKIDetector", "DSKIModel", "FeatureBank", "TextAdapter", "mfrm_logits", "retrieval_logits"]
