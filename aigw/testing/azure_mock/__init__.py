"""A faithful Azure OpenAI mock upstream for tests, benchmarks and demos.

It reproduces the data plane the ``openai`` SDK's ``AzureOpenAI`` and ``OpenAI`` clients
talk to, with Azure's bodies, headers, SSE framing and error texts:

* classic: ``POST /openai/deployments/{deployment}/chat/completions|completions|embeddings
  ?api-version=YYYY-MM-DD[-preview]``;
* v1: ``POST /openai/v1/chat/completions|completions|embeddings[?api-version=v1|preview]``,
  the deployment being the body's ``model`` (missing: 400 "you must provide a model
  parameter"; unknown: 404 ``DeploymentNotFound``), with ``api-key`` or
  ``Authorization: Bearer`` (the resource key, ``--bearer-token``'s, or an Entra token);
* Responses: ``POST /openai/responses?api-version=`` (2025-03-01-preview or later, else
  400) and ``POST /openai/v1/responses``, the deployment being the body's ``model``:
  a ``response`` object, or with ``"stream": true`` typed SSE events
  (``event: response.created`` ... ``response.output_text.delta`` ...
  ``response.completed`` with ``response.usage``; no ``[DONE]``); stored responses
  (``GET``/``DELETE /openai/responses/{id}`` and ``/openai/v1/responses/{id}``);
* ``GET /openai/models`` and ``/openai/v1/models``: the deployments' models;
* images: ``/images/generations`` (dall-e-3: ``url`` or ``b64_json`` with
  ``revised_prompt``; gpt-image-1: base64 PNGs and token ``usage``);
* text to speech: ``/audio/speech`` answers ``audio/mpeg`` (or ``response_format``'s
  type), chunked, in pieces over time (``/_mock/settings``);
* multipart (``file`` counted as it streams in, never held): ``/audio/transcriptions``
  and ``/audio/translations`` (``response_format`` json | text | srt | vtt |
  verbose_json; gpt-4o-transcribe: json or text, with token ``usage``; no ``file``:
  400) and ``/images/edits`` (``image`` or ``image[]`` files). On v1 the deployment is
  the form's ``model`` field;
* realtime WebSocket: ``GET /openai/realtime?api-version=…&deployment=…`` (preview
  events: ``response.audio.delta``, ``response.audio_transcript.delta``,
  ``response.text.delta``) and ``/openai/v1/realtime?model=…`` (GA events:
  ``response.output_audio.delta``, ``response.output_audio_transcript.delta``,
  ``response.output_text.delta``), same auth: ``session.created`` on open, then
  ``session.updated``, ``conversation.item.created``, and per ``response.create`` the
  response's events ending in ``response.done`` with ``response.usage``
  (`aigw.testing.azure_mock.realtime`). Not an upgrade: 400. Faults play before the
  upgrade (``status``, ``close``, ``hang``, ``delay``) or during the session
  (``cut_stream``: vanish after ``after_events`` server events; ``eof_stream``: close
  1000; ``stream_error_event``: an ``error`` event, then close 1011).

Every operation is served on the classic deployment paths and on ``/openai/v1/...``.
A deployment only does what its model can (``OperationNotSupported`` otherwise): the
defaults add ``dall-e-3``, ``gpt-image-1``, ``tts``, ``whisper``, ``gpt-4o-transcribe``
and ``gpt-4o-realtime-preview``; chat models also answer Responses. Run it as
``python -m aigw.testing.azure_mock --port 0 --port-file PATH`` (``--help`` lists the
flags), or in-process with :func:`build_app` or :class:`MockServer`.

Control API (same port; these requests are not recorded):

``GET /_mock/health``
    ``{"ok": true}``.
``GET /_mock/requests[?settle_ms=N]``
    Every data-plane request, oldest first: ``seq, method, path`` (raw, no query),
    ``query`` (object), ``headers`` (lower-cased names, repeats joined with ``", "``),
    ``body`` (UTF-8, invalid bytes replaced), ``body_size``, ``operation`` (``chat``,
    ``responses``, ``speech``...), ``deployment`` (from the path, body ``model``, form
    field or query, even if unknown), ``stream``, ``status`` (``null`` if nothing was
    sent), ``fault`` (the fault that request consumed), ``apim_request_id``,
    ``stream_outcome``: ``null`` | ``"completed"`` | ``"client_disconnected"`` | ``"cut"``
    (other requests stay ``null`` unless the client left before the answer, e.g.
    during ``hang`` or a delay; speech and realtime sessions are ``"completed"`` once
    wholly sent or closed), ``form`` and ``file_bytes`` (multipart: the text fields,
    and the bytes of the file parts, which are never kept), ``session`` (realtime),
    ``started_at`` / ``ended_at`` (Unix time; ``ended_at`` is ``null`` while the handler
    runs). ``settle_ms`` first waits up to N ms for in-flight requests to finish, so
    outcomes of just-closed streams are in.
``DELETE /_mock/requests``
    Forget them.
``POST /_mock/faults``
    One fault object or a list. Common fields: ``fault`` (kind), ``deployment`` (default:
    any), ``count`` (default 1; ``null`` = until cleared), ``stream`` (true/false: only
    stream / non-stream requests; default both), ``headers`` (extra response headers).
    A request consumes the first pending fault that matches it. Kinds and parameters:

    * ``status``: ``status`` (required), ``retry_after`` / ``retry_after_ms`` (429
      defaults: 1 and 1000; ``null`` omits the header), ``body`` (string = raw, else
      JSON), ``content_type``. 429, 500 and 503 get Azure's bodies by default.
    * ``content_filter``: Azure's 400 prompt-filter error.
    * ``cut_stream``: ``after_events`` (default 3), ``rst`` (default false): send N SSE
      events, then drop the TCP connection without the chunked terminator.
    * ``eof_stream``: ``after_events`` (default: all): end cleanly without ``[DONE]``.
    * ``stream_error_event``: ``after_events`` (default 3), ``error`` (object): then a
      ``data: {"error": ...}`` event and a clean end without ``[DONE]``.
    * ``delay``: ``latency_ms``, ``token_delay_ms`` for that request; ``latency_ms``
      holds back the status line and headers themselves (a slow first byte).
    * ``redirect``: ``location`` (default: same path on the other of ``localhost`` /
      ``127.0.0.1``, i.e. another origin that still reaches this mock), ``status`` (307).
    * ``hang``: never answer; the request ends when the client leaves.
    * ``close``: ``rst``: close the connection without any response.
    * ``malformed``: ``body``: 200 with a body that is not JSON (SSE for streams).

    The stream kinds only match ``"stream": true`` requests.
``GET /_mock/faults`` / ``DELETE /_mock/faults``
    Pending faults as posted, each with ``remaining``; clear them.
``GET /_mock/sessions``
    The records of realtime requests, each with ``session``: ``frames_in``,
    ``frames_out``, ``events_in`` / ``events_out`` (event types in order),
    ``audio_bytes_in``, ``close_code`` and ``closed_by`` (``"client"``, ``"mock"``, or
    ``"dropped"``: the mock vanished without a close frame).
``POST /_mock/sessions/drop`` ``{"code": N | null, "rst": false}``
    Ends every open session: a close frame with ``code``, or with ``null`` the TCP
    connection just closes (a RST with ``rst``), as a crashed upstream.
``GET /_mock/settings`` / ``POST /_mock/settings``
    Run-time knobs, posted as an object of some of them: ``speech_bytes`` (48000),
    ``speech_chunk_bytes`` (8192), ``speech_chunk_delay_ms`` (5; a ``delay`` fault's
    ``token_delay_ms`` overrides it), ``realtime_audio_deltas`` (3).
``POST /_mock/connections`` ``{"refuse": true, "for_ms": N}``
    The region dies: the listening socket closes (connecting is refused) and every other
    open connection is aborted. After ``for_ms``, or with ``"for_ms": null`` when the CLI
    process gets SIGUSR1 (``MockServer.accept_connections()`` in-process), the same port
    listens again. Needs :class:`MockServer` or the CLI (501 on a bare :func:`build_app`).

Each mock process is one Azure resource ("region": ``--region`` sets ``x-ms-region``).
It accepts ``api-key``, and ``Authorization: Bearer`` tokens: ``--bearer-token``'s, and
with ``--entra-secret S`` those ``aigw.testing.entra.verify_token(token, S, now)``
accepts; any other bearer token gets Azure's Entra 401 (``{"statusCode": 401, ...}``).
"""

from .app import STATE_KEY, ListenerControl, MockState, RequestRecord, build_app
from .config import DEFAULT_API_KEY, DEFAULT_DEPLOYMENTS, MockConfig
from .faults import FAULT_KINDS
from .server import MockServer

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_DEPLOYMENTS",
    "FAULT_KINDS",
    "STATE_KEY",
    "ListenerControl",
    "MockConfig",
    "MockServer",
    "MockState",
    "RequestRecord",
    "build_app",
]
