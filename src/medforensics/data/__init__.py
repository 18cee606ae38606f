"""Data: manifests, patient-level splits, the training ``ImageDataset`` and the shared data."""

from .dataset import ImageDataset, collate, transform_arity
from .manifest import (
    IMAGE_EXTENSIONS,
    LABELS,
    Manifest,
    ManifestError,
    ManifestRow,
    concat,
    index_folder,
    infer_family,
    is_dicom_file,
    normalise_id,
)
from .processing import History, MatchedProcessing, RandomPostProcess, jpeg, resize_roundtrip
from .shared import (
    ANATOMY_RULES,
    DEFAULT_ANATOMY,
    anatomy_matched,
    anatomy_of,
    annotate_anatomy,
    real_anatomies,
    shared_data_dir,
    shared_manifest,
)
from .split import assert_no_leakage, default_group_key, find_leakage, patient_split, train_val_split

__all__ = [
    "ANATOMY_RULES",
    "DEFAULT_ANATOMY",
    "IMAGE_EXTENSIONS",
    "LABELS",
    "History",
    "ImageDataset",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "MatchedProcessing",
    "RandomPostProcess",
    "anatomy_matched",
    "anatomy_of",
    "annotate_anatomy",
    "assert_no_leakage",
    "collate",
    "concat",
    "default_group_key",
    "find_leakage",
    "index_folder",
    "infer_family",
    "is_dicom_file",
    "jpeg",
    "normalise_id",
    "patient_split",
    "real_anatomies",
    "resize_roundtrip",
    "shared_data_dir",
    "shared_manifest",
    "train_val_split",
    "transform_arity",
]
