"""The errors we explain. Each carries the exit code that tells a person, a script and SkyPilot's
recovery what to do next; anything else that escapes is a bug and keeps its traceback.

    0   success
    1   failed: the work ran and its result says no (e.g. `ft validate` found errors)
    2   bad input: spec, bundle, data, a name or a setting; a retry will not fix it
    3   stopped on purpose: the run's budget (resources.max_cost_usd) was reached
    75  retryable: store, network, Hub or SkyPilot unreachable, or the node was preempted
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BUDGET = 3
EXIT_RETRYABLE = 75


class FtError(Exception):
    """Base of every error the product raises on purpose: `exit_code` and a one-line `label`."""

    exit_code: int = EXIT_FAILED
    label: str = "error"


class BadInput(FtError, ValueError):
    """Something the user gave us is wrong; the message names the file, line or spec field."""

    exit_code = EXIT_BAD_INPUT


class Retryable(FtError, RuntimeError):
    """Infrastructure that may come back (store, network, Hub, SkyPilot, a preempted node)."""

    exit_code = EXIT_RETRYABLE
    label = "retryable"


class Stopped(FtError):
    """Stopped on purpose with its work saved (the budget); not retried."""

    exit_code = EXIT_BUDGET
    label = "stopped"


def exit_code_of(error: BaseException) -> int | None:
    """The exit code of an error we raised on purpose, anywhere in its cause chain; None for a bug."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 10:
        if isinstance(current, FtError):
            return current.exit_code
        seen.append(current)
        current = current.__cause__ or current.__context__
    return None


# ------------------------------------------------------------------------------ describing errors
# What every entry point (the `ft` CLI, the trainer's node entry) prints for an error: one masked message
# and an exit code. Foreign errors are recognised by class name along the cause chain, so this module
# imports neither the Hub, the network libraries nor rich: it stays importable everywhere.
_HUB_BAD_INPUT = ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "EntryNotFoundError",
                  "LocalEntryNotFoundError", "RemoteEntryNotFoundError", "HFValidationError", "DisabledRepoError",
                  "LocalTokenNotFoundError")
_HUB_HTTP = ("HfHubHTTPError", "HTTPError", "BadRequestError")
_NETWORK = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "ConnectError", "TimeoutException",
            "NetworkError", "RemoteProtocolError", "ApiServerConnectionError", "ServerTemporarilyUnavailableError")
MAX_MESSAGE_LINES = 40


def mask_secrets(text: str) -> str:
    """`text` with the value of every secret variable set here, and anything shaped like a Hub token, as ***."""
    from trainer.settings import secrets_present  # settings imports this module: read it when called

    for value in secrets_present().values():
        if len(value) >= 4:
            text = text.replace(value, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def first_line(error: BaseException, limit: int = 400) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


def message_of(error: BaseException) -> str:
    """Our own error's whole message (a spec error lists every problem, one a line), bounded."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    if len(lines) > MAX_MESSAGE_LINES:
        lines = lines[:MAX_MESSAGE_LINES] + [f"… and {len(lines) - MAX_MESSAGE_LINES} more lines"]
    return "\n".join(lines)


def cause_chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in out and len(out) < 10:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _ours(chain: list[BaseException]) -> tuple[int, str] | None:
    for e in chain:
        if isinstance(e, FtError):  # a label other than "error" says what kind: "retryable: …"
            return e.exit_code, message_of(e) if e.label == "error" else f"{e.label}: {message_of(e)}"
    return None


def _hub_offline(chain: list[BaseException]) -> tuple[int, str] | None:
    names = {type(e).__name__ for e in chain}
    from trainer.settings import flag

    if "OfflineModeIsEnabled" in names or (names & set(_HUB_BAD_INPUT) and flag("HF_HUB_OFFLINE")):
        return EXIT_BAD_INPUT, (f"not in the Hugging Face cache and HF_HUB_OFFLINE is set: {first_line(chain[0])} "
                                "— run once online to cache it, or check the name")
    return None


# huggingface_hub retries a failed request on its httpx client and, once that client is closed, ends
# with this RuntimeError alone (the name-resolution or connect error is not chained): still the network.
_CLOSED_CLIENT = "Cannot send a request, as the client has been closed"


def _network(chain: list[BaseException]) -> tuple[int, str] | None:
    for e in chain:
        name = type(e).__name__
        if name in _NETWORK or isinstance(e, TimeoutError | ConnectionError):
            return EXIT_RETRYABLE, f"network unavailable (retryable, {name}): {first_line(chain[0])}"
        if isinstance(e, RuntimeError) and _CLOSED_CLIENT in str(e):
            return EXIT_RETRYABLE, ("network unavailable (retryable): the Hugging Face Hub could not be reached "
                                    "(a model name that is not a run, a local folder or in the HF cache is "
                                    "looked up on the Hub)")
    return None


def _hub(chain: list[BaseException]) -> tuple[int, str] | None:
    for e in chain:
        name = type(e).__name__
        status = getattr(getattr(e, "response", None), "status_code", None)
        if name in _HUB_HTTP and isinstance(status, int) and (status >= 500 or status == 429):
            return EXIT_RETRYABLE, f"Hugging Face Hub unavailable (retryable, HTTP {status}): {first_line(e)}"
        if name in _HUB_BAD_INPUT:
            return EXIT_BAD_INPUT, (f"model or file not available ({name}): {first_line(e)} — check the name, "
                                    "or run once online to cache it")
        if name in _HUB_HTTP and isinstance(status, int):
            return EXIT_BAD_INPUT, f"Hugging Face Hub refused (HTTP {status}): {first_line(e)}"
    error = chain[0]
    if isinstance(error, OSError) and ("huggingface" in str(error).lower() or "hub" in str(error).lower()):
        return EXIT_BAD_INPUT, f"model not available: {first_line(error)}"
    return None


def describe(error: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for an error a person can act on: ours (every FtError), the Hub's, the
    network's; None for anything else, i.e. a bug, which keeps its traceback. The message is not masked
    yet: `mask_secrets` it where it is printed."""
    chain = cause_chain(error)
    for rule in (_ours, _hub_offline, _network, _hub):
        found = rule(chain)
        if found is not None:
            return found
    return None
