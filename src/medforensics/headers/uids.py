"""UID roots and implementation names of common DICOM toolkits.

A toolkit writes its own root into UIDs it generates (``generate_uid()`` and friends) and its
implementation class UID / version name into the file meta of every file it saves. Sources:
pydicom ``pydicom.uid.PYDICOM_ROOT_UID`` / ``PYDICOM_IMPLEMENTATION_UID``; DCMTK
``dcuid.h`` (``SITE_UID_ROOT``, ``OFFIS_IMPLEMENTATION_CLASS_UID``); GDCM ``gdcmUIDGenerator``
(also used by ITK / SimpleITK); dcm4che ``Implementation`` / ``UIDUtils``; fo-dicom
``DicomImplementation``; pynetdicom ``PYNETDICOM_IMPLEMENTATION_UID``.

Re-saving by a PACS or an anonymiser (DCMTK, dcm4che, fo-dicom) is routine for genuine data, so
the implementation class alone is weak evidence; scripting toolkits (pydicom, GDCM/ITK) are
what a pixel-editing attack typically re-saves with.
"""

from __future__ import annotations

import re

#: UID root (with trailing dot) → toolkit name.
TOOLKIT_UID_ROOTS: dict[str, str] = {
    "1.2.826.0.1.3680043.8.498.": "pydicom",
    "1.2.276.0.7230010.3.": "DCMTK",
    "1.2.826.0.1.3680043.2.1143.": "GDCM (ITK/SimpleITK)",
    "1.2.40.0.13.1.": "dcm4che",
    "1.3.6.1.4.1.30071.8.": "fo-dicom",
    "1.2.826.0.1.3680043.9.3811.": "pynetdicom",
}
#: Toolkits typically used by scripts that edit pixels (scored higher than PACS toolkits).
SCRIPTING_TOOLKITS = frozenset({"pydicom", "GDCM (ITK/SimpleITK)"})
#: Implementation version name prefixes (upper case) → toolkit.
TOOLKIT_VERSION_NAMES: dict[str, str] = {
    "PYDICOM": "pydicom",
    "OFFIS_DCMTK": "DCMTK",
    "GDCM": "GDCM (ITK/SimpleITK)",
    "DCM4CHE": "dcm4che",
    "FO-DICOM": "fo-dicom",
    "PYNETDICOM": "pynetdicom",
}
#: Words of a Manufacturer value that name a scanner vendor: a UID made by a toolkit in a file
#: that claims one of these as its manufacturer was not made by the scanner.
SCANNER_VENDOR_WORDS = frozenset({
    "SIEMENS", "GE", "GEMS", "PHILIPS", "TOSHIBA", "CANON", "HITACHI", "FUJI", "FUJIFILM",
    "AGFA", "CARESTREAM", "KODAK", "HOLOGIC", "SAMSUNG", "UIH", "NEUSOFT", "ESAOTE", "KONICA",
    "SHIMADZU", "MINDRAY", "ELSCINT", "PICKER", "MARCONI", "IMATRON", "ALOKA", "ACUSON",
})


def toolkit_of_uid(uid: str | None) -> str | None:
    """The toolkit whose root ``uid`` starts with, else ``None``."""
    if not uid:
        return None
    text = str(uid).strip()
    for root, name in TOOLKIT_UID_ROOTS.items():
        if text.startswith(root) or text == root.rstrip("."):
            return name
    return None


def toolkit_of_version_name(name: str | None) -> str | None:
    """The toolkit an ImplementationVersionName belongs to, else ``None``."""
    text = (name or "").strip().upper()
    for prefix, toolkit in TOOLKIT_VERSION_NAMES.items():
        if text.startswith(prefix):
            return toolkit
    return None


def is_scanner_vendor(manufacturer: str | None) -> bool:
    """Whether a Manufacturer value names a scanner vendor (word match, case-insensitive)."""
    text = (manufacturer or "").upper()
    words = set(re.split(r"[^A-Z0-9]+", text))
    return bool(words & SCANNER_VENDOR_WORDS) or "UNITED IMAGING" in text
