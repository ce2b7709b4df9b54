"""transformers' own common model tests (ModelTesterMixin, ConfigTester) run against every hubzoo architecture.

`upstream.py` takes them from the installed release's source distribution at test time; the three modules that
sdist lacks are ours (`generation_checks.py`, `export_checks.py`, `config_kwargs.py`).
"""
