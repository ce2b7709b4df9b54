"""Repository tools (not part of the installed packages): `python -m utils.check_copies`."""
