"""Publish a verified export to the Hugging Face Hub (or any endpoint that speaks its API)."""

from pathlib import Path
from typing import Optional

from huggingface_hub import HfApi

from hub_exports.verification import verify


def push(folder, repo_id: str, token: Optional[str] = None, private: bool = False,
         endpoint: Optional[str] = None, commit_message: Optional[str] = None, run_verify: bool = True,
         base=None) -> str:
    """Create `repo_id` if needed and upload `folder` as one commit. Returns the commit URL.

    The folder is verified first, so a broken export never reaches the Hub (an adapter repo on its base: `base`, a
    local copy of a base it names by Hub id). `endpoint` defaults to `HF_ENDPOINT`.
    """
    folder = Path(folder).resolve()
    if run_verify:
        verify(folder, base=base)
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=folder, repo_id=repo_id, repo_type="model",
        commit_message=commit_message or f"Upload {folder.name} (exported and verified by hubzoo)",
    )
    return commit.commit_url
