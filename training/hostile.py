"""Hostile requests against real workers while `/healthz` is measured: `kefu hostile`.

Starts `uvicorn api.main:app --workers N` (the load test's Server) on a temporary SQLite database, creates a
shop and uploads a small valid KB (a control request: it must answer 200). Then it sends, one at a time,
requests built to hurt a worker:

- KB uploads: an .xlsx whose sheet XML inflates to ~100 MB (425,000 inline-string rows) from a few hundred
  KB; one with short rows that stays under the inflated-size limit, so the row count has to stop it while
  streaming; the big one again with zip headers that understate the sizes; a 200,000-row CSV; `[` x
  200,000 as a .json KB; a 200 MB upload;
- on the unauthenticated JD push `/jd/{shop}/messages`: a 200 MB JSON body with a Content-Length, the same
  chunked (no Content-Length), `[` x 200,000 as JSON, and a multipart form with a file part.

Meanwhile one thread per worker polls `/healthz` every `poll_every` seconds over a keep-alive connection
pinned to that worker (connections are matched to worker pids through /proc, so a stalled worker cannot
hide behind an idle one), and a sampler reads each worker's RSS from /proc. It prints each hostile
request's status and time, `/healthz` p50/p99/max per worker, peak RSS against the ceiling and the
server log's error lines, and fails (exit code 1) when a hostile request is not answered with a 4xx, a
worker's `/healthz` p99 reaches the bar, a worker's RSS passes the ceiling or the log has a traceback.
Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import multiprocessing
import os
import secrets
import select
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from training.loadtest import DEMO_KB, LoadTestError, Server, _check, _free_port, _legacy_kb

Say = Callable[[str], None]
MB = 1024 * 1024


@dataclass
class HostileConfig:
    workers: int = 2
    scale: float = 1.0  # multiplies the payload sizes (rows, megabytes); the JSON depth is not scaled
    rss_ceiling_mb: float = 600.0  # per worker
    healthz_p99_ms: float = 100.0  # per worker, while the hostile requests run
    poll_every: float = 0.02
    idle_seconds: float = 3.0  # /healthz measured with nothing else going on, for comparison
    server_env: dict[str, str] = field(default_factory=dict)  # e.g. lower KEFU_KB_* limits for a test
    startup_timeout: float = 180.0
    request_timeout: float = 300.0


@dataclass
class Outcome:
    name: str
    status: int | None  # None: no HTTP answer (connection error)
    seconds: float
    sent_bytes: int
    detail: str
    expect_4xx: bool = True
    window: tuple[float, float] = (0.0, 0.0)  # wall-clock start and end
    healthz_max_ms: float | None = None  # slowest /healthz poll (any worker) overlapping the request

    @property
    def ok(self) -> bool:
        if self.status is None:
            return False
        return 400 <= self.status < 500 if self.expect_4xx else self.status == 200


@dataclass
class HostileReport:
    outcomes: list[Outcome] = field(default_factory=list)
    healthz_ms: dict[int, list[float]] = field(default_factory=dict)  # worker pid -> latencies
    idle_ms: dict[int, list[float]] = field(default_factory=dict)  # the same before the hostile requests
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    healthz_errors: dict[int, int] = field(default_factory=dict)
    rss_start_mb: dict[int, float] = field(default_factory=dict)
    rss_peak_mb: dict[int, float] = field(default_factory=dict)
    log_errors: list[str] = field(default_factory=list)
    tracebacks: int = 0
    rss_ceiling_mb: float = 0.0
    healthz_p99_ms: float = 0.0

    def p99(self, pid: int) -> float:
        values = self.healthz_ms.get(pid) or [float("inf")]
        return float(np.percentile(values, 99))

    def failures(self) -> list[str]:
        out = [f"{o.name}: answered {o.status}" for o in self.outcomes if not o.ok]
        for pid in self.healthz_ms:
            if self.p99(pid) >= self.healthz_p99_ms:
                out.append(f"worker {pid}: /healthz p99 {self.p99(pid):.0f} ms >= {self.healthz_p99_ms:g} ms")
            if self.healthz_errors.get(pid):
                out.append(f"worker {pid}: {self.healthz_errors[pid]} /healthz poll(s) failed")
        for pid, peak in self.rss_peak_mb.items():
            if peak >= self.rss_ceiling_mb:
                out.append(f"worker {pid}: peak RSS {peak:.0f} MB >= ceiling {self.rss_ceiling_mb:g} MB")
        if self.tracebacks:
            out.append(f"the server log has {self.tracebacks} traceback(s)")
        return out

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and bool(self.healthz_ms) and not self.failures()


# ------------------------------------------------------------------------------------------ payloads


def _xlsx_parts(sheet_rows: Iterator[bytes]) -> Iterator[tuple[str, Iterator[bytes]]]:
    """The members of a minimal one-sheet workbook; the sheet XML is produced row by row."""
    ns = b'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel = b"http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    pkg = b"http://schemas.openxmlformats.org/package/2006/relationships"
    yield (
        "[Content_Types].xml",
        iter(
            [
                b'<?xml version="1.0" encoding="UTF-8"?>'
                b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                b'<Default Extension="rels" '
                b'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
                b'<Default Extension="xml" ContentType="application/xml"/>'
                b'<Override PartName="/xl/workbook.xml" '
                b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
                b'<Override PartName="/xl/worksheets/sheet1.xml" '
                b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
                b"</Types>"
            ]
        ),
    )
    yield (
        "_rels/.rels",
        iter(
            [
                b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="' + pkg + b'">'
                b'<Relationship Id="rId1" Type="' + rel + b'/officeDocument" Target="xl/workbook.xml"/>'
                b"</Relationships>"
            ]
        ),
    )
    yield (
        "xl/workbook.xml",
        iter(
            [
                b'<?xml version="1.0" encoding="UTF-8"?><workbook ' + ns + b' xmlns:r="' + rel + b'">'
                b'<sheets><sheet name="KB" sheetId="1" r:id="rId1"/></sheets></workbook>'
            ]
        ),
    )
    yield (
        "xl/_rels/workbook.xml.rels",
        iter(
            [
                b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="' + pkg + b'">'
                b'<Relationship Id="rId1" Type="' + rel + b'/worksheet" Target="worksheets/sheet1.xml"/>'
                b"</Relationships>"
            ]
        ),
    )

    def sheet() -> Iterator[bytes]:
        yield b'<?xml version="1.0" encoding="UTF-8"?><worksheet ' + ns + b"><sheetData>"
        yield from sheet_rows
        yield b"</sheetData></worksheet>"

    yield "xl/worksheets/sheet1.xml", sheet()


def _inline(text: str) -> bytes:
    # no r="A1" references (they are optional): identical rows compress best
    return f'<c t="inlineStr"><is><t>{text}</t></is></c>'.encode()


def xlsx_bomb(rows: int, wide: bool = True) -> bytes:
    """A workbook of `rows` identical inline-string rows: ~235 bytes of sheet XML each when `wide`, else ~50.

    Deflate packs the repeated XML ~1000:1, so 425,000 wide rows (100 MB of XML) weigh a few hundred KB.
    """
    filler = "很" * 16
    row = b"<row>" + _inline("e") + _inline(f"问题{filler}") + _inline(f"答案{filler}") if wide else b""
    row = row + b"</row>" if wide else b"<row>" + _inline("x") + b"</row>"
    header = b"<row>" + _inline("id") + _inline("question") + _inline("answer") + b"</row>"
    per_block = 1000

    def sheet_rows() -> Iterator[bytes]:
        yield header
        left = rows - 1
        block = row * per_block
        while left > 0:
            yield block if left >= per_block else row * left
            left -= per_block

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, chunks in _xlsx_parts(sheet_rows()):
            with z.open(name, "w", force_zip64=True) as member:
                for chunk in chunks:
                    member.write(chunk)
    return out.getvalue()


def understate_sizes(xlsx: bytes, size: int = 1024) -> bytes:
    """The same archive with every member's uncompressed size (local and central headers) set to `size`.

    A reader that trusted the headers as a check but inflated past them would be fooled; zipfile stops
    at the declared size and fails the CRC check instead.
    """
    data = bytearray(xlsx)
    with zipfile.ZipFile(io.BytesIO(xlsx)) as z:
        infos = z.infolist()
    for info in infos:
        local = info.header_offset
        name_len, extra_len = int.from_bytes(data[local + 26 : local + 28], "little"), 0
        extra_len = int.from_bytes(data[local + 28 : local + 30], "little")
        _set_size(data, local + 22, local + 30 + name_len, extra_len, size)
    central = data.find(b"PK\x01\x02")
    while central != -1:
        name_len = int.from_bytes(data[central + 28 : central + 30], "little")
        extra_len = int.from_bytes(data[central + 30 : central + 32], "little")
        _set_size(data, central + 24, central + 46 + name_len, extra_len, size)
        central = data.find(b"PK\x01\x02", central + 46)
    return bytes(data)


def _set_size(data: bytearray, field_at: int, extra_at: int, extra_len: int, size: int) -> None:
    """Write the uncompressed size into the 32-bit field, or into the zip64 extra field when it is used."""
    if int.from_bytes(data[field_at : field_at + 4], "little") != 0xFFFFFFFF:
        data[field_at : field_at + 4] = size.to_bytes(4, "little")
        return
    at = extra_at
    while at < extra_at + extra_len:
        tag = int.from_bytes(data[at : at + 2], "little")
        length = int.from_bytes(data[at + 2 : at + 4], "little")
        if tag == 0x0001:  # zip64: uncompressed size comes first
            data[at + 4 : at + 12] = size.to_bytes(8, "little")
            return
        at += 4 + length


def csv_rows(rows: int) -> bytes:
    """A valid-looking KB CSV with `rows` entries (~60 bytes each)."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "question", "answer"])
    for n in range(rows):
        w.writerow([f"e{n}", f"第{n}个问题怎么办", f"第{n}个答案在这里"])
    return out.getvalue().encode("utf-8")


def deep_json(depth: int = 200_000) -> bytes:
    return b"[" * depth


def big_json_chunks(total: int, chunk: int = MB) -> Iterator[bytes]:
    """A JSON object of `total` bytes with one huge string value, produced a chunk at a time."""
    head, tail = b'{"app_key":"x","text":"', b'"}'
    yield head
    block = b"a" * chunk
    left = total - len(head) - len(tail)
    while left > 0:
        yield block[: min(chunk, left)]
        left -= chunk
    yield tail


def multipart_with_file() -> tuple[bytes, str]:
    """A JD push as multipart/form-data whose `text` is a file part."""
    boundary = "kefu-hostile-" + secrets.token_hex(6)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="app_key"\r\n\r\nx\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n" + "x" * 1000 + "\r\n",
        f"--{boundary}--\r\n",
    ]
    return "".join(parts).encode(), f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------------------ raw sending


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether `sock` has something to read within `timeout` seconds. poll, not select: select refuses
    descriptors from 1024 up, which a process holding many files and connections (a test run) reaches."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def send_streamed(
    url: str,
    path: str,
    chunks: Iterator[bytes],
    *,
    content_type: str,
    length: int | None,
    headers: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> tuple[int | None, int, str]:
    """POST a body a chunk at a time (chunked when `length` is None); stop sending once an answer arrives.

    Returns (status or None, body bytes sent, answer text). A server that answers before reading the
    whole body is what is being tested, so an answer is looked for before every chunk.
    """
    host, port = url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}"]
    head.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sent = 0
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        _readable(sock, 0.2)  # a server may refuse on the headers alone
        try:
            for chunk in chunks:
                if _readable(sock, 0):
                    break
                sock.sendall(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                if length is None:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed; the answer is read below
        try:
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status, sent, response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as e:
            return None, sent, f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------------------------------ workers


def worker_pids(master: int, workers: int) -> list[int]:
    """uvicorn's worker processes (the master itself when it runs a single worker)."""
    if workers <= 1:
        return [master]
    children: list[int] = []
    for task in Path(f"/proc/{master}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return sorted(p for p in children if b"spawn_main" in _cmdline(p))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def socket_owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The worker holding the server side of the connection 127.0.0.1:client_port -> server_port."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local_port = int(parts[1].split(":")[1], 16)
        remote_port = int(parts[2].split(":")[1], 16)
        if local_port == server_port and remote_port == client_port:
            inode = parts[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return pid
    return None


def _pin(port: int, pids: list[int], attempts: int = 400) -> dict[int, http.client.HTTPConnection]:
    """Open connections until every worker holds one (the kernel picks the worker on accept)."""
    pinned: dict[int, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    try:
        for _ in range(attempts):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            assert conn.sock is not None
            owner = socket_owner(port, conn.sock.getsockname()[1], pids)
            if owner is not None and owner not in pinned:
                pinned[owner] = conn
                if len(pinned) == len(pids):
                    return pinned
            else:
                spare.append(conn)  # kept open a while, so the next accept may go elsewhere
            time.sleep(0.01)
    finally:
        for conn in spare:
            conn.close()
    for conn in pinned.values():
        conn.close()
    raise LoadTestError(f"could not open a connection to every worker (reached {sorted(pinned)})")


def _poll(
    conn: http.client.HTTPConnection,
    every: float,
    stop: Any,
    out: list[tuple[float, float]],
    errors: list[float],
) -> None:
    """Poll until `stop`; (wall-clock start, milliseconds) per answer, wall-clock start per failure."""
    while not stop.is_set():
        started, t0 = time.time(), time.perf_counter()
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        ms = (time.perf_counter() - t0) * 1000
        if ok:
            out.append((started, ms))
        else:
            errors.append(started)
            conn.close()  # reconnects on the next request, maybe to another worker: counted as errors
        stop.wait(max(0.0, every - ms / 1000))


def _poller_main(port: int, pids: list[int], every: float, ready: Any, stop: Any, send: Any) -> None:
    """The poller process: one thread per pinned connection; the samples go back through `send`."""
    try:
        connections = _pin(port, pids)
    except (LoadTestError, OSError, http.client.HTTPException) as e:
        send.send(("error", str(e)))
        ready.set()
        return
    ready.set()
    samples: dict[int, list[tuple[float, float]]] = {pid: [] for pid in pids}
    errors: dict[int, list[float]] = {pid: [] for pid in pids}
    threads = [
        threading.Thread(target=_poll, args=(conn, every, stop, samples[pid], errors[pid]))
        for pid, conn in connections.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    send.send(("ok", samples, errors))


class HealthPoller:
    """GET /healthz every `every` seconds over one keep-alive connection per worker, from its own process.

    A separate process, so building and sending the payloads here cannot delay the polls (the GIL).
    """

    def __init__(self, port: int, pids: list[int], every: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.stop = ctx.Event(), ctx.Event()
        self.results, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=_poller_main,
            args=(port, pids, every, self.ready, self.stop, send),
            name="kefu-hostile-healthz",
            daemon=True,
        )
        self.samples: dict[int, list[tuple[float, float]]] = {}
        self.errors: dict[int, list[float]] = {}

    def __enter__(self) -> HealthPoller:
        self.proc.start()
        if not self.ready.wait(120):
            self.proc.kill()
            raise LoadTestError("the /healthz poller did not start")
        if self.results.poll():
            _, message = self.results.recv()
            self.proc.join()
            raise LoadTestError(message)
        return self

    def window(self, start: float, end: float) -> tuple[dict[int, list[float]], dict[int, int]]:
        """Latencies (ms) and failure counts per worker of the polls started between two wall-clock times."""
        latencies = {pid: [ms for t, ms in v if start <= t <= end] for pid, v in self.samples.items()}
        errors = {pid: sum(start <= t <= end for t in v) for pid, v in self.errors.items()}
        return latencies, errors

    def slowest_overlapping(self, start: float, end: float) -> float | None:
        """The slowest poll (ms, any worker) that was in flight at some point between two wall-clock times."""
        hits = [ms for v in self.samples.values() for t, ms in v if t <= end and t + ms / 1000 >= start]
        return max(hits, default=None)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.results.poll(60):
            _, self.samples, self.errors = self.results.recv()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


class RssSampler:
    def __init__(self, pids: list[int], every: float = 0.05) -> None:
        self.pids, self.every = pids, every
        self.start = {pid: rss_mb(pid) for pid in pids}
        self.peak = dict(self.start)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            for pid in self.pids:
                with contextlib.suppress(OSError):
                    self.peak[pid] = max(self.peak[pid], rss_mb(pid))

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# ------------------------------------------------------------------------------------------ the run


def _upload(
    url: str, shop: str, key: dict[str, str], name: str, data: bytes, timeout: float
) -> httpx.Response:
    return httpx.post(f"{url}/v1/shops/{shop}/kb", headers=key, files={"file": (name, data)}, timeout=timeout)


def _detail(text: str) -> str:
    return " ".join(text.split())[:110]


def upload_payloads(scale: float) -> list[tuple[str, str, bytes]]:
    """(label, file name, bytes) of the hostile KB files, at `scale` times the sizes in the issue."""
    rows = int(425_000 * scale)
    bomb = xlsx_bomb(rows)
    return [
        (f"xlsx {rows:,} rows, {_inflated(bomb) / MB:.0f} MB XML", "bomb.xlsx", bomb),
        (f"xlsx {rows:,} short rows", "rows.xlsx", xlsx_bomb(rows, wide=False)),
        ("xlsx, sizes understated", "liar.xlsx", understate_sizes(bomb)),
        (f"csv {int(200_000 * scale):,} rows", "rows.csv", csv_rows(int(200_000 * scale))),
        ("json KB, [ x 200,000", "deep.json", deep_json()),
    ]


def _inflated(xlsx: bytes) -> int:
    with zipfile.ZipFile(io.BytesIO(xlsx)) as z:
        return sum(i.file_size for i in z.infolist())


def hostile_requests(
    url: str, shop: str, key: dict[str, str], cfg: HostileConfig, uploads: list[tuple[str, str, bytes]]
) -> Iterator[Outcome]:
    """Send each hostile request and yield what came back."""
    s = cfg.scale
    for label, name, data in uploads:
        t0 = time.perf_counter()
        try:
            r = _upload(url, shop, key, name, data, cfg.request_timeout)
            yield Outcome(label, r.status_code, time.perf_counter() - t0, len(data), _detail(r.text))
        except httpx.HTTPError as e:
            yield Outcome(label, None, time.perf_counter() - t0, len(data), f"{type(e).__name__}: {e}")

    big = int(200 * MB * s)
    boundary = "kefu-hostile-" + secrets.token_hex(6)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    streamed: list[tuple[str, str, Callable[[], Iterator[bytes]], str, int | None, dict[str, str]]] = [
        (
            f"KB upload of {big / MB:.0f} MB",
            f"/v1/shops/{shop}/kb",
            lambda: iter([head, *big_json_chunks(big), f"\r\n--{boundary}--\r\n".encode()]),
            f"multipart/form-data; boundary={boundary}",
            len(head) + big + len(f"\r\n--{boundary}--\r\n"),
            key,
        ),
        (
            f"JD push, {big / MB:.0f} MB JSON",
            f"/jd/{shop}/messages",
            lambda: big_json_chunks(big),
            "application/json",
            big,
            {},
        ),
        (
            f"JD push, {big / MB:.0f} MB JSON chunked",
            f"/jd/{shop}/messages",
            lambda: big_json_chunks(big),
            "application/json",
            None,
            {},
        ),
    ]
    for label, path, chunks, content_type, length, headers in streamed:
        t0 = time.perf_counter()
        status, sent, text = send_streamed(
            url,
            path,
            chunks(),
            content_type=content_type,
            length=length,
            headers=headers,
            timeout=cfg.request_timeout,
        )
        yield Outcome(label, status, time.perf_counter() - t0, sent, _detail(text))

    body, content_type = multipart_with_file()
    small: list[tuple[str, bytes, str]] = [
        ("JD push, [ x 200,000", deep_json(), "application/json"),
        ("JD push, multipart file part", body, content_type),
    ]
    for label, payload, ctype in small:
        t0 = time.perf_counter()
        try:
            r = httpx.post(
                f"{url}/jd/{shop}/messages",
                content=payload,
                headers={"Content-Type": ctype},
                timeout=cfg.request_timeout,
            )
            yield Outcome(label, r.status_code, time.perf_counter() - t0, len(payload), _detail(r.text))
        except httpx.HTTPError as e:
            yield Outcome(label, None, time.perf_counter() - t0, len(payload), f"{type(e).__name__}: {e}")


def run(cfg: HostileConfig, say: Say = print) -> HostileReport:
    """Start the workers, send the hostile requests while measuring, stop; LoadTestError if it cannot run."""
    from cryptography.fernet import Fernet

    report = HostileReport(rss_ceiling_mb=cfg.rss_ceiling_mb, healthz_p99_ms=cfg.healthz_p99_ms)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kefu-hostile-")))
        (tmp / "data").mkdir()
        (tmp / "prometheus").mkdir()
        admin = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "KEFU_DATABASE_URL": f"sqlite:///{tmp / 'kefu.db'}",
            "KEFU_DATA_DIR": str(tmp / "data"),
            "KEFU_ADMIN_TOKEN": admin,
            "KEFU_SECRET_KEY": Fernet.generate_key().decode(),
            "KEFU_DENSE": "false",
            "KEFU_KB_PATH": str(_legacy_kb(DEMO_KB, tmp / "legacy-kb.csv")),
            "KEFU_MODEL_PATH": str(tmp / "legacy-model"),
            "KEFU_EVALUATION_PULL_INTERVAL": "0",
            "KEFU_LOG_LEVEL": "INFO",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
            **cfg.server_env,
        }
        env.pop("KEFU_REDIS_URL", None)
        # one worker creates the schema first: two migrating a new SQLite file at once would collide
        from api.db.migrate import upgrade
        from api.db.session import Database

        db = Database(env["KEFU_DATABASE_URL"])
        upgrade(db.engine)
        db.engine.dispose()

        port = _free_port()
        say(f"kefu hostile: {cfg.workers} uvicorn workers on SQLite, payload scale {cfg.scale:g}")
        server = Server(env, port, cfg.workers, tmp / "server.log")
        stack.callback(server.stop)
        server.wait_healthy(cfg.startup_timeout)
        pids = worker_pids(server.proc.pid, cfg.workers)
        if len(pids) != cfg.workers:
            raise LoadTestError(f"expected {cfg.workers} worker processes, found {pids}")

        shop = f"hostile-{secrets.token_hex(3)}"
        r = httpx.post(
            f"{server.url}/v1/admin/shops",
            json={"id": shop, "name": "hostile"},
            headers={"X-Admin-Token": admin},
            timeout=30,
        )
        key = {"X-API-Key": _check(r, 201)["api_key"]}
        t0 = time.perf_counter()
        r = _upload(server.url, shop, key, "kb.csv", DEMO_KB.read_bytes(), cfg.request_timeout)
        report.outcomes.append(
            Outcome(
                "control: the demo KB",
                r.status_code,
                time.perf_counter() - t0,
                len(DEMO_KB.read_bytes()),
                _detail(r.text),
                expect_4xx=False,
            )
        )

        say("building the payloads")
        uploads = upload_payloads(cfg.scale)
        with HealthPoller(port, pids, cfg.poll_every) as poller, RssSampler(pids) as rss:
            idle_start = time.time()
            time.sleep(cfg.idle_seconds)
            hostile_start = time.time()
            for outcome in hostile_requests(server.url, shop, key, cfg, uploads):
                ended = time.time()
                outcome.window = (ended - outcome.seconds, ended)
                report.outcomes.append(outcome)
                say(f"  {outcome.name}: {outcome.status} in {outcome.seconds:.2f} s")
            hostile_end = time.time()
            report.load_average = os.getloadavg()
        report.idle_ms, _ = poller.window(idle_start, hostile_start)
        report.healthz_ms, report.healthz_errors = poller.window(hostile_start, hostile_end)
        for o in report.outcomes:
            o.healthz_max_ms = poller.slowest_overlapping(*o.window)
        report.rss_start_mb, report.rss_peak_mb = rss.start, rss.peak
        log = server.log_path.read_text("utf-8", errors="replace").splitlines()
        report.log_errors = [line for line in log if " ERROR " in line or "CRITICAL" in line]
        report.tracebacks = sum("Traceback" in line for line in log)
    print_report(report, cfg, say)
    return report


def print_report(report: HostileReport, cfg: HostileConfig, say: Say) -> None:
    say("")
    say(f"{'request':<32} {'status':>6} {'seconds':>7} {'sent':>12} {'healthz max':>11}  answer")
    for o in report.outcomes:
        mark = "" if o.ok else "  <-- FAIL"
        slowest = "-" if o.healthz_max_ms is None else f"{o.healthz_max_ms:.0f} ms"
        say(
            f"{o.name:<32} {o.status!s:>6} {o.seconds:>7.2f} {o.sent_bytes:>12,} {slowest:>11}  "
            f"{o.detail[:90]}{mark}"
        )
    say("")
    say(f"/healthz every {cfg.poll_every * 1000:.0f} ms on a connection pinned to each worker:")
    for pid, values in report.healthz_ms.items():
        say(f"  worker {pid} idle    {_latency(report.idle_ms.get(pid, []))}")
        say(
            f"  worker {pid} hostile {_latency(values)}, failed {report.healthz_errors.get(pid, 0)} "
            f"(bar: p99 < {cfg.healthz_p99_ms:g} ms)"
        )
    load = report.load_average
    say(f"  host load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    say("RSS per worker:")
    for pid, peak in report.rss_peak_mb.items():
        say(
            f"  worker {pid}: {report.rss_start_mb.get(pid, 0):.0f} MB at the start, peak {peak:.0f} MB "
            f"(ceiling {cfg.rss_ceiling_mb:g} MB)"
        )
    say(f"server log: {len(report.log_errors)} error line(s), {report.tracebacks} traceback(s)")
    for line in report.log_errors[:10]:
        say(f"  {line[:200]}")
    for failure in report.failures():
        say(f"FAIL: {failure}")
    say(f"verdict: {'OK' if report.ok else 'FAIL'}")


def _latency(values: list[float]) -> str:
    if not values:
        return "no successful poll"
    p50, p99 = np.percentile(values, [50, 99])
    return f"{len(values):4d} polls: p50 {p50:6.1f} ms, p99 {p99:6.1f} ms, max {max(values):6.1f} ms"


def main(config: HostileConfig | None = None, say: Say | None = None) -> int:
    """Run it and print the report; 0 on OK, 1 on FAIL, 2 when it could not run."""
    say = say or (lambda s: print(s, flush=True))
    try:
        report = run(config or HostileConfig(), say)
    except LoadTestError as e:
        say(f"error: {e}")
        say("verdict: FAIL")
        return 2
    return 0 if report.ok else 1
