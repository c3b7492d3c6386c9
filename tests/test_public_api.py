"""Every public name of API.md is exported from ecrstream, in __all__, with a docstring."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import ecrstream

API_MD = Path(__file__).resolve().parents[2] / "shared" / "design" / "API.md"

# The names API.md fixes, as of this version (kept here so the test runs without shared/).
FIXED_NAMES = """
CancellationToken CancellationTokenSource CancellationTokenRegistration OperationCanceledError
EcrClient InitiateLayerUploadRequest InitiateLayerUploadResponse UploadLayerPartRequest
UploadLayerPartResponse CompleteLayerUploadRequest CompleteLayerUploadResponse
BatchCheckLayerAvailabilityRequest BatchCheckLayerAvailabilityResponse PutImageRequest
PutImageResponse EcrStreamError EcrServiceError InvalidLayerPartError InvalidParameterError
KmsError LimitExceededError RepositoryNotFoundError ServerError UploadNotFoundError
LayerPartTooSmallError LayerAlreadyExistsError EmptyUploadError InvalidLayerError
LayersNotFoundError ImageAlreadyExistsError ThrottlingError DigestMismatchError
SourceChangedError LayerUploader LayerUploadResult UploadProgress UploadCheckpoint
push_image PushImageResult
""".split()


def _api_md_names() -> set[str]:
    if not API_MD.exists():
        return set()
    text = API_MD.read_text()
    candidates = set(re.findall(r"`([A-Z][A-Za-z]+(?:Error|Request|Response|Result)?)[(`]", text))
    return {name for name in candidates if hasattr(ecrstream, name) or name in FIXED_NAMES}


@pytest.mark.parametrize("name", sorted(set(FIXED_NAMES) | _api_md_names()))
def test_fixed_name_is_exported_and_documented(name: str) -> None:
    assert name in ecrstream.__all__, f"{name} missing from ecrstream.__all__"
    obj = getattr(ecrstream, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"


def test_all_is_complete_and_sorted() -> None:
    assert sorted(ecrstream.__all__) == ecrstream.__all__
    for name in ecrstream.__all__:
        obj = getattr(ecrstream, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_public_methods_are_documented() -> None:
    for name in ("CancellationToken", "CancellationTokenSource", "EcrClient", "LayerUploader"):
        cls = getattr(ecrstream, name)
        for attr, member in vars(cls).items():
            if attr.startswith("_"):
                continue
            target = member.__func__ if isinstance(member, classmethod | staticmethod) else member
            if callable(target) or isinstance(target, property):
                assert inspect.getdoc(target), f"{name}.{attr} has no docstring"
