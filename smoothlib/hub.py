"""Hub access errors, repo-id rules, the safetensors-only policy.

- :func:`hub_errors` turns whatever huggingface_hub raises into one :class:`HubAccessError`
  that names the repository, the reason and the ways around it;
- :func:`looks_like_repo_id` tells an ``"owner/name"`` Hub id from a local path;
- smoothlib reads weights from safetensors files only: files ending in one of
  :data:`PICKLE_SUFFIXES` are refused with the message of :func:`pickle_refusal`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""File endings of pickle weights, which can run arbitrary code when loaded: never read."""


def pickle_refusal(path, what: str, convert: str) -> str:
    """The message refusing the pickle weights at ``path``.

    ``what``: what smoothlib wanted to read (``"LoRA weights"``); ``convert``: how to turn
    the file into safetensors once, in a process that trusts it.
    """
    return (f"{path} holds pickle weights only, which can run arbitrary code when loaded; smoothlib "
            f"reads {what} from .safetensors files only. If you trust it, convert it once: {convert}")


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repository id, ``"owner/name"`` (not a relative or absolute path)."""
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "~"))
            and not os.path.isabs(name))


class HubAccessError(OSError):
    """The Hugging Face Hub could not provide a model or file; the message says what to do instead."""


@contextmanager
def hub_errors(what: str, repo_id: str, revision: str | None = None):
    """Turn huggingface_hub's errors raised inside the block into one clear :class:`HubAccessError`.

    The message names the repository, the reason, and the ways around it; the
    original exception is chained (``raise ... from``).
    """
    try:
        yield
    except _hub_errors() as err:
        at = f" at revision {revision!r}" if revision else ""
        raise HubAccessError(
            f"Could not get {what} from the Hugging Face Hub repository {repo_id!r}{at}: "
            f"{_hub_reason(err, repo_id, revision)}.\n"
            "Instead you can: pass a local folder or file (load_world('/path/to/saved_pipeline'), "
            "load_smooth_lora(unet, '/path/to/smooth_lora.safetensors')); or use the bundled CPU "
            "model, load_world('toy')."
        ) from err


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors
    names = ("HfHubHTTPError", "EntryNotFoundError", "LocalEntryNotFoundError", "OfflineModeIsEnabled")
    return tuple(getattr(errors, n) for n in names if hasattr(errors, n))


def _is_offline(err: BaseException) -> bool:
    from huggingface_hub import constants, errors
    chain, seen = err, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, errors.OfflineModeIsEnabled):
            return True
        chain = chain.__cause__ or chain.__context__
    return bool(constants.HF_HUB_OFFLINE)


def _hub_reason(err: BaseException, repo_id: str, revision: str | None) -> str:
    from huggingface_hub import errors
    if isinstance(err, errors.GatedRepoError):
        return (f"the repository is gated: accept its conditions on https://huggingface.co/{repo_id} "
                "and log in (`hf auth login`, or pass token=...)")
    if isinstance(err, errors.RepositoryNotFoundError):
        return ("the repository does not exist, was removed, or is private (log in with "
                "`hf auth login` or pass token=... if it is yours). Note: runwayml/stable-diffusion-v1-5 "
                "was removed in 2024; its mirror is stable-diffusion-v1-5/stable-diffusion-v1-5")
    if isinstance(err, errors.RevisionNotFoundError):
        return f"revision {revision!r} does not exist in the repository"
    if isinstance(err, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        if _is_offline(err):
            return ("offline mode is on (HF_HUB_OFFLINE=1) and the files are not in the local "
                    "cache; unset HF_HUB_OFFLINE on a machine with internet access")
        return ("the Hub cannot be reached (no internet access?) and the files are not in "
                "the local cache")
    if isinstance(err, errors.EntryNotFoundError):
        return "the requested file is not in the repository; check weight_name"
    return f"the Hub answered with an error ({type(err).__name__}: {err})"
