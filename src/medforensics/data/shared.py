"""The project's shared data folder (``../shared/data``) and anatomy annotations for it.

The shared data pairs reals and fakes per modality, but inside some modalities the anatomy
differs (echo fakes vs breast ultrasound reals, mammography fakes vs chest X-ray reals, breast
and cardiac MRI fakes vs brain MRI reals). A detector can separate those by anatomy alone, so
:func:`anatomy_matched` lets training drop such fakes and evaluation report them apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .manifest import Manifest, ManifestRow

ENV_VAR = "MEDFORENSICS_SHARED_DATA"
MANIFEST_NAME = "manifest.csv"


def shared_data_dir() -> Path:
    """The shared data folder: ``$MEDFORENSICS_SHARED_DATA``, else a ``shared/data`` next to an
    ancestor of this package or of the working directory (i.e. ``<repo>/../shared/data``)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
        if (path / MANIFEST_NAME).is_file():
            return path.resolve()
        raise FileNotFoundError(f"{ENV_VAR}={env!r}, but {path / MANIFEST_NAME} does not exist")
    tried = []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if (candidate / MANIFEST_NAME).is_file():
                return candidate
            tried.append(str(candidate))
    raise FileNotFoundError(
        "shared data not found: set MEDFORENSICS_SHARED_DATA to the folder holding manifest.csv "
        f"(default <repo root>/../shared/data; looked in {len(set(tried))} places, e.g. {tried[0]})"
    )


def shared_manifest() -> Manifest:
    """The shared data's ``manifest.csv``, paths resolved against the shared data folder."""
    return Manifest.read(shared_data_dir() / MANIFEST_NAME)


# --------------------------------------------------------------------- anatomy
#: Per modality, ordered ``(substring, anatomy)`` rules tried on the lower-cased
#: ``"<source> <generator>"`` of a row; the first match wins. Covers every source and generator
#: of the shared manifest (checked by the tests); e.g. MedGAN_EchoNet → cardiac, medigan …_MMG_… →
#: breast, SPADE_DukeBreastMRI → breast, LungGen-DDPM_NIH → chest.
ANATOMY_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "xray": (
        ("mmg", "breast"), ("mammo", "breast"), ("ddsm", "breast"), ("bcdr", "breast"),
        ("optimam", "breast"), ("csaw", "breast"), ("inbreast", "breast"),
        ("chest", "chest"), ("cxr", "chest"), ("lung", "chest"), ("node21", "chest"),
        ("covid", "chest"), ("nih", "chest"), ("pneumonia", "chest"),
        ("knee", "knee"), ("hand", "hand"), ("dental", "dental"),
    ),
    "mri": (
        ("breast", "breast"), ("dcemri", "breast"), ("duke", "breast"),
        ("cardiac", "cardiac"), ("heart", "cardiac"), ("acdc", "cardiac"),
        ("brain", "brain"), ("brats", "brain"), ("lgg", "brain"), ("flair", "brain"),
        ("crossmoda", "brain"), ("ixi", "brain"), ("fastmri_brain", "brain"),
        ("knee", "knee"), ("prostate", "prostate"),
    ),
    "ultrasound": (
        ("echo", "cardiac"), ("cardiac", "cardiac"), ("camus", "cardiac"),
        ("busi", "breast"), ("breast", "breast"),
        ("thyroid", "thyroid"), ("fetal", "fetal"),
    ),
    "ct": (
        ("iq_othnccd", "chest"),  # lung-cancer chest CT
        ("tcga_ct", "torso"),  # TCGA CT: chest, abdomen and pelvis slices
        ("maisi", "torso"),  # whole-body CT (chest and abdomen views)
        ("ct-org", "abdomen"),  # CT-ORG abdominal organ segmentation
        ("lung", "chest"), ("chest", "chest"), ("thora", "chest"),
        ("abdom", "abdomen"), ("liver", "abdomen"), ("pancrea", "abdomen"), ("kidney", "abdomen"),
        ("brain", "brain"), ("head", "brain"),
    ),
    "endoscopy": (
        ("polyp", "colon"), ("kvasir", "colon"), ("singan-seg", "colon"), ("cvc", "colon"), ("clinicdb", "colon"), ("colon", "colon"),
    ),
    # H&E patches of several organs (lung, colon glands, MoNuSeg's multi-organ) count as one anatomy
    "histopathology": (("lc25000", "tissue"), ("monuseg", "tissue"), ("glas", "tissue")),
}

#: Anatomy assumed when no rule matches: that of the shared real images of the modality, so a
#: new (e.g. project-generated) source is assumed to show what the reals show.
DEFAULT_ANATOMY: dict[str, str] = {
    "xray": "chest",
    "mri": "brain",
    "ultrasound": "breast",
    "ct": "chest",
    "endoscopy": "colon",
    "histopathology": "tissue",
}

#: Anatomies that contain others: a torso CT series shows chest and abdomen slices.
ANATOMY_CONTAINS: dict[str, frozenset[str]] = {"torso": frozenset({"chest", "abdomen"})}


def anatomy_of(row: ManifestRow) -> str:
    """Body region shown by a row: an explicit ``anatomy`` column wins, then
    :data:`ANATOMY_RULES`, then :data:`DEFAULT_ANATOMY` (``""`` for an unknown modality)."""
    explicit = row.extra.get("anatomy", "").strip().lower()
    if explicit:
        return explicit
    text = f"{row.source} {row.generator}".lower()
    for pattern, anatomy in ANATOMY_RULES.get(row.modality, ()):
        if pattern in text:
            return anatomy
    return DEFAULT_ANATOMY.get(row.modality, "")


def anatomies_compatible(a: str, b: str) -> bool:
    """Same anatomy, or one contains the other (see :data:`ANATOMY_CONTAINS`)."""
    if not a or not b:
        return False
    return a == b or b in ANATOMY_CONTAINS.get(a, ()) or a in ANATOMY_CONTAINS.get(b, ())


def real_anatomies(manifest: Iterable[ManifestRow]) -> dict[str, set[str]]:
    """``modality → anatomies`` of the real rows (precompute once for many :func:`anatomy_matched` calls)."""
    out: dict[str, set[str]] = {}
    for row in manifest:
        if row.label == "real":
            out.setdefault(row.modality, set()).add(anatomy_of(row))
    return out


def anatomy_matched(row: ManifestRow, manifest: Manifest | Mapping[str, set[str]]) -> bool:
    """True when some real image of the row's modality in ``manifest`` shows a compatible anatomy.

    ``manifest`` may be a :class:`Manifest` or the output of :func:`real_anatomies`.
    """
    reals = manifest if isinstance(manifest, Mapping) else real_anatomies(manifest)
    mine = anatomy_of(row)
    return any(anatomies_compatible(mine, other) for other in reals.get(row.modality, ()))


def annotate_anatomy(manifest: Manifest) -> Manifest:
    """Copy with extra columns ``anatomy`` and ``anatomy_matched`` (``"true"``/``"false"``)."""
    reals = real_anatomies(manifest)
    rows = []
    for row in manifest:
        new = row.copy()
        new.extra["anatomy"] = anatomy_of(row)
        new.extra["anatomy_matched"] = "true" if anatomy_matched(row, reals) else "false"
        rows.append(new)
    return manifest.with_rows(rows)
