"""``fusion``: member detectors combined through p-values calibrated on real validation images."""

from .detector import FusionDetector, TailPValue, combine_p, shared_preprocessing

__all__ = ["FusionDetector", "TailPValue", "combine_p", "shared_preprocessing"]
