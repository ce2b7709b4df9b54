"""Stand-in for transformers' `tests/exporters/test_export.py` (not in the sdist): `ExportTesterMixin`."""


class ExportTesterMixin:
    pass
