"""Stand-in for transformers' `tests/generation/test_utils.py` (not in the sdist): `GenerationTesterMixin`."""


class GenerationTesterMixin:
    pass
