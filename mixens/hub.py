"""Members fetched from the Hugging Face hub: offline switches, bounded waits, and one clear error when the
hub does not answer (huggingface_hub alone retries every file for minutes on a stalled network)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mixens.errors import ConfigError

if TYPE_CHECKING:
    from mixens.spec import ModelSpec

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(path: str) -> bool:
    """Whether from_pretrained fetches this path from the hub: not packaged, not a folder, shaped like an id."""
    from mixens import packaged

    if packaged.is_packaged(path) or Path(os.path.expanduser(path)).is_dir():
        return False
    return not path.startswith((".", "/", "~")) and path.count("/") <= 1 and bool(HUB_ID.match(path))


_TRUE = ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """huggingface_hub's offline switch, read now (it reads the variables once, when it is imported)."""
    from huggingface_hub import constants

    env = (os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(env) or bool(constants.HF_HUB_OFFLINE)


def hub_timeout() -> float:
    """Seconds one hub request may go unanswered. huggingface_hub reads HF_HUB_ETAG_TIMEOUT and
    HF_HUB_DOWNLOAD_TIMEOUT into its constants when it is imported and its functions read the constants
    when called, so variables set later are copied there now. (Its retry after a failed metadata request
    waits up to 60 s, several times, whatever they say: check_hub_reachable spares a stalled hub that.)"""
    from huggingface_hub import constants

    for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        raw = os.environ.get(name)
        if raw and raw.strip().isdigit() and int(raw) > 0:
            setattr(constants, name, int(raw))
    return float(constants.HF_HUB_ETAG_TIMEOUT)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


# (endpoint, hub id, revision) -> True: load from the local cache only (the hub did not answer); False: online
_hub_probed: dict[tuple[str, str, str | None], bool] = {}


def check_hub_reachable(spec: ModelSpec, index: int) -> bool:
    """One bounded request for a hub member's config.json, before anything else is fetched, so that a
    stalled network fails in seconds, not after huggingface_hub's retries on every file. Returns whether
    the member must load from the local cache only (the hub did not answer, and a copy is cached); raises
    ConfigError when the hub did not answer and no copy is cached. Once per hub id and revision."""
    key = (hub_endpoint(), spec.path, spec.revision)
    if key in _hub_probed:
        return _hub_probed[key]
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    timeout = hub_timeout()
    log.info(
        "models[%d] (%s): fetching '%s' from the hub at %s (%g s per request; HF_HUB_OFFLINE=1 uses the local "
        "cache only)",
        index,
        spec.name,
        spec.path,
        key[0],
        timeout,
    )
    try:
        get_hf_file_metadata(hf_hub_url(spec.path, "config.json", revision=spec.revision), timeout=timeout)
    except Exception as err:  # a transport error of whichever HTTP client huggingface_hub uses
        if not is_network_failure(err):
            _hub_probed[key] = False  # the hub answered (an HTTP error): from_pretrained reports it
            return False
        if not in_hub_cache(spec.path, spec.revision):
            raise hub_unreachable(spec, index, err) from None
        log.warning(
            "models[%d] (%s): the hub at %s did not answer (%s); loading '%s' from the local cache only",
            index,
            spec.name,
            key[0],
            _reason(err),
            spec.path,
        )
        _hub_probed[key] = True
        return True
    _hub_probed[key] = False
    return False


def hub_unreachable(spec: ModelSpec, index: int, err: BaseException) -> ConfigError:
    return ConfigError(
        f"models[{index}] ({spec.name}): '{spec.path}' could not be fetched from the hub at {hub_endpoint()} "
        f"({_reason(err)}, {hub_timeout():g} s per request) and the local cache does not hold it; download it "
        f"where the hub is reachable (`hf download {spec.path}`) and run with HF_HUB_OFFLINE=1, or give a local "
        f"model folder as models[{index}].path."
    )


_NETWORK_ERRORS = {"TransportError", "TimeoutException", "NetworkError", "ConnectionError", "Timeout"}


def is_network_failure(err: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is a connection failure or a timeout (httpx, requests,
    sockets), or huggingface_hub's 'not cached and the hub did not answer'."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError)):
            return True
        names = {cls.__name__ for cls in type(err).__mro__}
        if names & _NETWORK_ERRORS or "LocalEntryNotFoundError" in names:
            return True
        err = err.__cause__ or err.__context__
    return False


def _reason(err: BaseException) -> str:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:  # the first transport error in the chain
        seen.add(id(err))
        names = {cls.__name__ for cls in type(err).__mro__}
        if isinstance(err, (ConnectionError, TimeoutError)) or names & _NETWORK_ERRORS:
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return f"{type(err).__name__}: {text}" if text else type(err).__name__
        err = err.__cause__ or err.__context__
    return "no answer"


def in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)
