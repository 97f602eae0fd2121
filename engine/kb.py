"""Knowledge-base (FAQ) model, loading, validation and export.

Merchants keep their FAQ in Excel or in CSV exported from Chinese Excel, so the
loader is forgiving about *format* (encodings, Chinese headers, date styles)
and strict about *content*: every problem is reported at once, located by the
row number the merchant sees, and a KB with any problem is rejected as a whole
so that a half-loaded KB never goes live.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import charset_normalizer
import openpyxl
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import from_excel

from engine.cells import escape_cell, unescape_cell
from engine.normalize import normalize

__all__ = [
    "ACTIONS",
    "EXTRA_COLUMNS",
    "FIELD_LIMITS",
    "KB_COLUMNS",
    "MAX_ANSWER_CHARS",
    "MAX_CATEGORY_CHARS",
    "MAX_ID_CHARS",
    "MAX_QUESTION_CHARS",
    "KBEntries",
    "KBEntry",
    "KBIssue",
    "KBTooLarge",
    "KBValidationError",
    "ReadLimits",
    "dump_kb",
    "kb_hash",
    "load_kb",
    "read_rows",
]

KB_COLUMNS = (
    "id",
    "question",
    "similar",
    "answer",
    "category",
    "valid_from",
    "valid_to",
    "enabled",
)
# Optional columns for conversations beyond the FAQ. They are written (files) and hashed (to_dict) only when
# an entry uses them, so a KB without them keeps its files and its kb_hash.
EXTRA_COLUMNS = ("action", "notify", "answer_variants")
REQUIRED_COLUMNS = ("id", "question", "answer")
# The one source of the size limits, whichever way a KB comes in (file upload of any format, the entry
# API, `kefu build`); the API schemas use the same constants. A question longer than a customer message
# can never be matched whole, and the id/category limits are the database column sizes.
MAX_ID_CHARS = 200
MAX_QUESTION_CHARS = 2000  # the standard question and each paraphrase
MAX_ANSWER_CHARS = 20000
MAX_CATEGORY_CHARS = 200
FIELD_LIMITS = {
    "id": MAX_ID_CHARS,
    "question": MAX_QUESTION_CHARS,
    "similar": MAX_QUESTION_CHARS,
    "answer": MAX_ANSWER_CHARS,
    "category": MAX_CATEGORY_CHARS,
}

# Dynamic entries: an action names a lookup (api/jd/orders.py) and the answer is a template whose
# {placeholders} are filled from it. Every action reads the order first (its owner is checked).
ORDER_FIELDS = ("order.id", "order.state", "order.amount", "order.created")
ACTIONS: dict[str, tuple[str, ...]] = {
    "order_status": ORDER_FIELDS,
    "logistics": (
        *ORDER_FIELDS,
        "logistics.company",
        "logistics.waybill",
        "logistics.latest",
        "logistics.time",
    ),
    "refund_status": (*ORDER_FIELDS, "refund.state", "refund.amount", "refund.time"),
}
# what merchants may type instead of an action's name
_ACTION_ALIASES = {
    "订单状态": "order_status",
    "订单查询": "order_status",
    "物流": "logistics",
    "物流查询": "logistics",
    "退款": "refund_status",
    "退款进度": "refund_status",
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)\.([A-Za-z_]+)\}")
_PLACEHOLDER_FAMILIES = frozenset({"order", "logistics", "refund"})
# answer variants in one cell: "||" (or the full-width ｜｜ a Chinese IME types); a single "|" stays text
_VARIANT_SEPARATORS = re.compile(r"\|\||｜｜")
SUPPORTED_SUFFIXES = (".csv", ".xlsx", ".json", ".jsonl")
SHANGHAI = ZoneInfo("Asia/Shanghai")

_IN_MEMORY = "<entries>"
_MAX_LISTED_ISSUES = 200
_QUOTE_LIMIT = 50
_ALIASES = {
    "编号": "id",
    "标准问题": "question",
    "问题": "question",
    "相似问题": "similar",
    "相似问法": "similar",
    "答案": "answer",
    "回答": "answer",
    "分类": "category",
    "类别": "category",
    "生效时间": "valid_from",
    "生效日期": "valid_from",
    "开始时间": "valid_from",
    "起始时间": "valid_from",
    "失效时间": "valid_to",
    "失效日期": "valid_to",
    "结束时间": "valid_to",
    "有效期至": "valid_to",
    "截止时间": "valid_to",
    "截止日期": "valid_to",
    "启用": "enabled",
    "是否启用": "enabled",
    "动作": "action",
    "动态查询": "action",
    "通知人工": "notify",
    "备选答案": "answer_variants",
    "答案变体": "answer_variants",
}
# Numbered paraphrase columns (相似问题1, 相似问题2, similar_3 ...): merged into `similar` in column order.
_NUMBERED_SIMILAR = re.compile(r"(?:相似问题|相似问法|similar)[\s_-]*\d+")
# Every header name a KB column may have, for "did you mean" hints on the others.
_KNOWN_HEADERS = (*KB_COLUMNS, *EXTRA_COLUMNS, *_ALIASES)
_MAX_LISTED_HIDDEN_ROWS = 20
# Cell values Excel shows for a formula it cannot compute (openpyxl: cell.data_type == "e").
_EXCEL_ERROR_HINT = "(a broken formula); put the text itself in the cell"
_TRUE_WORDS = frozenset({"true", "1", "yes", "y", "是", "启用"})
_FALSE_WORDS = frozenset({"false", "0", "no", "n", "否", "停用", "禁用"})
_GB_CODECS = frozenset({"gb2312", "gbk", "gb18030"})
# Full-width ｜ is what a Chinese IME types for "|", so it separates paraphrases too.
_SIMILAR_SEPARATORS = re.compile(r"\r\n|[\r\n|｜]")
# Control characters are invisible in a spreadsheet and cannot be stored in .xlsx.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# Invisible characters dropped from every cell: a byte-order mark in the middle of a file (concatenated
# exports) or pasted zero-width spaces would otherwise sit inside ids and questions, where nobody sees
# them and nothing matches them. (Zero-width joiners stay: emoji sequences in answers need them.)
_INVISIBLE = re.compile("[\ufeff\u200b\u2060\u180e]")
# Ids and categories are keys, not prose: every format character (joiners, bidi marks) goes.
_FORMAT_CHARS = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]")
_CHINESE_DATE = re.compile(r"(\d{4})年(\d{1,2})月(\d{1,2})日")
_DATE_TEXT = re.compile(
    r"(?P<y>\d{4})(?P<sep>[-/])(?P<mo>\d{1,2})(?P=sep)(?P<d>\d{1,2})"
    r"(?:(?:T|\s+)(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,6}))?)?"
    r"\s*(?P<tz>Z|[+-]\d{2}(?::?\d{2}){1,2})?)?"
)
# Number-format parts that display no field: quoted text, [colour]/[$-locale]/[DBNum1] tags (not the
# elapsed-time [h] [mm] [ss]), backslash-escaped characters and _x/*x padding.
_FORMAT_LITERALS = re.compile(r'"[^"]*"|\[(?![hms]+\])[^\]]*\]|\\.|[_*].', re.IGNORECASE)
_FORMAT_TIME = re.compile(r"[hs]", re.IGNORECASE)
# Built-in number formats of Chinese, Japanese and Korean Excel that show dates (ECMA-376 18.8.30).
_EAST_ASIAN_DATE_FORMAT_IDS = frozenset({27, 28, 29, 30, 31, 36, 50, 51, 52, 53, 54, 57, 58})
_DATE_FORMATS_HINT = "expected YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS]"
_ENABLED_HINT = "expected true/false, 1/0, yes/no, y/n, 是/否 or 启用/停用/禁用"
_NOTIFY_HINT = "expected true/false, 1/0, yes/no, y/n or 是/否"


@dataclass(frozen=True, slots=True)
class KBEntry:
    """One FAQ entry; build it through load_kb so fields are normalised and checked."""

    id: str
    question: str
    answer: str
    similar: tuple[str, ...] = ()
    category: str = ""
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    enabled: bool = True
    action: str = ""  # a key of ACTIONS: the answer is a template filled from that lookup
    notify: bool = False  # answer, and raise a task for the agents (改地址, 修改订单 ...)
    answer_variants: tuple[str, ...] = ()  # more wordings of the answer, rotated with it

    def answers(self) -> tuple[str, ...]:
        """The answer and its variants: what the bot may say for this entry."""
        return (self.answer, *self.answer_variants)

    def questions(self) -> tuple[str, ...]:
        """Every phrasing the matcher should index for this entry."""
        return (self.question, *self.similar)

    def is_active(self, now: datetime) -> bool:
        """Whether the entry may be served at ``now``.

        Naive ``now`` is refused: server-local time is usually UTC, which would
        shift every Beijing-time window by eight hours without any error.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware (e.g. datetime.now(ZoneInfo('Asia/Shanghai')))")
        if not self.enabled:
            return False
        if self.valid_from is not None and now < self.valid_from:
            return False
        return self.valid_to is None or now <= self.valid_to

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, in KB_COLUMNS order; also the canonical form for kb_hash.

        The EXTRA_COLUMNS appear only when set, so entries that do not use them hash as before.
        """
        data: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "similar": list(self.similar),
            "answer": self.answer,
            "category": self.category,
            "valid_from": _iso(self.valid_from),
            "valid_to": _iso(self.valid_to),
            "enabled": self.enabled,
        }
        if self.action:
            data["action"] = self.action
        if self.notify:
            data["notify"] = True
        if self.answer_variants:
            data["answer_variants"] = list(self.answer_variants)
        return data


@dataclass(frozen=True, slots=True)
class KBIssue:
    """One problem in a KB file, located the way the merchant sees the file."""

    source: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.row is not None:
            where += f" {_row_word(self.source)} {self.row}"
        if self.column is not None:
            where += f", column {self.column}"
        return f"{where}: {self.message}"


class KBEntries(list[KBEntry]):
    """What load_kb returns: the entries (a plain list to every caller), plus `warnings`.

    Warnings are KBIssues that do not stop the KB from loading but that the merchant should see: a
    column that is not a KB column (so its values are ignored), hidden rows, the sheet that was read,
    a paraphrase that was dropped. The attribute survives pickling (uploads are parsed in a child).
    """

    warnings: list[KBIssue]

    def __init__(self, entries: Iterable[KBEntry] = (), warnings: Iterable[KBIssue] = ()) -> None:
        super().__init__(entries)
        self.warnings = list(warnings)


class KBValidationError(ValueError):
    """Carries every problem found, so the merchant can fix the file in one pass.

    `warnings` holds what load_kb would also have warned about (e.g. the sheet that was read).
    """

    issues: list[KBIssue]
    warnings: list[KBIssue]

    def __init__(self, issues: Iterable[KBIssue], warnings: Iterable[KBIssue] = ()) -> None:
        self.issues = list(issues)
        self.warnings = list(warnings)
        super().__init__(self.issues)  # single arg keeps the error picklable (warnings go in __dict__)

    def __str__(self) -> str:
        count = len(self.issues)
        lines = [f"{count} problem{'' if count == 1 else 's'} in the knowledge base:"]
        lines += [f"  {issue}" for issue in self.issues[:_MAX_LISTED_ISSUES]]
        if count > _MAX_LISTED_ISSUES:
            lines.append(f"  ... and {count - _MAX_LISTED_ISSUES} more")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How much of a KB file is read before giving up; None means no limit.

    A merchant FAQ has hundreds to a few thousand entries. The limits stop a hostile or mistaken file
    (an .xlsx that inflates to gigabytes, a CSV with millions of rows) while it is streamed, before the
    records it would take are built, so one upload cannot exhaust a shared process's memory or time.
    `max_inflated_bytes` bounds the bytes parsed: the file itself for text formats, the sum of the
    members' uncompressed sizes for .xlsx.
    """

    max_rows: int | None = 50_000
    max_cells: int | None = 1_000_000
    max_inflated_bytes: int | None = 64 * 1024 * 1024


NO_LIMITS = ReadLimits(max_rows=None, max_cells=None, max_inflated_bytes=None)


class KBTooLarge(ValueError):
    """A KB file exceeds one of its ReadLimits: a refusal of the size, not a list of content issues."""

    def __init__(self, source: str, what: str, limit: int, found: str) -> None:
        self.source, self.what, self.limit, self.found = source, what, limit, found
        super().__init__(f"{source}: {found}; the limit is {limit:,} {what}")

    def __reduce__(self) -> tuple[type[KBTooLarge], tuple[str, str, int, str]]:
        # picklable with its fields: a KB may be read in another process (api.kb.parsing)
        return (KBTooLarge, (self.source, self.what, self.limit, self.found))


class _Problem(Exception):
    """Internal: a value or file is unusable; turned into a KBIssue by the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ExcelError(str):
    """An .xlsx cell holding an Excel error value (#REF!, #N/A ...): text to read_rows' callers, an
    issue in a KB."""

    __slots__ = ()


@dataclass(slots=True)
class Table:
    """Raw records read from a source, plus problems met while reading it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    issues: list[KBIssue] = field(default_factory=list)
    # problems of a KB only, not of read_rows' other tables (catalogs, query files): overlong CSV rows
    kb_issues: list[KBIssue] = field(default_factory=list)
    warnings: list[KBIssue] = field(default_factory=list)
    # a spreadsheet's header row: its number and (column index, text) of every non-blank header cell
    header_row: int | None = None
    header: list[tuple[int, str]] = field(default_factory=list)
    keyed: bool = False  # records keyed by the file's own names (JSON): unknown keys are warned about


# --------------------------------------------------------------------------- public API


def load_kb(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any] | KBEntry],
    *,
    source_name: str | None = None,
    limits: ReadLimits = NO_LIMITS,
) -> KBEntries:
    """Load and validate a whole KB; raise KBValidationError listing every problem.

    The result is a list of entries whose `warnings` attribute lists what loaded but deserves a look
    (ignored columns, hidden rows, dropped paraphrases ...). A file beyond `limits` raises KBTooLarge
    as soon as the reader gets there.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = source_name or path.name
        table = read_table(path, name, limits)
    elif isinstance(source, (Mapping, bytes, bytearray)):
        raise TypeError(
            "load_kb expects a file path or an iterable of entries, not a single mapping or bytes"
        )
    else:
        name = source_name or _IN_MEMORY
        table = _read_items(source, name)
    entries, issues, warnings = _validate(table, name)
    if issues:
        raise KBValidationError(issues, warnings)
    return KBEntries(entries, warnings)


def load_saved_kb(path: str | os.PathLike[str]) -> list[KBEntry]:
    """Entries from a .jsonl file that `dump_kb` wrote from checked entries (a saved model's own KB),
    read back as written: `load_kb` would validate every record again, about two minutes for a
    million entries on every model load. Dates go through the same parser as `load_kb`'s, so the
    entries are equal to what `load_kb` returns (tests/test_kb.py)."""
    entries: list[KBEntry] = []
    text = Path(path).read_text(encoding="utf-8")
    for d in json.loads("[" + ",".join(line for line in text.split("\n") if line) + "]"):
        start, end = d.get("valid_from"), d.get("valid_to")
        entries.append(
            KBEntry(
                id=d["id"],
                question=d["question"],
                answer=d["answer"],
                similar=tuple(d.get("similar", ())),
                category=d.get("category", ""),
                valid_from=None if start is None else _valid_from(start),
                valid_to=None if end is None else _valid_to(end),
                enabled=d.get("enabled", True),
                action=d.get("action", ""),
                notify=d.get("notify", False),
                answer_variants=tuple(d.get("answer_variants", ())),
            )
        )
    return entries


def read_rows(
    path: str | os.PathLike[str], *, limits: ReadLimits = NO_LIMITS
) -> tuple[list[dict[str, Any]], list[int]]:
    """Raw records (keyed by the file's own headers) and their merchant-visible row numbers."""
    file_path = Path(path)
    table = read_table(file_path, file_path.name, limits)
    if table.issues:
        raise KBValidationError(table.issues)
    return table.records, table.rows


def kb_hash(entries: Sequence[KBEntry]) -> str:
    """Order-sensitive fingerprint, e.g. to tell whether an index must be rebuilt."""
    payload = json.dumps([entry.to_dict() for entry in entries], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def dump_kb(entries: Iterable[KBEntry], path: str | os.PathLike[str]) -> None:
    """Write entries in the format given by the suffix; load_kb reads the file back unchanged.

    The file is replaced atomically so a crash never leaves a truncated (and
    possibly still valid, but shorter) KB behind.
    """
    target = Path(path)
    writer = _WRITERS.get(target.suffix.lower())
    if writer is None:
        raise KBValidationError([_suffix_issue(target)])
    items = list(entries)
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(descriptor)
    temp = Path(temp_name)
    try:
        writer(items, temp)
        if target.exists():
            shutil.copymode(target, temp)
        else:
            temp.chmod(0o644)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading


def read_table(path: Path, source: str, limits: ReadLimits) -> Table:
    """Read any supported file (CSV, XLSX, JSON, JSONL) into raw records; format problems become issues,
    a missing file raises. Public for readers of other tables in the same formats (query files)."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        return Table(issues=[_suffix_issue(path, source)])
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "knowledge base file not found", str(path))
    try:
        return reader(path, source, limits)
    except _Problem as problem:
        return Table(issues=[KBIssue(source, None, None, problem.message)])


def _suffix_issue(path: Path, source: str | None = None) -> KBIssue:
    suffix = path.suffix or "(none)"
    hint = "; save .xls workbooks as .xlsx" if path.suffix.lower() == ".xls" else ""
    message = f"unsupported file type '{suffix}' (supported: {', '.join(SUPPORTED_SUFFIXES)}){hint}"
    return KBIssue(source or path.name, None, None, message)


def _decode(data: bytes) -> str:
    """UTF-8 first (with or without BOM), then a guess biased towards GB18030."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    encoding = _guess_encoding(data)
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise _Problem(
            "could not detect the file encoding (tried UTF-8, GB18030 and auto-detection); save it as UTF-8"
        ) from exc


def _guess_encoding(data: bytes) -> str:
    """Any GB-family candidate wins: non-UTF-8 files from mainland merchants are
    GBK/GB18030, and charset-normalizer often ranks short GBK text as big5."""
    matches = charset_normalizer.from_bytes(data)
    candidates = [match.encoding for match in matches]
    if not candidates or any(_codec_name(name) in _GB_CODECS for name in candidates):
        return "gb18030"
    best = matches.best()
    return best.encoding if best is not None else "gb18030"


def _codec_name(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return name.lower()


def _read_bytes(path: Path, source: str, limits: ReadLimits) -> bytes:
    """The whole (text) file, refused before reading when it is larger than the limit."""
    _check_inflated(path.stat().st_size, source, limits)
    return path.read_bytes()


def _check_inflated(size: int, source: str, limits: ReadLimits) -> None:
    limit = limits.max_inflated_bytes
    if limit is not None and size > limit:
        raise KBTooLarge(source, "bytes", limit, f"its content is {size:,} bytes")


def _read_csv(path: Path, source: str, limits: ReadLimits) -> Table:
    text = _decode(_read_bytes(path, source, limits))
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, Sequence[str]]] = []
    try:
        # Records, not physical lines: a quoted newline stays inside one spreadsheet row.
        for number, cells in _limited(enumerate(reader, start=1), source, limits):
            rows.append((number, [unescape_cell(cell) for cell in cells]))
    except csv.Error as exc:
        table = _tabulate(rows, source, check_width=True)
        table.issues.append(KBIssue(source, len(rows) + 1, None, f"unreadable CSV row: {exc}"))
        return table
    table = _tabulate(rows, source, check_width=True)
    unclosed = bool(rows) and any("\n" in cell for cell in rows[-1][1]) and _ends_inside_quotes(text)
    if unclosed:
        table.issues.append(_unclosed_quote_issue(source, *rows[-1], dict(table.header)))
    table.warnings.extend(_joined_rows_warnings(rows[:-1] if unclosed else rows, table, source))
    return table


def _joined_rows_warnings(
    rows: Sequence[tuple[int, Sequence[str]]], table: Table, source: str
) -> list[KBIssue]:
    """Cells holding lines shaped like rows of their own: a quote that opens a cell and is closed only by a
    stray quote further down reads the rows between into that one cell, and their entries go missing
    without a word. A multi-line answer is normal, so it is a warning, and only for a line with exactly
    the header's number of comma-separated values, two of them filled."""
    if not table.header or table.header_row is None:
        return []
    width = table.header[-1][0] + 1
    if width < 2:
        return []
    names = dict(table.header)
    out = []
    for number, cells in rows:
        if number <= table.header_row:
            continue
        for i, cell in enumerate(cells):
            if "\n" not in cell:
                continue
            shaped = [line for line in cell.split("\n")[1:] if _row_shaped(line, width)]
            if shaped:
                out.append(
                    KBIssue(
                        source,
                        number,
                        names.get(i) or get_column_letter(i + 1),
                        f"this cell runs over {cell.count(chr(10)) + 1} lines, and {len(shaped)} of them "
                        f"look like rows of their own (as many comma-separated values as the header, "
                        f"such as {_quote(shaped[0])}): a double quote that opens the cell "
                        "and is closed only by a stray quote further down joins the rows between into it, "
                        "and their entries are missing; if so, close the quote after the cell's text",
                    )
                )
    return out


def _row_shaped(line: str, width: int) -> bool:
    fields = next(csv.reader([line]), [])
    return len(fields) == width and sum(1 for f in fields if f.strip()) >= 2


def _ends_inside_quotes(text: str) -> bool:
    """Whether the file ends inside a quoted cell: a double quote opened and never closed. The lenient
    reader then reads everything after it into that one cell, silently; the strict one says so."""
    try:
        for _ in csv.reader(io.StringIO(text, newline=""), strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _unclosed_quote_issue(source: str, number: int, cells: Sequence[str], names: dict[int, str]) -> KBIssue:
    """The cell an unclosed quote opened, with how many of the file's lines it swallowed."""
    index = next(i for i in range(len(cells) - 1, -1, -1) if "\n" in cells[i])
    lines = cells[index].rstrip("\n").count("\n")
    return KBIssue(
        source,
        number,
        names.get(index) or get_column_letter(index + 1),
        f'a double quote (") opens this cell and is never closed, so the rest of the file ({lines} more '
        "line(s)) was read into this one cell and its rows would be lost; close the quote after the "
        "cell's text, or remove it",
    )


class _SizeGuard:
    """Counts rows and cells as a reader produces them; raises KBTooLarge at the first limit crossed.

    Row numbers are the reader's own, blank rows included: parsing them costs time too.
    """

    def __init__(self, source: str, limits: ReadLimits) -> None:
        self.source, self.limits, self.cells = source, limits, 0

    def row(self, number: int, cells: int) -> None:
        max_rows, max_cells = self.limits.max_rows, self.limits.max_cells
        if max_rows is not None and number > max_rows:
            raise KBTooLarge(self.source, "rows", max_rows, f"it has more than {max_rows:,} rows")
        self.cells += cells
        if max_cells is not None and self.cells > max_cells:
            raise KBTooLarge(self.source, "cells", max_cells, f"it has more than {max_cells:,} cells")


def _limited(
    rows: Iterable[tuple[int, Sequence[Any]]], source: str, limits: ReadLimits
) -> Iterator[tuple[int, Sequence[Any]]]:
    """Pass spreadsheet rows through a _SizeGuard."""
    guard = _SizeGuard(source, limits)
    for number, cells in rows:
        guard.row(number, len(cells))
        yield number, cells


def _read_xlsx(path: Path, source: str, limits: ReadLimits) -> Table:
    _check_xlsx_inflated(path, source, limits)
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many unrelated types for damaged files
        raise _Problem(f"could not open the file as an .xlsx workbook ({type(exc).__name__}: {exc})") from exc
    try:
        sheet, note = _first_visible_sheet(workbook.worksheets)
        sheet.reset_dimensions()  # some exporters write wrong dimensions; read every row
        table = _tabulate(_limited(_xlsx_rows(sheet), source, limits), source)
        if note:
            table.warnings.append(KBIssue(source, None, None, note))
        hidden = sorted(set(_hidden_rows(sheet)).intersection(table.rows))
        if hidden:
            table.warnings.append(KBIssue(source, None, None, _hidden_rows_message(sheet.title, hidden)))
        return table
    finally:
        workbook.close()


def _first_visible_sheet(sheets: Sequence[Any]) -> tuple[Any, str]:
    """The worksheet a KB is read from (the first visible one), and a note naming it when the workbook
    has other sheets that hold something, or when hidden sheets before it were skipped."""
    if not sheets:
        raise _Problem("the workbook has no worksheet")
    visible = [sheet for sheet in sheets if sheet.sheet_state == "visible"]
    if not visible:
        names = ", ".join(_quote(sheet.title) for sheet in sheets)
        raise _Problem(f"every worksheet is hidden ({names}); unhide the sheet that holds the knowledge base")
    sheet = visible[0]
    skipped = [_quote(s.title) for s in sheets[: sheets.index(sheet)]]
    others = [_quote(s.title) for s in visible[1:] if not _looks_empty(s)]
    if not skipped and not others:
        return sheet, ""
    note = f"read sheet {_quote(sheet.title)}, the first visible one"
    if others:
        note += f"; other sheets ignored: {', '.join(others)}"
    if skipped:
        note += f"; hidden sheets skipped: {', '.join(skipped)}"
    return sheet, note


def _looks_empty(sheet: Any) -> bool:
    """Whether a read-only sheet's declared dimension is at most one cell (a new workbook's Sheet2)."""
    try:
        return bool(sheet.max_row is not None and sheet.max_row <= 1 and (sheet.max_column or 1) <= 1)
    except Exception:  # a damaged dimension: count the sheet as used
        return False


_ROW_START = re.compile(rb"<(?:[\w.-]+:)?row(?=[\s/>])([^>]*)>")
_ROW_NUMBER = re.compile(rb"""(?:^|\s)r\s*=\s*["'](\d+)["']""")
_ROW_HIDDEN = re.compile(rb"""(?:^|\s)hidden\s*=\s*["'](?:1|true)["']""")


def _hidden_rows(sheet: Any) -> list[int]:
    """Numbers of the rows a read-only sheet marks hidden (filtered out or hidden by hand).

    openpyxl's read-only sheets do not expose row_dimensions, so the <row> tags are scanned (a C-speed
    regex over the member, a chunk at a time); a sheet that cannot be scanned gives no rows.
    """
    hidden: list[int] = []
    number = 0
    carry = b""
    try:
        with sheet._get_source() as stream:
            while True:
                chunk = stream.read(1 << 20)
                data = carry + chunk
                # a tag is never split: from the last "<" on, the data waits for the next chunk
                cut = data.rfind(b"<") if chunk else -1
                if cut == -1:
                    cut = len(data)
                data, carry = data[:cut], data[cut:]
                for match in _ROW_START.finditer(data):
                    attrs = match[1]
                    given = _ROW_NUMBER.search(attrs)
                    number = int(given[1]) if given else number + 1
                    if _ROW_HIDDEN.search(attrs):
                        hidden.append(number)
                if not chunk:
                    return hidden
    except Exception:  # not a read-only sheet, or a damaged member (reported by the row reader)
        return []


def _hidden_rows_message(title: str, rows: Sequence[int]) -> str:
    listed = ", ".join(str(row) for row in rows[:_MAX_LISTED_HIDDEN_ROWS])
    more = f" and {len(rows) - _MAX_LISTED_HIDDEN_ROWS} more" if len(rows) > _MAX_LISTED_HIDDEN_ROWS else ""
    plural = "" if len(rows) == 1 else "s"
    return (
        f"sheet {_quote(title)} has {len(rows)} hidden row{plural} (hidden by a filter or by hand), read "
        f"like the others: row{plural} {listed}{more}; unhide them to check them, and delete any that "
        "should not be in the knowledge base"
    )


def _check_xlsx_inflated(path: Path, source: str, limits: ReadLimits) -> None:
    """Refuse a workbook over the limits before openpyxl parses it.

    First on the members' declared uncompressed sizes; then every member is inflated a chunk at a time
    and its row and cell elements counted (a C-speed scan, far cheaper than openpyxl, which without a
    <dimension> element parses a whole sheet just to size it). A member with more rows or cells than
    the limits refuses the workbook whichever sheet it is. zipfile never inflates past a declared size:
    a member that understates it stops there and fails its CRC check, reported as a damaged file.
    """
    limit = limits.max_inflated_bytes
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            size = sum(member.file_size for member in members)
            if limit is not None and size > limit:
                raise KBTooLarge(source, "bytes", limit, f"the workbook inflates to {size:,} bytes")
            if limits.max_rows is None and limits.max_cells is None:
                return
            for member in members:
                with archive.open(member) as stream:
                    _count_elements(stream, source, member.filename, limits)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, KBTooLarge):
            raise
        raise _Problem(f"could not open the file as an .xlsx workbook ({type(exc).__name__}: {exc})") from exc


_ROW_TAG = re.compile(rb"<(?:[\w.-]+:)?row[\s/>]")
_CELL_TAG = re.compile(rb"<(?:[\w.-]+:)?c[\s/>]")


def _count_elements(stream: Any, source: str, member: str, limits: ReadLimits) -> None:
    """Count <row> and <c> elements (any namespace prefix) in a member; KBTooLarge past a limit."""
    rows = cells = 0
    carry = b""
    while chunk := stream.read(1 << 20):
        data = carry + chunk
        cut = data.rfind(b"<")  # a tag is never split: the part from the last "<" waits for the next chunk
        if cut == -1:
            cut = len(data)
        data, carry = data[:cut], data[cut:]
        rows += len(_ROW_TAG.findall(data))
        cells += len(_CELL_TAG.findall(data))
        _check_counts(rows, cells, source, member, limits)
    rows += len(_ROW_TAG.findall(carry + b" "))
    cells += len(_CELL_TAG.findall(carry + b" "))
    _check_counts(rows, cells, source, member, limits)


def _check_counts(rows: int, cells: int, source: str, member: str, limits: ReadLimits) -> None:
    if limits.max_rows is not None and rows > limits.max_rows:
        raise KBTooLarge(source, "rows", limits.max_rows, f"{member} has more than {limits.max_rows:,} rows")
    if limits.max_cells is not None and cells > limits.max_cells:
        raise KBTooLarge(
            source, "cells", limits.max_cells, f"{member} has more than {limits.max_cells:,} cells"
        )


def _xlsx_rows(sheet: Any) -> Iterator[tuple[int, list[Any]]]:
    rows = enumerate(sheet.iter_rows(), start=1)
    while True:
        try:
            number, cells = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # damaged sheet XML or a member failing its CRC: a file problem
            raise _Problem(f"could not read the worksheet ({type(exc).__name__}: {exc})") from exc
        yield number, [_xlsx_value(cell) for cell in cells]


def _excel_error(cell: Any) -> ExcelError | None:
    """An error value (#REF!, #N/A ...) of a cell, or None."""
    if getattr(cell, "data_type", None) == "e" and cell.value is not None:
        return ExcelError(str(cell.value))
    return None


def _xlsx_value(cell: Any) -> Any:
    """A cell's value, with dates told apart from date-times as the merchant sees them.

    Excel has no date type, only numbers shown through a number format. A midnight whose format shows
    no time of day is a date, as the same text in a CSV is, so a date-only valid_to means the end of
    that day. A format that shows a time (even 0:00) gives an exact moment, like "2026-12-13 00:00"
    in a CSV; a value with a real time of day keeps it whatever the format shows.
    """
    error = _excel_error(cell)
    if error is not None:
        return error  # text to read_rows' callers as before; an issue in a KB (_parse_record)
    value = cell.value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and _east_asian_date(cell):
        try:
            value = from_excel(value, cell.parent.parent.epoch)
        except (OverflowError, ValueError):
            return cell.value  # reported as a bad date by the field parser
    midnight = isinstance(value, datetime) and value.time() == time.min
    if midnight and not _format_shows_time(cell.number_format):
        return value.date()
    return value


def _east_asian_date(cell: Any) -> bool:
    """Whether the cell uses a built-in Chinese/Japanese/Korean date format (ids 27-31, 36, 50-58).

    Chinese Excel saves 'yyyy"年"m"月"d"日"' as built-in id 31 without writing the format out, and
    openpyxl, which knows only the locale-neutral built-ins, hands such dates over as day numbers.
    """
    try:
        return int(cell.style_array.numFmtId) in _EAST_ASIAN_DATE_FORMAT_IDS
    except (AttributeError, IndexError, TypeError):  # empty cells have no style
        return False


def _format_shows_time(number_format: Any) -> bool:
    """Whether a number format displays a time of day (hours or seconds).

    openpyxl's is_datetime looks for lower-case letters in the raw format, so 'YYYY-MM-DD' counts as
    a time and '[$-x-sysdate]dddd, mmmm dd, yyyy' or '[$-zh-CN]yyyy"年"m"月"d"日"' (an "s" or "h"
    in a locale tag) as a date-time; dates in those formats ended a day early.
    """
    if not isinstance(number_format, str):
        return False
    code = _FORMAT_LITERALS.sub("", number_format).split(";", 1)[0]
    return _FORMAT_TIME.search(code) is not None


def _tabulate(rows: Iterable[tuple[int, Sequence[Any]]], source: str, *, check_width: bool = False) -> Table:
    """Turn spreadsheet rows into records; the header is the first non-empty row.

    With `check_width` (CSV), a row with more filled cells than the header is a KB issue: the cells past
    the header would be lost, which is what an unquoted comma inside a cell does.
    """
    table = Table()
    header: list[str | None] | None = None
    width = 0
    for number, cells in rows:
        if all(_is_blank(cell) for cell in cells):
            continue
        if header is None:
            header = _read_header(cells, number, source, table.issues)
            table.header_row = number
            table.header = [(i, str(cell).strip()) for i, cell in enumerate(cells) if not _is_blank(cell)]
            width = _filled_width(cells)
            continue
        if check_width and (filled := _filled_width(cells)) > width:
            table.kb_issues.append(KBIssue(source, number, None, _overlong_message(cells, filled, width)))
        record = {
            name: cells[i] if i < len(cells) else None for i, name in enumerate(header) if name is not None
        }
        if not _is_blank_record(record):
            table.records.append(record)
            table.rows.append(number)
    return table


def _filled_width(cells: Sequence[Any]) -> int:
    """The number of cells up to the last non-blank one (trailing empty cells do not count)."""
    for index in range(len(cells) - 1, -1, -1):
        if not _is_blank(cells[index]):
            return index + 1
    return 0


def _overlong_message(cells: Sequence[Any], filled: int, width: int) -> str:
    extra = next(cell for cell in cells[width:] if not _is_blank(cell))
    return (
        f"the row has {filled} cells but the header has {width} columns, so {_quote(extra)} and "
        f"what follows it would be lost; probably a comma inside a cell that is not quoted (put the "
        'cell in double quotes "...", or save the file from Excel as CSV)'
    )


def _read_header(cells: Sequence[Any], number: int, source: str, issues: list[KBIssue]) -> list[str | None]:
    """Header names per column (None = ignored); a KB column given twice is an issue."""
    names: list[str | None] = []
    first_seen: dict[str, tuple[int, str]] = {}
    for index, cell in enumerate(cells):
        name = "" if cell is None else str(cell).strip()
        canonical = _canonical_column(name)
        key = name if _is_numbered_similar(name) else canonical or name
        if not name or key in first_seen:
            names.append(None)
            if name and canonical is not None:
                first_index, first_name = first_seen[key]
                issues.append(
                    KBIssue(
                        source,
                        number,
                        canonical,
                        f"column '{canonical}' appears twice in the header "
                        f"({get_column_letter(first_index + 1)} '{first_name}' and "
                        f"{get_column_letter(index + 1)} '{name}'); keep only one",
                    )
                )
            continue
        first_seen[key] = (index, name)
        names.append(name)
    return names


_TOO_DEEP = "the JSON is nested too deeply to be a knowledge base (expected flat objects)"


def _read_json(path: Path, source: str, limits: ReadLimits) -> Table:
    text = _decode(_read_bytes(path, source, limits))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Problem(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:  # e.g. "[" x 200,000: the parser's recursion, not a crash
        raise _Problem(_TOO_DEEP) from exc
    if isinstance(data, dict) and "entries" in data:
        data = data["entries"]
    if not isinstance(data, list):
        raise _Problem(f'expected a JSON array of objects or {{"entries": [...]}}, got {_json_type(data)}')
    table = Table(keyed=True)
    guard = _SizeGuard(source, limits)
    for number, item in enumerate(data, start=1):
        guard.row(number, len(item) if isinstance(item, dict) else 1)
        _add_object(table, item, number, source)
    return table


def _read_jsonl(path: Path, source: str, limits: ReadLimits) -> Table:
    text = _decode(_read_bytes(path, source, limits))
    table = Table(keyed=True)
    guard = _SizeGuard(source, limits)
    # Split on "\n" only: str.splitlines() would also split on U+2028 inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.lstrip("\ufeff")  # concatenated files: each part may start with its own BOM
        if not line.strip():
            continue
        guard.row(number, 1)
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            message = f"invalid JSON ({exc.msg} at column {exc.colno})"
            table.issues.append(KBIssue(source, number, None, message))
            continue
        except RecursionError:
            table.issues.append(KBIssue(source, number, None, _TOO_DEEP))
            continue
        _add_object(table, item, number, source)
    return table


def _add_object(table: Table, item: Any, number: int, source: str) -> None:
    if not isinstance(item, dict):
        table.issues.append(KBIssue(source, number, None, f"expected a JSON object, got {_json_type(item)}"))
    elif not _is_blank_record(item):
        table.records.append(item)
        table.rows.append(number)


def _read_items(items: Iterable[Mapping[str, Any] | KBEntry], source: str) -> Table:
    table = Table()
    for number, item in enumerate(items, start=1):
        if isinstance(item, KBEntry):
            record: dict[str, Any] = {name: getattr(item, name) for name in (*KB_COLUMNS, *EXTRA_COLUMNS)}
        elif isinstance(item, Mapping):
            record = dict(item)
        else:
            message = f"expected a mapping or KBEntry, got {type(item).__name__}"
            table.issues.append(KBIssue(source, number, None, message))
            continue
        if not _is_blank_record(record):
            table.records.append(record)
            table.rows.append(number)
    return table


_READERS: dict[str, Callable[[Path, str, ReadLimits], Table]] = {
    ".csv": _read_csv,
    ".xlsx": _read_xlsx,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
}


# --------------------------------------------------------------------------- validation


def _validate(table: Table, source: str) -> tuple[list[KBEntry], list[KBIssue], list[KBIssue]]:
    """Check every record and the cross-entry rules; entries are only usable if no issues.

    Returns the entries, the issues and the warnings (what loads but the merchant should look at).
    """
    issues = [*table.issues, *table.kb_issues]
    warnings = [*table.warnings, *_unknown_column_warnings(table, source)]
    records = [
        _canonical_record(record, row, source, issues)
        for record, row in zip(table.records, table.rows, strict=True)
    ]
    present = {column for record in records for column in record}
    missing = [column for column in REQUIRED_COLUMNS if column not in present]
    if records:
        issues += [_missing_column_issue(column, source) for column in missing]
    elif not issues:
        issues.append(KBIssue(source, None, None, "the knowledge base has no entries"))

    entries: list[KBEntry] = []
    id_rows: dict[str, int] = {}
    question_owners: dict[str, tuple[str, int, str]] = {}
    match_owners: dict[str, tuple[str, int, str, str]] = {}
    for record, row in zip(records, table.rows, strict=True):
        fields, row_issues = _parse_record(record, row, source, skip=missing, warnings=warnings)
        row_issues += _check_duplicate_id(fields, row, source, id_rows)
        row_issues += _check_duplicate_questions(fields, row, source, question_owners)
        warnings += _check_matcher_duplicates(fields, row, source, match_owners)
        issues += row_issues
        if not row_issues and not missing:
            entries.append(KBEntry(**fields))
    issues.sort(key=lambda issue: (issue.row is not None, issue.row or 0))
    warnings.sort(key=lambda issue: (issue.row is not None, issue.row or 0))
    return entries, issues, warnings


def _unknown_column_warnings(table: Table, source: str) -> list[KBIssue]:
    """One warning per header (spreadsheet) or key (JSON) that is not a KB column: its values are
    ignored, which merchants want for a notes column but not for a misspelt valid_to."""
    warnings: list[KBIssue] = []
    if table.header_row is not None:
        for index, name in table.header:
            if _canonical_column(name) is None:
                letter = get_column_letter(index + 1)
                message = _unknown_column_message(name, "its values are ignored")
                warnings.append(KBIssue(source, table.header_row, letter, message))
    elif table.keyed:
        first: dict[str, int] = {}
        counts: dict[str, int] = {}
        for record, row in zip(table.records, table.rows, strict=True):
            for key in record:
                if isinstance(key, str) and _canonical_column(key) is None:
                    first.setdefault(key, row)
                    counts[key] = counts.get(key, 0) + 1
        for key, row in first.items():
            count = counts[key]
            where = f"{count} {_row_word(source)}{'' if count == 1 else 's'}"
            message = _unknown_column_message(key, f"it is ignored (in {where})")
            warnings.append(KBIssue(source, row, None, message))
    return warnings


def _unknown_column_message(name: str, effect: str) -> str:
    """'x' is not a KB column, with the closest known header name when one is close."""
    message = f"{_quote(name)} is not a knowledge-base column; {effect}"
    key = _INVISIBLE.sub("", name).strip().lower()
    close = difflib.get_close_matches(key, _KNOWN_HEADERS, n=1, cutoff=0.65)
    if close:
        target = _canonical_column(close[0])
        meaning = "" if target == close[0] else f", i.e. {target}"
        message += f" (did you mean {_quote(close[0])}{meaning}?)"
    return message


def _canonical_record(
    record: Mapping[Any, Any], row: int, source: str, issues: list[KBIssue]
) -> dict[str, Any]:
    """Map header aliases to KB_COLUMNS names and drop unknown columns (warned about by the caller).

    Numbered paraphrase columns (相似问题1, similar_2 ...) are merged into `similar`, in column order.
    """
    result: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in record.items():
        canonical = _canonical_column(key) if isinstance(key, str) else None
        if canonical is None:
            continue
        if canonical == "similar" and canonical in result and _numbered_pair(key, origin[canonical]):
            result[canonical] = [*_as_list(result[canonical]), *_as_list(value)]
            continue
        if canonical in result:
            message = f"both '{origin[canonical]}' and '{key}' give the {canonical}; keep only one"
            issues.append(KBIssue(source, row, canonical, message))
            continue
        result[canonical] = value
        origin[canonical] = key
    return result


def _canonical_column(name: str) -> str | None:
    key = _INVISIBLE.sub("", name).strip().lower()
    if key in KB_COLUMNS or key in EXTRA_COLUMNS:
        return key
    if _NUMBERED_SIMILAR.fullmatch(key):
        return "similar"
    return _ALIASES.get(key)


def _numbered_pair(name: str, other: str) -> bool:
    """Whether one of two headers that both give `similar` is a numbered one (so they are merged)."""
    return _is_numbered_similar(name) or _is_numbered_similar(other)


def _is_numbered_similar(name: str) -> bool:
    return _NUMBERED_SIMILAR.fullmatch(_INVISIBLE.sub("", name).strip().lower()) is not None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _missing_column_issue(column: str, source: str) -> KBIssue:
    accepted = [
        column,
        *(alias for alias, target in _ALIASES.items() if target == column),
    ]
    message = f"required column '{column}' is missing (accepted headers: {', '.join(accepted)})"
    return KBIssue(source, None, column, message)


def _parse_record(
    record: Mapping[str, Any], row: int, source: str, *, skip: Sequence[str], warnings: list[KBIssue]
) -> tuple[dict[str, Any], list[KBIssue]]:
    """Normalise one record's fields; problems are returned, never raised (warnings are appended)."""
    fields: dict[str, Any] = {}
    issues: list[KBIssue] = []
    for column, parse in _FIELD_PARSERS.items():
        if column in skip:
            continue
        value = record.get(column)
        errors = [v for v in _as_list(value) if isinstance(v, ExcelError)]
        if errors:
            message = f"the cell shows the Excel error {errors[0]} {_EXCEL_ERROR_HINT}"
            issues.append(KBIssue(source, row, column, message))
            continue
        try:
            fields[column] = parse(value)
        except _Problem as problem:
            issues.append(KBIssue(source, row, column, problem.message))
            continue
        if column in REQUIRED_COLUMNS and not fields[column]:
            issues.append(KBIssue(source, row, column, f"{column} is blank; every entry needs one"))
        issues += _check_length(column, fields[column], row, source)
    question = fields.get("question")
    if question and not normalize(question):
        issues.append(KBIssue(source, row, "question", f"{_quote(question)} {_UNMATCHABLE}"))
    if "similar" in fields:
        fields["similar"] = _matchable_similar(fields["similar"], row, source, warnings)
    if "question" in fields and "similar" in fields:
        fields["similar"] = _dedupe_similar(fields["question"], fields["similar"])
    if "answer" in fields and "answer_variants" in fields:
        fields["answer_variants"] = _dedupe_variants(fields["answer"], fields["answer_variants"])
    issues += [KBIssue(source, row, column, message) for column, message in _template_problems(fields)]
    start, end = fields.get("valid_from"), fields.get("valid_to")
    if start is not None and end is not None and start > end:
        start_text, end_text = _quote(record.get("valid_from")), _quote(record.get("valid_to"))
        message = f"valid_to {end_text} is before valid_from {start_text}"
        issues.append(KBIssue(source, row, "valid_to", message))
    return fields, issues


_UNMATCHABLE = "has no word or character the matcher can use (only emoji, punctuation or symbols)"


def _matchable_similar(similar: Sequence[str], row: int, source: str, warnings: list[KBIssue]) -> list[str]:
    """Paraphrases that normalize to something; the others could never match, so they are dropped."""
    kept: list[str] = []
    for text in similar:
        if normalize(text):
            kept.append(text)
        else:
            message = f"paraphrase {_quote(text)} {_UNMATCHABLE}; it was dropped"
            warnings.append(KBIssue(source, row, "similar", message))
    return kept


def _check_length(column: str, value: Any, row: int, source: str) -> list[KBIssue]:
    """Values over FIELD_LIMITS, one issue each (a paraphrase is checked on its own)."""
    limit = FIELD_LIMITS.get(column)
    if limit is None:
        return []
    texts = value if isinstance(value, (list, tuple)) else [value]
    return [
        KBIssue(source, row, column, f"{_quote(text)} is {len(text)} characters long; the limit is {limit}")
        for text in texts
        if isinstance(text, str) and len(text) > limit
    ]


def _check_duplicate_id(
    fields: Mapping[str, Any], row: int, source: str, id_rows: dict[str, int]
) -> list[KBIssue]:
    entry_id = fields.get("id")
    if not entry_id:
        return []
    if entry_id in id_rows:
        message = f"duplicate id {_quote(entry_id)} (first used in {_row_word(source)} {id_rows[entry_id]})"
        return [KBIssue(source, row, "id", message)]
    id_rows[entry_id] = row
    return []


def _check_duplicate_questions(
    fields: Mapping[str, Any],
    row: int,
    source: str,
    owners: dict[str, tuple[str, int, str]],
) -> list[KBIssue]:
    """A question text may belong to one entry only, else the matcher's answer is arbitrary."""
    entry_id, question = fields.get("id"), fields.get("question")
    if not entry_id or not question:
        return []
    issues: list[KBIssue] = []
    texts = [
        ("question", question),
        *(("similar", text) for text in fields.get("similar", ())),
    ]
    for column, text in texts:
        key = _question_key(text)
        owner = owners.get(key)
        if owner is None:
            owners[key] = (entry_id, row, column)
            continue
        other_id, other_row, other_column = owner
        role = "standard question" if other_column == "question" else "similar question"
        message = (
            f"entry {_quote(entry_id)} repeats {_quote(text)}, already a {role} of entry "
            f"{_quote(other_id)} ({_row_word(source)} {other_row})"
        )
        issues.append(KBIssue(source, row, column, message))
    return issues


def _check_matcher_duplicates(
    fields: Mapping[str, Any],
    row: int,
    source: str,
    owners: dict[str, tuple[str, int, str, str]],
) -> list[KBIssue]:
    """Questions of two entries that differ only in what the matcher ignores (punctuation, emoji,
    full-/half-width, traditional/simplified characters, case): to the matcher they are one question.

    A warning, not an issue: _check_duplicate_questions already refuses texts that are the same but
    for case and outer spaces, and public KBs (afqmc: 花唄/花呗, 被降***/被降) hold a few such pairs.
    """
    entry_id, question = fields.get("id"), fields.get("question")
    if not entry_id or not question:
        return []
    warnings: list[KBIssue] = []
    texts = [
        ("question", question),
        *(("similar", text) for text in fields.get("similar", ())),
    ]
    for column, text in texts:
        key = normalize(text)
        if not key:
            continue
        owner = owners.get(key)
        if owner is None:
            owners[key] = (entry_id, row, column, text)
            continue
        other_id, other_row, other_column, other_text = owner
        if other_row == row or _question_key(other_text) == _question_key(text):
            continue  # the entry's own wording, or an exact duplicate (an issue already)
        role = "standard question" if other_column == "question" else "similar question"
        message = (
            f"entry {_quote(entry_id)} repeats {_quote(text)} to the matcher: it is the same question as "
            f"{_quote(other_text)}, a {role} of entry {_quote(other_id)} ({_row_word(source)} {other_row}), "
            "but for punctuation, emoji, width, traditional/simplified characters or case; the matcher "
            "cannot tell them apart, so merge the two entries or reword one"
        )
        warnings.append(KBIssue(source, row, column, message))
    return warnings


def _question_key(text: str) -> str:
    # inner spaces are kept: real KBs hold "借呗 最高借多少" and "借呗最高借多少" as different entries
    return " ".join(text.casefold().split())


def _dedupe_variants(answer: str, variants: Sequence[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for text in variants:
        if text != answer and text not in kept:
            kept.append(text)
    return tuple(kept)


def _template_problems(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(column, message) for placeholders a dynamic entry cannot fill, or used by a static entry."""
    action = fields.get("action")
    if action is None:  # the action itself is unusable: reported by its parser
        return []
    texts = [
        ("answer", fields.get("answer") or ""),
        *(("answer_variants", v) for v in fields.get("answer_variants", ())),
    ]
    problems: list[tuple[str, str]] = []
    for column, text in texts:
        for match in _PLACEHOLDER.finditer(text):
            name = f"{match[1]}.{match[2]}"
            if action:
                if name not in ACTIONS[action]:
                    allowed = ", ".join(f"{{{f}}}" for f in ACTIONS[action])
                    problems.append(
                        (column, f"unknown placeholder {{{name}}} for action {action} (allowed: {allowed})")
                    )
            elif match[1] in _PLACEHOLDER_FAMILIES:
                problems.append(
                    (
                        "action",
                        f"{column} uses {{{name}}} but the entry has no action to fill it "
                        f"(set action to one of: {', '.join(ACTIONS)})",
                    )
                )
    return problems


def _dedupe_similar(question: str, similar: Sequence[str]) -> tuple[str, ...]:
    seen = {_question_key(question)}
    kept: list[str] = []
    for text in similar:
        key = _question_key(text)
        if key not in seen:
            seen.add(key)
            kept.append(text)
    return tuple(kept)


# --------------------------------------------------------------------------- field parsers


def _text(value: Any) -> str:
    """Cell value as stripped text; Excel turns an id typed as 12 into 12.0."""
    if value is None:
        return ""
    if isinstance(value, str):
        return _INVISIBLE.sub("", _CONTROL_CHARS.sub("", value)).strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (date, time)):
        return value.isoformat()
    raise _Problem(f"expected text, got {_json_type(value)} {_quote(value)}")


def _key_text(value: Any) -> str:
    """An id or category: text without any invisible format character."""
    return _FORMAT_CHARS.sub("", _text(value)).strip()


def _similar(value: Any) -> list[str]:
    """Paraphrases from a "|"/newline separated cell or a JSON list.

    List items are split too, so a paraphrase never contains a separator and
    every KB survives a round trip through CSV/xlsx.
    """
    if value is None:
        return []
    parts = value if isinstance(value, (list, tuple)) else [value]
    texts = (piece.strip() for part in parts for piece in _SIMILAR_SEPARATORS.split(_text(part)))
    return [text for text in texts if text]


def _enabled(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = _INVISIBLE.sub("", value).strip().casefold()
        if not word or word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _Problem(f"bad enabled value {_quote(value)} ({_ENABLED_HINT})")


def _notify(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str) and not value.strip():
        return False
    try:
        return _enabled(value)
    except _Problem:
        raise _Problem(f"bad notify value {_quote(value)} ({_NOTIFY_HINT})") from None


def _action(value: Any) -> str:
    text = _text(value)
    if not text:
        return ""
    key = text.casefold()
    if key in ACTIONS:
        return key
    if text in _ACTION_ALIASES:
        return _ACTION_ALIASES[text]
    allowed = ", ".join([*ACTIONS, *_ACTION_ALIASES])
    raise _Problem(f"unknown action {_quote(value)} (allowed: {allowed}; blank for a plain answer)")


def _answer_variants(value: Any) -> list[str]:
    """Answer wordings from a "||"-separated cell or a JSON list (items are split too, for round trips)."""
    if value is None:
        return []
    parts = value if isinstance(value, (list, tuple)) else [value]
    texts = (piece.strip() for part in parts for piece in _VARIANT_SEPARATORS.split(_text(part)))
    return [text for text in texts if text]


def _valid_from(value: Any) -> datetime | None:
    return _moment(value, end_of_day=False)


def _valid_to(value: Any) -> datetime | None:
    return _moment(value, end_of_day=True)


def _moment(value: Any, *, end_of_day: bool) -> datetime | None:
    """A date/time cell as an aware Beijing-time datetime; a bare date covers the whole day."""
    raw = value
    if isinstance(value, str):
        value = _INVISIBLE.sub("", value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        value = _parse_date_text(value.strip())
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=SHANGHAI) if value.utcoffset() is None else value
    elif isinstance(value, date):
        moment = datetime.combine(value, time.max if end_of_day else time.min, tzinfo=SHANGHAI)
    else:
        raise _Problem(f"bad date {_quote(raw)} ({_DATE_FORMATS_HINT})")
    try:
        return moment.astimezone(SHANGHAI)
    except (OverflowError, ValueError) as exc:
        raise _Problem(f"date {_quote(raw)} is out of range") from exc


def _parse_date_text(text: str) -> date | datetime:
    match = _DATE_TEXT.fullmatch(_CHINESE_DATE.sub(r"\1-\2-\3", text))
    if match is None:
        raise _Problem(f"bad date {_quote(text)} ({_DATE_FORMATS_HINT})")
    try:
        day = date(int(match["y"]), int(match["mo"]), int(match["d"]))
        if match["h"] is None:
            return day
        clock = time(
            int(match["h"]),
            int(match["mi"]),
            int(match["s"] or 0),
            int((match["f"] or "0").ljust(6, "0")),
        )
        return datetime.combine(day, clock, tzinfo=_offset(match["tz"]))
    except ValueError as exc:
        raise _Problem(f"bad date {_quote(text)} ({_DATE_FORMATS_HINT})") from exc


def _offset(text: str | None) -> tzinfo | None:
    if text is None:
        return None
    if text == "Z":
        return UTC
    digits = text[1:].replace(":", "")  # seconds appear in historic offsets (+08:05:43)
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4]), seconds=int(digits[4:] or 0))
    return timezone(-delta if text[0] == "-" else delta)


_FIELD_PARSERS: dict[str, Callable[[Any], Any]] = {
    "id": _key_text,
    "question": _text,
    "similar": _similar,
    "answer": _text,
    "category": _key_text,
    "valid_from": _valid_from,
    "valid_to": _valid_to,
    "enabled": _enabled,
    "action": _action,
    "notify": _notify,
    "answer_variants": _answer_variants,
}


# --------------------------------------------------------------------------- writing


def _columns(entries: Sequence[KBEntry]) -> tuple[str, ...]:
    """KB_COLUMNS, plus the optional columns some entry uses (files without them stay as they were)."""
    used = {
        "action": any(e.action for e in entries),
        "notify": any(e.notify for e in entries),
        "answer_variants": any(e.answer_variants for e in entries),
    }
    return (*KB_COLUMNS, *(c for c in EXTRA_COLUMNS if used[c]))


def _flat_row(entry: KBEntry, columns: Sequence[str] = KB_COLUMNS) -> list[str]:
    """Spreadsheet cells for an entry, in `columns` order."""
    extra = {
        "action": entry.action,
        "notify": "true" if entry.notify else "false",
        "answer_variants": "||".join(entry.answer_variants),
    }
    return [*_base_row(entry), *(extra[c] for c in columns[len(KB_COLUMNS) :])]


def _base_row(entry: KBEntry) -> list[str]:
    return [
        entry.id,
        entry.question,
        "|".join(entry.similar),
        entry.answer,
        entry.category,
        _format_moment(entry.valid_from, end_of_day=False),
        _format_moment(entry.valid_to, end_of_day=True),
        "true" if entry.enabled else "false",
    ]


def _format_moment(value: datetime | None, *, end_of_day: bool) -> str:
    """Readable Beijing time for merchants; falls back to UTC ISO when the local
    text would not load back to the same instant (historic offsets, DST folds)."""
    if value is None:
        return ""
    local = value.astimezone(SHANGHAI)
    if local.time() == (time.max if end_of_day else time.min):
        text = local.date().isoformat()
    else:
        text = local.replace(tzinfo=None).isoformat(sep=" ")
    reloaded = _moment(text, end_of_day=end_of_day)
    if reloaded is not None and reloaded.astimezone(UTC) == value.astimezone(UTC):
        return text
    return value.astimezone(UTC).isoformat()


def _write_csv(entries: Sequence[KBEntry], path: Path) -> None:
    """CSV whose cells never run as formulas in Excel (see engine.cells); _read_csv undoes the escaping."""
    # BOM: Chinese Excel reads BOM-less CSV as GBK and shows mojibake.
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        columns = _columns(entries)
        writer.writerow(columns)
        writer.writerows([escape_cell(cell) for cell in _flat_row(entry, columns)] for entry in entries)


def _write_xlsx(entries: Sequence[KBEntry], path: Path) -> None:
    """XLSX whose cells are all text: in a workbook a cell's type, not a quote, keeps it from being a
    formula, so values are stored unchanged and a formula-like one is also marked quote-prefixed
    (Excel keeps it text even after the merchant edits it)."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "KB"
    columns = _columns(entries)
    sheet.append(list(columns))
    for entry in entries:
        sheet.append(_flat_row(entry, columns))
        for cell in sheet[sheet.max_row]:
            cell.data_type = "s"  # openpyxl makes text starting with "=" a formula
            if isinstance(cell.value, str) and cell.value != escape_cell(cell.value):
                cell.quotePrefix = True
    workbook.save(path)


def _write_json(entries: Sequence[KBEntry], path: Path) -> None:
    text = json.dumps([entry.to_dict() for entry in entries], ensure_ascii=False, indent=2)
    path.write_text(text + "\n", encoding="utf-8")


def _write_jsonl(entries: Sequence[KBEntry], path: Path) -> None:
    lines = (json.dumps(entry.to_dict(), ensure_ascii=False) + "\n" for entry in entries)
    path.write_text("".join(lines), encoding="utf-8")


_WRITERS: dict[str, Callable[[Sequence[KBEntry], Path], None]] = {
    ".csv": _write_csv,
    ".xlsx": _write_xlsx,
    ".json": _write_json,
    ".jsonl": _write_jsonl,
}


# --------------------------------------------------------------------------- small helpers


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not _INVISIBLE.sub("", value).strip()
    return isinstance(value, (list, tuple)) and not value


def _is_blank_record(record: Mapping[Any, Any]) -> bool:
    return all(_is_blank(value) for value in record.values())


def _quote(value: Any) -> str:
    """Quote a bad value for a one-line message, escaped and truncated."""
    text = value if isinstance(value, str) else str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    if len(text) > _QUOTE_LIMIT:
        text = text[:_QUOTE_LIMIT] + "..."
    return f"'{text}'"


def _row_word(source: str) -> str:
    """What a row number counts in this source, as the merchant would say it."""
    if source == _IN_MEMORY:
        return "item"
    return {".jsonl": "line", ".json": "record"}.get(Path(source).suffix.lower(), "row")


def _json_type(value: Any) -> str:
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
