"""The load driver: Debian's ``wrk`` over loopback, with a Lua script that reports in JSON.

wrk is a C program with its own event loop: one of its threads keeps dozens of
keep-alive connections busy with a small fraction of a core, so what it measures is
the server, not the driver. (A Python driver, even an async one, spends more CPU per
request than a fast endpoint does, and on two cores would cap the very figures it is
meant to compare.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_REPORT = """
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '\\n@@wrk {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max))
end
"""

# A different instant on every request: the k-th request asks for
# start + (k * step) mod span seconds; step is prime and does not divide span, so no
# instant repeats within ``span`` requests, and each wrk thread starts at its own offset.
_AS_OF = """
local counter = 0
local offset = 0
local thread_number = 0
setup = function(thread)
  thread:set("number", thread_number)
  thread_number = thread_number + 1
end
init = function(args)
  offset = (tonumber(wrk.thread:get("number")) or 0) * 7777777
end
request = function()
  counter = counter + 1
  local seconds = (offset + counter * {step}) % {span}
  local path = "{path}" .. os.date("!%Y-%m-%dT%H:%M:%SZ", {start} + seconds)
  return wrk.format(nil, path)
end
"""


# Each request from the next of {clients} client addresses (10.0.0.1, 10.0.0.2, ...), named in
# X-Forwarded-For as a reverse proxy would: the requests are made once, then sent in turn.
_CLIENTS = """
local pool = {}
local turn = 0
init = function(args)
  for n = 1, {clients} do
    local headers = {}
    for name, value in pairs(wrk.headers) do
      headers[name] = value
    end
    headers["X-Forwarded-For"] = string.format(
      "10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
    pool[n] = wrk.format(nil, nil, headers)
  end
end
request = function()
  turn = turn % {clients} + 1
  return pool[turn]
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    bytes: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @staticmethod
    def combine(results: Sequence[LoadResult]) -> LoadResult:
        """Runs made at the same time against different servers, counted as one."""
        seconds = max(result.seconds for result in results)
        return LoadResult(
            requests=sum(result.requests for result in results),
            seconds=seconds,
            bytes=sum(result.bytes for result in results),
            errors=sum(result.errors for result in results),
            p50_ms=max(result.p50_ms for result in results),
            p90_ms=max(result.p90_ms for result in results),
            p99_ms=max(result.p99_ms for result in results),
        )


class LoadError(RuntimeError):
    """wrk failed, or the server answered with errors: the figure would mean nothing."""


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise LoadError("wrk is not installed: apt-get install wrk (make bench does it)")
    return found


@dataclass(frozen=True, slots=True)
class Load:
    """One kind of request to send: a fixed URL with headers, or one ``as_of`` per request."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    # When set: the URL's path plus "?as_of=" (or "&as_of=") and a new instant each time.
    distinct_as_of: tuple[datetime, datetime] | None = None
    # When set: requests come from this many client addresses in turn (X-Forwarded-For).
    clients: int = 0

    def script(self) -> str:
        lines = []
        for name, value in self.headers:
            lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
        if self.distinct_as_of is not None:
            first, last = self.distinct_as_of
            start = int(first.astimezone(UTC).timestamp())
            span = max(int((last - first).total_seconds()), 2)
            step = 1_000_003 if span % 1_000_003 else 999_983
            path = self.url.split("://", 1)[1]
            path = path[path.index("/") :] if "/" in path else "/"
            path += ("&" if "?" in path else "?") + "as_of="
            lines.append(
                _AS_OF.replace("{step}", str(step))
                .replace("{span}", str(span))
                .replace("{start}", str(start))
                .replace("{path}", path)
            )
        if self.clients:
            if self.distinct_as_of is not None:
                raise ValueError("a load has one request function: clients or distinct_as_of")
            lines.append(_CLIENTS.replace("{clients}", str(self.clients)))
        lines.append(_REPORT)
        return "\n".join(lines)


def run(
    load: Load,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    allow_errors: bool = False,
) -> LoadResult:
    """Drive ``load`` for ``seconds`` over ``connections`` keep-alive connections.

    Raises LoadError when any request failed (unless ``allow_errors``).
    """
    results = run_many([load], seconds=seconds, connections=connections, threads=threads)
    return results[0] if allow_errors else _checked(results)[0]


def _checked(results: list[LoadResult]) -> list[LoadResult]:
    for result in results:
        if result.errors or result.requests == 0:
            raise LoadError(f"the load run had errors: {result}")
    return results


def run_many(
    loads: Sequence[Load], *, seconds: float, connections: int, threads: int = 1
) -> list[LoadResult]:
    """Run one wrk per load at the same time (each with ``connections``); results in order."""
    binary = wrk_path()
    with tempfile.TemporaryDirectory(prefix="pledgewatch-wrk-") as folder:
        processes = []
        for index, load in enumerate(loads):
            script = Path(folder) / f"load{index}.lua"
            script.write_text(load.script())
            command = [
                binary,
                f"--threads={threads}",
                f"--connections={max(connections, threads)}",
                f"--duration={max(seconds, 1):.0f}s",
                "--timeout=30s",
                f"--script={script}",
                load.url,
            ]
            processes.append(
                subprocess.Popen(  # noqa: S603 - wrk, with arguments we made
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            )
        outputs = [process.communicate(timeout=seconds + 120)[0] for process in processes]
    results = []
    for process, output in zip(processes, outputs, strict=True):
        marker = next((line for line in output.splitlines() if line.startswith("@@wrk ")), None)
        if process.returncode != 0 or marker is None:
            raise LoadError(f"wrk failed ({process.returncode}): {output[-2000:]}")
        figures = json.loads(marker.removeprefix("@@wrk "))
        errors = sum(figures[name] for name in ("connect", "read", "write", "status", "timeout"))
        results.append(
            LoadResult(
                requests=figures["requests"],
                seconds=figures["duration_us"] / 1e6,
                bytes=figures["bytes"],
                errors=errors,
                p50_ms=figures["p50_us"] / 1000,
                p90_ms=figures["p90_us"] / 1000,
                p99_ms=figures["p99_us"] / 1000,
            )
        )
    return results
