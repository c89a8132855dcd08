"""Start, check and stop the processes the suite measures, and never leave one behind.

Every target listens on 127.0.0.1 on a port picked at start-up. Processes are
started in their own session (process group) so a Ctrl-C in the terminal reaches
only the orchestrator, which then stops each group itself: SIGTERM, a grace
period, SIGKILL. ``PR_SET_PDEATHSIG`` is set in each child as a last resort, so
even a ``kill -9`` of the orchestrator takes its direct children down with it.

Targets:

* ``direct``: no proxy, the load goes straight to the upstream stand-in (the limit);
* ``nginx``: nginx as a plain reverse proxy that injects the same ``api-key`` header
  (the fast reference);
* ``bare aiohttp`` (and ``+ uvloop``): ``bench/bare_aiohttp_proxy.py``, what Python and
  aiohttp cost with no features;
* ``aigw``: ``aigw serve`` with access logging at info level (to a file) and token
  accounting on, 1 worker and ``--workers 2``.

Upstream stand-ins: nginx returning a fixed Azure chat-completion body (and, through
the echo module that Debian's nginx-light pulls in, the same body after a 20 ms
``echo_sleep``), and the bundled Azure mock for SSE streams.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from measure import free_port

from aigw.testing.azure_mock import wire

__all__ = [
    "API_VERSION",
    "BENCH_DIR",
    "CLIENT_HEADERS",
    "DEPLOYMENT",
    "ECHO_MODULE",
    "PYTHON",
    "REPO",
    "SLOW_DEPLOYMENT",
    "SSE_DEPLOYMENT",
    "UPSTREAM_KEY",
    "Processes",
    "Target",
    "aigw_supports_log_file",
    "aigw_supports_workers",
    "chat_path",
    "client_headers",
    "count_access_lines",
    "direct",
    "fixed_chat_body",
    "nginx_scratch_paths",
    "nginx_version",
    "request_body",
    "start_aigw",
    "start_bare",
    "start_mock",
    "start_nginx_proxy",
    "start_nginx_upstream",
    "start_proxies",
    "stop_targets",
    "wait_for_port_file",
    "write_route_file",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

API_VERSION = "2024-10-21"
DEPLOYMENT = "gpt-4o"
SLOW_DEPLOYMENT = "gpt-4o-slow"
SSE_DEPLOYMENT = "gpt-4o-sse"
MODEL = "gpt-4o-2024-11-20"
# The mock's default key. Clients send a different one so that a proxy which failed
# to replace it would get 401s from the mock (and show up as errors).
UPSTREAM_KEY = "mock-azure-key"
CLIENT_KEY = "client-key-not-for-upstream"
CLIENT_HEADERS = {"Content-Type": "application/json", "api-key": CLIENT_KEY}


def chat_path(deployment: str = DEPLOYMENT) -> str:
    """The path and query the Azure OpenAI SDK requests for a chat completion."""
    return f"/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}"


def request_body(deployment: str = DEPLOYMENT, *, stream: bool = False) -> str:
    """The body the SDK posts (``model`` is the deployment name, as the SDK sends it)."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Say this is a test"}],
        "model": deployment,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


# -- process bookkeeping -------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _pdeathsig() -> Callable[[], None] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:
        # Runs in the child between fork and exec: the kernel sends SIGTERM to the
        # child when the orchestrator dies, even by SIGKILL.
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return set_pdeathsig


class Processes:
    """Every child the suite started, so that all of them can be stopped on any exit."""

    def __init__(self) -> None:
        self._live: list[subprocess.Popen[bytes]] = []
        self._preexec = _pdeathsig()

    def spawn(
        self,
        cmd: list[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        stderr: IO[bytes] | int | None = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Starts *cmd* in its own process group and remembers it."""
        proc = subprocess.Popen(
            cmd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=self._preexec,
        )
        self._live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM to the whole group (nginx workers, aigw workers), then SIGKILL."""
        if proc in self._live:
            self._live.remove(proc)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # Children of the group leader (nginx or aigw workers) may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)

    def stop_all(self) -> None:
        """Stops everything still running, newest first (proxies before upstreams)."""
        for proc in reversed(list(self._live)):
            self.stop(proc, grace=3.0)


# -- targets ----------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    """One thing the load is pointed at.

    Attributes:
        key: Short id used in the JSON (``aigw-1``).
        name: Label in the report.
        url: Origin, e.g. ``http://127.0.0.1:41234``.
        proc: The process (tree root) whose RSS is the proxy's; None for ``direct``.
        log: File the target writes its log to (aigw's access log).
        skipped: Why the target was not run, if it was not.
        extra: Anything else worth recording (admin URL, flags).
    """

    key: str
    name: str
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        """Root pid for RSS sampling; None when there is no proxy process."""
        return self.proc.pid if self.proc is not None else None


def _tail(path: Path | None, limit: int = 2000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_bytes()[-limit:].decode("utf-8", "replace")


def _post(target: Target, path: str, body: str, timeout: float) -> int:
    host, port = target.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body=body.encode(), headers=client_headers(target))
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_ready(
    target: Target, *, path: str, body: str, timeout: float = 30.0, logs: Path | None = None
) -> None:
    """Waits until *target* answers a real chat request with 200.

    A real request, not a TCP connect: aigw binds before its routes may be usable,
    and a proxy that answers 502 is not ready for measuring.

    Raises:
        RuntimeError: the process exited, or no 200 came within *timeout*.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if target.proc is not None and target.proc.poll() is not None:
            raise RuntimeError(
                f"{target.name} exited with {target.proc.returncode}:\n{_tail(logs or target.log)}"
            )
        try:
            status = _post(target, path, body, timeout=5.0)
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.1)
    raise RuntimeError(f"{target.name} not ready after {timeout:.0f} s ({last})")


def direct(upstream: Target) -> Target:
    """The upstream itself as a target: what the load generator and upstream reach alone.

    A client that talks to the upstream directly holds the upstream's own key (the
    Azure mock checks it; nginx does not), where clients of a proxy send their own.
    """
    target = Target(key="direct", name="direct (no proxy)", url=upstream.url)
    target.extra["api_key"] = UPSTREAM_KEY
    return target


def client_headers(target: Target) -> dict[str, str]:
    """The headers a client sends to *target* (its api-key depends on the target)."""
    return {**CLIENT_HEADERS, "api-key": str(target.extra.get("api_key", CLIENT_KEY))}


# -- nginx ---------------------------------------------------------------------------


def _nginx_exe() -> str:
    # /usr/sbin is not on every PATH (non-login shells, sudo -E).
    return shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_version() -> str:
    """``nginx/1.22.1`` or ``missing``."""
    try:
        proc = subprocess.run([_nginx_exe(), "-v"], capture_output=True, text=True, check=False)
    except OSError:
        return "missing"
    return proc.stderr.strip().removeprefix("nginx version: ")


_NGINX_SCRATCH = {
    "client_body_temp_path": "body",
    "proxy_temp_path": "proxy",
    "fastcgi_temp_path": "fastcgi",
    "uwsgi_temp_path": "uwsgi",
    "scgi_temp_path": "scgi",
}


def nginx_scratch_paths(workdir: Path) -> str:
    """Makes nginx's temp dirs under *workdir*; returns the ``http`` directives naming them.

    nginx's compiled-in temp paths are not writable by an unprivileged run.
    """
    directives = []
    for directive, sub in _NGINX_SCRATCH.items():
        (workdir / sub).mkdir(parents=True, exist_ok=True)
        directives.append(f"{directive} {workdir}/{sub};")
    return "\n  ".join(directives)


def _nginx_conf(workdir: Path, server: str, *, echo: bool, http_extra: str = "") -> str:
    scratch = nginx_scratch_paths(workdir)
    # worker_processes 1: the same single core aigw's default gets; nginx stays the
    # fast reference even so. Large keepalive_requests: nginx's default of 1,000
    # would make wrk reconnect mid-run and measure connection set-up instead.
    return f"""
{f"load_module {ECHO_MODULE};" if echo else ""}
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  server_tokens off;
  {scratch}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  {http_extra}
  server {{
{server}
  }}
}}
"""


def _start_nginx(
    procs: Processes, workdir: Path, conf: str, key: str, name: str, port: int
) -> Target:
    workdir.mkdir(parents=True, exist_ok=True)
    # nginx's workers run as "nobody" when started as root: they must reach the dir.
    workdir.chmod(0o755)
    conf_path = workdir / "nginx.conf"
    conf_path.write_text(conf)
    check = subprocess.run(
        [_nginx_exe(), "-t", "-q", "-c", str(conf_path)], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected {conf_path}: {check.stderr.strip()}")
    stderr = (workdir / "stderr.log").open("wb")
    proc = procs.spawn([_nginx_exe(), "-c", str(conf_path)], stderr=stderr)
    stderr.close()
    return Target(
        key=key, name=name, url=f"http://127.0.0.1:{port}", proc=proc, log=workdir / "error.log"
    )


def _nginx_quoted(data: bytes) -> str:
    text = data.decode()
    # The text goes into nginx config single quotes: these would need escaping.
    assert not set("'\\$") & set(text), "text must not contain ' \\ or $"
    return text.replace("\n", "\\n")  # nginx turns \n in a quoted string into a newline


def fixed_chat_body() -> bytes:
    """The Azure chat-completion body the nginx upstream returns (the mock's own bytes)."""
    return wire.chat_body(MODEL, 12, 8, "stop").render(b"1700000000", b"chatcmpl-bench")


def _sse_directives(tokens: int, delay_ms: float) -> str:
    """echo-module directives replaying the mock's chat stream, paced like the mock.

    The events are the mock's own (``stream_plan`` with ``include_usage``, as aigw asks
    for it), and the delay goes exactly where the mock puts it: between two consecutive
    token events. ``echo_flush`` pushes each event out on its own, as Azure does.
    """
    plan = wire.stream_plan("chat", MODEL, 12, tokens, "stop", True)
    events = [e.render(b"1700000000", b"chatcmpl-bench") for e in plan.events]
    content = [*plan.content, False]
    lines = []
    for index, event in enumerate([*events, wire.DONE_EVENT]):
        if index and content[index] and content[index - 1]:
            lines.append(f"echo_sleep {delay_ms / 1000:.3f};")
        lines.append(f"echo -n '{_nginx_quoted(event)}';")
        lines.append("echo_flush;")
    return "\n      ".join(lines)


def start_nginx_upstream(
    procs: Processes, workdir: Path, *, sse_tokens: int = 64, sse_delay_ms: float = 20.0
) -> Target:
    """nginx as the upstream stand-in, one deployment path per behaviour.

    * ``DEPLOYMENT``: the fixed chat-completion body, at once (``return 200``);
    * ``SLOW_DEPLOYMENT``: the same body after a 20 ms ``echo_sleep``;
    * ``SSE_DEPLOYMENT``: the mock's chat stream, *sse_tokens* deltas *sse_delay_ms* apart.

    The last two use the echo module, which Debian's nginx-light pulls in
    (libnginx-mod-http-echo). ``echo_sleep`` is a timer, no thread or process held, so
    the stand-in costs little at any concurrency. ``extra["echo"]`` says whether the
    module was there; without it the suite falls back to the Python mock.
    """
    text = _nginx_quoted(fixed_chat_body())
    echo = ECHO_MODULE.exists()
    port = free_port()
    slow = (
        f"""
    location /openai/deployments/{SLOW_DEPLOYMENT}/ {{
      default_type application/json;
      echo_sleep 0.02;
      echo -n '{text}';
    }}
    location /openai/deployments/{SSE_DEPLOYMENT}/ {{
      default_type text/event-stream;
      add_header x-accel-buffering no;
      {_sse_directives(sse_tokens, sse_delay_ms)}
    }}"""
        if echo
        else ""
    )
    server = f"""
    listen 127.0.0.1:{port} backlog=4096;
    {slow}
    location / {{
      default_type application/json;
      return 200 '{text}';
    }}"""
    target = _start_nginx(
        procs,
        workdir,
        _nginx_conf(workdir, server, echo=echo),
        "upstream-nginx",
        "nginx fixed-body upstream",
        port,
    )
    target.extra["echo"] = echo
    wait_ready(target, path=chat_path(), body=request_body())
    if echo:
        wait_ready(target, path=chat_path(SLOW_DEPLOYMENT), body=request_body(SLOW_DEPLOYMENT))
    return target


def start_nginx_proxy(
    procs: Processes, workdir: Path, upstream: str, *, ready_deployment: str = DEPLOYMENT
) -> Target:
    """nginx as a plain reverse proxy to *upstream*, replacing the client's ``api-key``."""
    port = free_port()
    up = upstream.removeprefix("http://")
    http_extra = f"upstream up {{ server {up}; keepalive 1024; keepalive_requests 10000000; }}"
    server = f"""
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header api-key "{UPSTREAM_KEY}";
      proxy_read_timeout 600s;
    }}"""
    target = _start_nginx(
        procs,
        workdir,
        _nginx_conf(workdir, server, echo=False, http_extra=http_extra),
        "nginx",
        "nginx reverse proxy",
        port,
    )
    wait_ready(target, path=chat_path(ready_deployment), body=request_body(ready_deployment))
    return target


# -- Python processes --------------------------------------------------------------------


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # A STATE_DIRECTORY from the caller's environment would turn on last-known-good
    # persistence in aigw; the benchmark measures the plain configuration.
    env.pop("STATE_DIRECTORY", None)
    env["PYTHONUNBUFFERED"] = "0"
    env.update(extra)
    return env


def start_mock(
    procs: Processes,
    workdir: Path,
    *,
    latency_ms: float = 0.0,
    token_delay_ms: float = 0.0,
    tokens: int = 8,
    deployments: tuple[str, ...] = (DEPLOYMENT,),
) -> Target:
    """The bundled Azure mock on uvloop, with request recording off (it would grow)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    log = workdir / "mock.log"
    cmd = [
        PYTHON,
        "-m",
        "aigw.testing.azure_mock",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--uvloop",
        "--record-limit",
        "0",
        "--rpm",
        "100000000",
        "--tpm",
        "1000000000",
        "--latency-ms",
        str(latency_ms),
        "--token-delay-ms",
        str(token_delay_ms),
        "--tokens",
        str(tokens),
    ]
    for name in deployments:
        cmd += ["--deployment", f"{name}={MODEL}"]
    with log.open("wb") as out:
        proc = procs.spawn(cmd, env=_child_env(), stdout=out, stderr=subprocess.STDOUT)
    port = wait_for_port_file(proc, port_file, log, "azure mock")
    target = Target(
        key="upstream-mock", name="Azure mock", url=f"http://127.0.0.1:{port}", proc=proc, log=log
    )
    target.extra["api_key"] = UPSTREAM_KEY
    target.extra.update(latency_ms=latency_ms, token_delay_ms=token_delay_ms, tokens=tokens)
    return target


def wait_for_port_file(
    proc: subprocess.Popen[bytes], port_file: Path, log: Path, name: str, timeout: float = 20
) -> int:
    """The port a process started with ``--port-file`` listens on, once it has written it.

    Raises RuntimeError with the end of *log* if the process exits or *timeout* passes first.
    """
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n{_tail(log)}")
        time.sleep(0.05)
    return int(port_file.read_text())


def start_bare(
    procs: Processes,
    workdir: Path,
    upstream: str,
    *,
    uvloop: bool,
    ready_deployment: str = DEPLOYMENT,
) -> Target:
    """``bench/bare_aiohttp_proxy.py`` in front of *upstream*."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    key = "bare-uvloop" if uvloop else "bare"
    log = workdir / f"{key}.log"
    cmd = [PYTHON, str(BENCH_DIR / "bare_aiohttp_proxy.py"), str(port), upstream]
    cmd += ["--api-key", UPSTREAM_KEY]
    if uvloop:
        cmd.append("--uvloop")
    with log.open("wb") as out:
        proc = procs.spawn(cmd, env=_child_env(), stdout=out, stderr=subprocess.STDOUT)
    name = "bare aiohttp + uvloop" if uvloop else "bare aiohttp"
    target = Target(key=key, name=name, url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    wait_ready(target, path=chat_path(ready_deployment), body=request_body(ready_deployment))
    return target


_ROUTE_FILE = """\
# Benchmark route {deployment}: what a real deployment file looks like.
route:
  name: bench-{deployment}
  paths: [/openai/deployments/{deployment}/chat/completions]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:{body_limit}
      targets:
        - route_type: llm/v1/chat
          read_timeout: {read_timeout}
          auth:
            header_name: api-key
            header_value: ${{AZURE_OPENAI_KEY}}
          logging:
            log_statistics: true
          model:
            provider: azure
            name: {deployment}
            options:
              azure_instance: ${{AZURE_INSTANCE}}
              azure_deployment_id: {deployment}
"""


def write_route_file(
    conf_dir: Path,
    deployment: str,
    *,
    read_timeout: int = 120000,
    max_request_body_size: int | None = None,
) -> Path:
    """Writes ``conf_dir/{deployment}.yaml`` (in place, as an editor would).

    *max_request_body_size*, if given, is the route's body limit (else aigw's default).
    """
    body_limit = ""
    if max_request_body_size is not None:
        body_limit = f"\n      max_request_body_size: {max_request_body_size}"
    text = _ROUTE_FILE.format(
        deployment=deployment, read_timeout=read_timeout, body_limit=body_limit
    )
    path = conf_dir / f"{deployment}.yaml"
    path.write_text(text)
    return path


_SERVE_HELP: list[str] = []


def _serve_help() -> str:
    if not _SERVE_HELP:
        proc = subprocess.run(
            [PYTHON, "-m", "aigw", "serve", "--help"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        _SERVE_HELP.append(proc.stdout)
    return _SERVE_HELP[0]


def aigw_supports_workers() -> bool:
    """Whether ``aigw serve --help`` lists ``--workers`` (being added concurrently)."""
    return "--workers" in _serve_help()


def aigw_supports_log_file() -> bool:
    """Whether ``aigw serve --help`` lists ``--log-file`` (else the log is stdout)."""
    return "--log-file" in _serve_help()


def start_aigw(
    procs: Processes,
    workdir: Path,
    upstream: str,
    *,
    workers: int,
    deployments: tuple[str, ...],
    ready_deployment: str = DEPLOYMENT,
    admin: bool = False,
) -> Target:
    """``aigw serve`` against *upstream* with logging at info to a file, tokens logged.

    The access log goes to a file (``--log-file`` when aigw has it, else stdout
    redirected) rather than /dev/null, so the suite can count its lines afterwards
    and prove that logging was really on during the measurement.
    """
    key = f"aigw-{workers}"
    name = f"aigw {workers} worker{'s' if workers > 1 else ''}"
    if workers > 1 and not aigw_supports_workers():
        return Target(key=key, name=name, skipped="skipped: --workers not supported")
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "conf.d"
    conf.mkdir(exist_ok=True)
    for deployment in deployments:
        write_route_file(conf, deployment)
    port = free_port()
    cmd = [
        PYTHON,
        "-m",
        "aigw",
        "serve",
        "--conf-dir",
        str(conf),
        "--listen",
        f"127.0.0.1:{port}",
        "--azure-base-url",
        upstream,
        "--log-level",
        "info",
    ]
    admin_url = None
    if admin:
        admin_port = free_port()
        admin_url = f"http://127.0.0.1:{admin_port}"
        cmd += ["--admin-listen", f"127.0.0.1:{admin_port}"]
    else:
        cmd += ["--admin-listen", "off"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    log = workdir / f"{key}.access.log"
    err = workdir / f"{key}.stderr.log"
    env = _child_env(AZURE_OPENAI_KEY=UPSTREAM_KEY, AZURE_INSTANCE="bench")
    if aigw_supports_log_file():
        # The production set-up: JSON lines to a log file, stdout to /dev/null.
        cmd += ["--log-file", str(log)]
        stdout = subprocess.DEVNULL
    else:
        stdout = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with err.open("wb") as errf:
        proc = procs.spawn(cmd, env=env, stdout=stdout, stderr=errf, cwd=REPO)
    if stdout != subprocess.DEVNULL:
        os.close(stdout)
    target = Target(key=key, name=name, url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    target.extra.update(conf_dir=str(conf), admin=admin_url, workers=workers)
    try:
        wait_ready(target, path=chat_path(ready_deployment), body=request_body(ready_deployment))
    except RuntimeError as exc:
        procs.stop(proc)
        raise RuntimeError(f"{exc}\nstderr:\n{_tail(err)}") from None
    return target


def count_access_lines(path: Path | None) -> int:
    """Number of access-log lines (``"event":"request"``) aigw wrote to *path*."""
    if path is None or not path.exists():
        return 0
    count = 0
    with path.open("rb") as fh:
        for line in fh:
            if b'"event":"request"' in line:
                count += 1
    return count


def start_proxies(
    procs: Processes,
    workdir: Path,
    upstream: Target,
    *,
    uvloop: bool,
    deployments: tuple[str, ...],
) -> list[Target]:
    """direct, nginx, bare aiohttp (+ uvloop), aigw 1 and 2 workers, all in front of *upstream*.

    Skipped targets (no uvloop, no ``--workers``) are returned with ``skipped`` set so the
    report can say so instead of silently leaving a row out.
    """
    ready = deployments[0]
    out = [direct(upstream)]
    out.append(start_nginx_proxy(procs, workdir / "nginx", upstream.url, ready_deployment=ready))
    out.append(
        start_bare(procs, workdir / "bare", upstream.url, uvloop=False, ready_deployment=ready)
    )
    if uvloop:
        out.append(
            start_bare(procs, workdir / "bare", upstream.url, uvloop=True, ready_deployment=ready)
        )
    else:
        out.append(
            Target(key="bare-uvloop", name="bare aiohttp + uvloop", skipped="uvloop not installed")
        )
    for workers in (1, 2):
        try:
            target = start_aigw(
                procs,
                workdir / f"aigw-{workers}",
                upstream.url,
                workers=workers,
                deployments=deployments,
                ready_deployment=ready,
            )
        except RuntimeError as exc:
            if workers == 1:
                raise
            # --workers is new and changing under us: report it, measure the rest.
            first = str(exc).splitlines()[0][:200]
            target = Target(key="aigw-2", name="aigw 2 workers", skipped=f"failed: {first}")
        out.append(target)
    return out


def stop_targets(procs: Processes, targets: list[Target]) -> None:
    """Stops every target process (not the upstream: it is not in the list)."""
    for target in targets:
        if target.proc is not None:
            procs.stop(target.proc)
