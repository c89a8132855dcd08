"""The line of a log event other than ``request``: config reloads, start, stop, errors.

Known events have their own renderer (:data:`_RENDERERS`); any other is shown
as its name and fields. Routine events are dimmed, warnings and errors bold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from aigw.tail.style import _BOLD, _DIM, _RED, _W_TAG, _W_TIME, _YELLOW, _Painter
from aigw.tail.values import _as_list, _basename, _duration, _request_id, _text

_LEVEL_TAGS: Final = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARN",
    "warn": "WARN",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRIT",
}
# Keys every event carries; the generic renderer does not repeat them.
_ENVELOPE: Final = frozenset({"event", "level", "timestamp", "component", "exception"})


def _format_other(name: str, event: Mapping[str, Any], clock: str, paint: _Painter) -> str:
    level = event.get("level")
    if name == "config_reload" and _as_list(event.get("rejected")):
        # Logged at info level, but a file was refused: worth the reader's eye.
        level = "warning"
    renderer = _RENDERERS.get(name)
    if renderer is not None:
        tag, message = renderer(event)
    else:
        tag = "CONFIG" if name.startswith("config_") else _LEVEL_TAGS.get(str(level), "LOG")
        message = _generic(name, event)
    summary = _exception_summary(event.get("exception"))
    if summary:
        message += f"  {summary}"
    head = f"{clock:<{_W_TIME}}  "
    if level in ("error", "exception", "critical"):
        return head + paint.cell(tag, _W_TAG, _RED, _BOLD) + "  " + paint(message, _BOLD)
    if level in ("warning", "warn"):
        return head + paint.cell(tag, _W_TAG, _YELLOW, _BOLD) + "  " + message
    # Routine events stay in the background of the request lines around them.
    return paint(f"{head}{tag:<{_W_TAG}}  {message}", _DIM)


_Renderer = Callable[[Mapping[str, Any]], tuple[str, str]]


def _config_reload(event: Mapping[str, Any]) -> tuple[str, str]:
    changes = [
        f"{sign}{_text(name)}"
        for sign, key in (("+", "added"), ("~", "changed"), ("-", "removed"))
        for name in _as_list(event.get(key))
    ]
    message = f"generation {_text(event.get('generation'))}"
    trigger = event.get("trigger")
    if trigger is not None:
        message += f" ({_text(trigger)})"
    message += ": " + (" ".join(changes) if changes else "no file changes")
    rejected = []
    for entry in _as_list(event.get("rejected")):
        if isinstance(entry, Mapping):
            # The issues themselves are on the config_rejected line logged just before.
            issues = len(_as_list(entry.get("issues")))
            noun = "issue" if issues == 1 else "issues"
            rejected.append(f"{_basename(entry.get('file'))} ({issues} {noun})")
        else:
            rejected.append(_basename(entry))
    if rejected:
        message += "  rejected: " + ", ".join(rejected)
    facts = [f"{_text(event.get('routes'))} routes"]
    if "build_ms" in event:
        facts.append(_duration(event.get("build_ms")))
    if event.get("degraded") is True:
        facts.append("degraded")
    return "CONFIG", f"{message}  [{', '.join(facts)}]"


def _config_rejected(event: Mapping[str, Any]) -> tuple[str, str]:
    path = event.get("file")
    name = _basename(path)
    issues = []
    for issue in _as_list(event.get("issues")):
        text = _text(issue)
        # Issues repeat the file's full path; its name is enough on one line.
        if isinstance(path, str) and path and text.startswith(path):
            text = name + text[len(path) :]
        issues.append(text)
    serving = event.get("serving")
    message = f"rejected {name}"
    if serving is not None:
        message += f" (serving {_text(serving)})"
    return "CONFIG", f"{message}: {'; '.join(issues) or '-'}"


def _config_reload_failed(event: Mapping[str, Any]) -> tuple[str, str]:
    return "CONFIG", (
        f"reload failed: {_text(event.get('reason'))} "
        f"(still serving generation {_text(event.get('generation'))})"
    )


def _listening(event: Mapping[str, Any]) -> tuple[str, str]:
    facts = [
        f"admin {_text(event.get('admin')) if event.get('admin') else 'off'}",
        f"generation {_text(event.get('generation'))}",
        f"{_text(event.get('routes'))} routes",
        f"conf {_text(event.get('conf_dir'))}",
    ]
    if event.get("azure_base_url"):
        facts.append(f"upstream {_text(event.get('azure_base_url'))}")
    return "START", f"listening on {_text(event.get('address'))}  [{', '.join(facts)}]"


def _stop(event: Mapping[str, Any]) -> tuple[str, str]:
    return "STOP", _generic(str(event.get("event")), event)


def _startup_failed(event: Mapping[str, Any]) -> tuple[str, str]:
    return "ERROR", f"startup failed: {_text(event.get('reason'))}"


def _unhandled_error(event: Mapping[str, Any]) -> tuple[str, str]:
    request_id = _request_id(event.get("request_id"))
    return "ERROR", f"unhandled error in route {_text(event.get('route'))}, request {request_id}"


_RENDERERS: Final[Mapping[str, _Renderer]] = {
    "config_reload": _config_reload,
    "config_rejected": _config_rejected,
    "config_reload_failed": _config_reload_failed,
    "listening": _listening,
    "stopping": _stop,
    "stopped": _stop,
    "startup_failed": _startup_failed,
    "unhandled_error": _unhandled_error,
}


def _generic(name: str, event: Mapping[str, Any]) -> str:
    fields = [
        f"{_text(key)}={_text(value)}" for key, value in event.items() if key not in _ENVELOPE
    ]
    return " ".join([_text(name), *fields])


def _exception_summary(value: object) -> str:
    """``Type: message at file:line in function`` from a structlog exception field."""
    if isinstance(value, str):
        # format_exc_info style: the traceback text; its last line names the error.
        lines = [line for line in value.splitlines() if line.strip()]
        return _text(lines[-1].strip()) if lines else ""
    if not isinstance(value, list) or not value or not isinstance(value[0], Mapping):
        return ""
    # dict_tracebacks: the raised exception first, then its causes.
    raised = value[0]
    summary = f"{_text(raised.get('exc_type'))}: {_text(raised.get('exc_value'))}"
    frames = raised.get("frames")
    if isinstance(frames, list) and frames and isinstance(frames[-1], Mapping):
        frame = frames[-1]
        summary += (
            f" at {_text(frame.get('filename'))}:{_text(frame.get('lineno'))}"
            f" in {_text(frame.get('name'))}"
        )
    root = value[-1]
    if len(value) > 1 and isinstance(root, Mapping):
        summary += f" (from {_text(root.get('exc_type'))}: {_text(root.get('exc_value'))})"
    return summary
