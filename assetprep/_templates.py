"""Manifest templates rendered in a child process, so one cell cannot hang or exhaust the machine.

A manifest comes from a third party: nested `range` loops ran for minutes and `'ab' * 2000000000` took 12 GB in
the sandboxed environment, which bounds what a template may reach, not how long it runs or how much it allocates.
Templates other than plain `{{ name }}` fields (rendered in the caller) go to one long-lived child: its address
space is capped (a huge allocation is a MemoryError there), its output is cut off past a size, and a render that
outlives its deadline is killed with the child, which the next render starts again.

This file runs as that child by path (`python _templates.py`): it imports only the standard library and Jinja2.
"""

from __future__ import annotations

import atexit
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
import time
import unicodedata
from typing import Any

import jinja2
import jinja2.sandbox

MAX_OUTPUT = 1 << 20  # characters a template may render: a script is at most 10,000
MEMORY_BYTES = 1 << 30  # the child's address space
SECONDS = 2.0  # per render; a real template takes well under a millisecond


def slug(value: Any) -> str:
    """`Acme Café, Inc.` → `acme-cafe-inc`: safe in file names and video names."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def environment() -> jinja2.sandbox.SandboxedEnvironment:
    env = jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
    )
    env.filters["slug"] = slug
    del env.globals["lipsum"]  # lipsum(n=10**9): text nobody puts in a sales video
    return env


class RenderFailed(Exception):
    """A template did not render: `kind` is undefined, security, syntax, memory, size, time or error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


# --- the child -------------------------------------------------------------------------------------------------------


def _render_here(env: jinja2.sandbox.SandboxedEnvironment, cache: dict[str, jinja2.Template], template: str,
                 variables: dict[str, Any]) -> tuple[str, str]:  # fmt: skip
    try:
        if template not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[template] = env.from_string(template)
        parts, size = [], 0
        for chunk in cache[template].generate(variables):
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_OUTPUT:
                return "size", f"renders to over {MAX_OUTPUT:,} characters"
        return "ok", "".join(parts)
    except jinja2.exceptions.UndefinedError as exc:
        return "undefined", exc.message or ""
    except jinja2.exceptions.SecurityError as exc:
        return "security", str(exc)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        return "syntax", exc.message or ""
    except MemoryError:
        return "memory", f"needs more than {MEMORY_BYTES >> 20} MB"
    except RecursionError:
        return "error", "recursion too deep"
    except Exception as exc:  # a template can raise anything a filter raises (e.g. a division by zero)
        return "error", f"{type(exc).__name__}: {exc}"


def _child() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    env, cache = environment(), {}
    read, write = sys.stdin.buffer, sys.stdout.buffer
    while head := read.read(4):
        template, variables = pickle.loads(read.read(struct.unpack("<I", head)[0]))
        data = pickle.dumps(_render_here(env, cache, template, variables))
        write.write(struct.pack("<I", len(data)) + data)
        write.flush()


# --- the parent ------------------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        atexit.register(self.close)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def render(self, template: str, variables: dict[str, Any], seconds: float) -> str:
        request = pickle.dumps((template, variables))
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                from ._process import start_worker

                # -P: run by path without this folder on sys.path (its modules must not shadow any other)
                self.proc = start_worker([sys.executable, "-P", os.path.abspath(__file__)])
            proc = self.proc
            assert proc.stdin is not None and proc.stdout is not None
            answer: list[bytes] = []

            def exchange() -> None:
                try:
                    proc.stdin.write(struct.pack("<I", len(request)) + request)  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                    head = proc.stdout.read(4)  # type: ignore[union-attr]
                    if len(head) == 4:
                        answer.append(proc.stdout.read(struct.unpack("<I", head)[0]))  # type: ignore[union-attr]
                except OSError:
                    pass

            # A thread, so the deadline holds even while the child is busy and the pipes are full.
            talk = threading.Thread(target=exchange, daemon=True)
            started = time.monotonic()
            talk.start()
            talk.join(seconds)
            if not answer:
                self.close()  # the child is stuck (or gone): the next render starts a new one
                talk.join(5)
                if time.monotonic() - started >= seconds:
                    raise RenderFailed("time", f"ran for over {seconds:g} s")
                raise RenderFailed("memory", "the template process ended (out of memory?)")
        kind, text = pickle.loads(answer[0])
        if kind != "ok":
            raise RenderFailed(kind, text)
        return str(text)


_WORKER = _Worker()


def render(template: str, variables: dict[str, Any], *, seconds: float = SECONDS) -> str:
    """`template` rendered in the sandbox child; RenderFailed says why not."""
    return _WORKER.render(template, variables, seconds)


if __name__ == "__main__":
    _child()
