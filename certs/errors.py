"""Errors of the local certificate authority."""

from __future__ import annotations


class CertificateError(Exception):
    """The local CA or server certificate cannot be made or read."""

    code = "certificate"
