"""The modded-nanogpt golden fixtures (`../shared/fixtures/modded_gpt`), shared by the parity and converter tests."""

import pytest


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "modded_gpt"
