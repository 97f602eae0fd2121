"""The fake JOS gateway now lives in training/jos_sandbox.py (it also serves `kefu sandbox`)."""

from training.jos_sandbox import ERROR_DESCRIPTIONS, FakeJos, FakeJosError, RecordedRequest, fake_sign

__all__ = ["ERROR_DESCRIPTIONS", "FakeJos", "FakeJosError", "RecordedRequest", "fake_sign"]
