"""Synthetic tampering: classical lesion injection / removal for training and evaluation.

Note: ``medforensics.synth.tamper`` is the *module*; its MedImage convenience function
``tamper.tamper`` is re-exported here as ``tamper_image`` so the name does not shadow the module.
"""

from . import tamper
from .tamper import TamperResult, foreground_mask, inject_lesion, remove_region
from .tamper import tamper as tamper_image
from .generators import (
    create_generator,
    import_fakes,
    list_generator_families,
    load_generator,
    load_training_images,
    sample_to_folder,
)

__all__ = ["TamperResult", "foreground_mask", "inject_lesion", "remove_region", "tamper", "tamper_image",
           "create_generator", "import_fakes", "list_generator_families", "load_generator", "load_training_images",
           "sample_to_folder"]

from .attacks import RepaintModel, btd_real_split, build_attack_sets, repaint_inpaint, repaint_region  # noqa: E402

__all__ += ["RepaintModel", "btd_real_split", "build_attack_sets", "repaint_inpaint", "repaint_region"]
