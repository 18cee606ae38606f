"""Medical image I/O: DICOM, NIfTI and raster files → :class:`MedImage` (float32 in [0, 1]).

``load`` / ``load_frames`` read one file at native resolution; ``iter_files`` /
``iter_images`` walk folders; intensity handling lives in :mod:`.intensity`, the project's
resize in :mod:`.resize`, the per-decode memory budget in :mod:`.budget` (bytes, checked
from the header before decoding), and every failure is an :class:`UnreadableImageError`.
"""

from .budget import DecodeBudgetError
from .intensity import IntensityConfig, normalise_intensity
from .preprocess import LoadedFrames, Preprocessing, to_channels
from .raster import MAX_PIXELS, MAX_TOTAL_PIXELS
from .resize import resize_to, standardise
from .samples import all_sample_dicoms, sample_dicoms
from .types import ImageMeta, MedImage, UnreadableImageError
from .files import check_regular_file
from .walk import group_series, iter_entries, iter_files, iter_images, load, load_frames, sniff_format

__all__ = [
    "MAX_PIXELS",
    "MAX_TOTAL_PIXELS",
    "DecodeBudgetError",
    "ImageMeta",
    "IntensityConfig",
    "LoadedFrames",
    "MedImage",
    "Preprocessing",
    "UnreadableImageError",
    "all_sample_dicoms",
    "check_regular_file",
    "group_series",
    "iter_entries",
    "iter_files",
    "iter_images",
    "load",
    "load_frames",
    "normalise_intensity",
    "resize_to",
    "sample_dicoms",
    "sniff_format",
    "standardise",
    "to_channels",
]
