"""DICOM networking: a Storage SCP that scans received images (``medforensics dicom-listen``) and judges
each received series (:mod:`.series`), and a JSON webhook for flagged results and series verdicts.
Needs the ``dicomnet`` extra (pynetdicom)."""

from __future__ import annotations

__all__ = ["DicomReceiver", "WebhookSender", "image_storage_classes"]


def __getattr__(name: str):
    if name in ("DicomReceiver", "image_storage_classes"):
        from . import scp

        return getattr(scp, name)
    if name == "WebhookSender":
        from .webhook import WebhookSender

        return WebhookSender
    raise AttributeError(name)
