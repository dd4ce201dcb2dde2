"""Pattern matching over a console stream, without I/O.

An :class:`Expecter` is fed the bytes a console produces, in chunks of any
size, and answers "has one of these patterns appeared since the last match?".
:mod:`iochannel.console` wraps it in a blocking and an asyncio shell that read
from a channel; anything else (a test, a chardev frontend) can feed it
directly.

The contract:

* **Text.**  With ``encoding=None`` the stream is matched as bytes and patterns
  must be bytes; with an encoding it is decoded incrementally (a character split
  across chunks is decoded once whole) with the *errors* policy of
  :func:`codecs.decode`, and patterns must be ``str``.  ``strip_ansi=True``
  removes terminal escape sequences (CSI, OSC and two-byte escapes, even split
  across chunks) from the text that is matched; the log always gets the raw
  bytes.
* **Patterns.**  A :class:`Searcher` holds a list of success patterns and a
  list of failure patterns.  A ``str``/``bytes`` pattern is a regular
  expression (compiled with :data:`re.DOTALL`) or, for exact searchers, a
  literal; a compiled pattern is always a regular expression.  The earliest
  match in the stream wins; at equal positions failure patterns win, then
  the first pattern in the list.  A failure match raises
  :class:`ExpectFailure` at once.
* **When a match is reported.**  As soon as the text received contains it: a
  greedy regular expression whose match could grow with more data matches what
  had arrived (as in pexpect).  Each search looks only at the text since the
  last match.
* **Window.**  Each new chunk is searched together with the last
  ``window - 1`` characters before it, so the work per chunk is bounded by the
  chunk plus the window and a long boot log is scanned in linear time.  The
  rule: a match of at most *window* characters is always found, wherever the
  chunk boundaries fall; a longer one (a regular expression such as ``a.*b``
  spanning more than the window) may be missed.  A literal longer than the
  window widens it for that search.  The first search with a new searcher
  covers all the text kept since the last match.
* **Memory.**  The text kept since the last match (``before``) is capped at
  *max_before* characters; older text is dropped from the front and only
  found in the log.  A flood without a match therefore uses bounded memory.
* **Log.**  Every byte fed goes to *log* (a binary file object or a callable
  taking bytes) as it arrives, optionally with a timestamp at the start of
  each line.
* **Errors.**  :class:`ExpectTimeout` and :class:`ExpectEOF` name the
  patterns waited for and show the last bytes received.
"""

from __future__ import annotations

import codecs
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Generic, TypeVar, Union, cast

from ..errors import ChannelEOFError, ChannelError, ChannelTimeoutError

__all__ = [
    "ExpectEOF",
    "ExpectError",
    "ExpectFailure",
    "ExpectMatch",
    "ExpectTimeout",
    "Expecter",
    "Pattern",
    "Searcher",
]

AnyText = TypeVar("AnyText", str, bytes)
Pattern = Union[str, bytes, "re.Pattern[str]", "re.Pattern[bytes]"]
LogTarget = IO[bytes] | Callable[[bytes], object] | None

#: How many bytes of the stream's end an error message shows.
TAIL_BYTES = 400

_ANSI_STR = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\^_])")
_ANSI_BYTES = re.compile(_ANSI_STR.pattern.encode())
# An escape sequence that may still be completed by the next chunk.
_ANSI_PARTIAL_STR = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?)?\Z")
_ANSI_PARTIAL_BYTES = re.compile(_ANSI_PARTIAL_STR.pattern.encode())
# Longest escape sequence held back waiting for its end; past it the bytes pass.
_ANSI_HOLD_MAX = 256
# Pieces shorter than this are merged, so a byte-at-a-time stream keeps few pieces.
_PIECE = 4096


class ExpectError(ChannelError):
    """Base of the errors raised while waiting for a pattern."""

    def __init__(self, message: str, tail: bytes, patterns: Sequence[Pattern]) -> None:
        super().__init__(message)
        self.tail = tail
        """The last bytes received (at most ``TAIL_BYTES``)."""
        self.patterns = list(patterns)
        """The success patterns that were waited for."""


class ExpectTimeout(ExpectError, ChannelTimeoutError):
    """No pattern appeared within the timeout."""


class ExpectEOF(ExpectError, ChannelEOFError):
    """The stream ended before any pattern appeared."""


class ExpectFailure(ExpectError):
    """A failure pattern appeared; its ``match`` says which and where."""

    def __init__(
        self, message: str, tail: bytes, patterns: Sequence[Pattern], match: ExpectMatch[Any]
    ) -> None:
        super().__init__(message, tail, patterns)
        self.match = match


@dataclass(frozen=True)
class ExpectMatch(Generic[AnyText]):
    """A pattern found in the stream."""

    index: int
    """Position of the pattern in the list passed (in the failure list for failures)."""
    pattern: Pattern
    before: AnyText
    """Text since the previous match (at most *max_before* characters) up to this one."""
    after: AnyText
    """The matched text."""
    match: re.Match[AnyText] | None
    """The regular-expression match (``None`` for a literal)."""


# Console text characters from most to least common; any other is taken as rare.
_COMMON = " \r\n\teatoinsrhldcu0123456789.:-_=/[]()mfpgwybvkxjqzEATOINSRHLDCU"
_COMMON_BYTES = _COMMON.encode()
# Occurrences of an anchor that are no match before the anchor is judged common.
_ANCHOR_MISSES = 16


class _Literal(Generic[AnyText]):
    """A literal pattern, searched by jumping between occurrences of one rare character.

    ``str.find`` skips ahead by the pattern's last character, so a prompt
    ending in a space crawls through console text; finding one of the
    literal's rarer characters (memchr speed) and checking around it is
    several times faster: it halves the reader's CPU time for a prompt after
    a 50 MB boot log (``bench/expect.py``).  An anchor that proves common gives
    way to the literal's next rarer character; when none is rare, plain
    ``find`` is used.
    """

    __slots__ = ("anchors", "current", "text")

    def __init__(self, text: AnyText) -> None:
        self.text: AnyText = text
        common: Any = _COMMON if isinstance(text, str) else _COMMON_BYTES
        first: dict[AnyText, int] = {}
        for i in range(len(text)):
            first.setdefault(text[i : i + 1], i)

        def rarity(item: tuple[AnyText, int]) -> int:
            rank: int = common.find(item[0])
            return len(common) if rank < 0 else rank

        self.anchors: list[tuple[AnyText, int]] = sorted(first.items(), key=rarity, reverse=True)
        self.current = 0

    def __len__(self) -> int:
        return len(self.text)

    def find(self, text: AnyText) -> int:
        """The position of the literal's first occurrence in *text*, or -1."""
        literal = self.text
        if self.current < len(self.anchors):
            char, offset = self.anchors[self.current]
            i = text.find(char, offset)
            misses = 0
            while i >= 0:
                # Every occurrence of the literal has *char* at start + offset.
                if text.startswith(literal, i - offset):
                    return i - offset
                misses += 1
                if misses > _ANCHOR_MISSES:
                    self.current += 1
                    return text.find(literal, i - offset + 1)
                i = text.find(char, i + 1)
            return -1
        return text.find(literal)


def _describe(patterns: Sequence[Pattern]) -> str:
    shown = [p.pattern if isinstance(p, re.Pattern) else p for p in patterns]
    return " or ".join(repr(p) for p in shown) or "nothing"


class Searcher:
    """Compiled success and failure patterns for one wait.

    ``exact=True`` takes ``str``/``bytes`` patterns as literals.
    *kind* is ``str`` or ``bytes``, the type the stream is matched as.
    """

    def __init__(
        self,
        patterns: Pattern | Sequence[Pattern],
        failures: Sequence[Pattern] = (),
        *,
        exact: bool = False,
        kind: type = bytes,
    ) -> None:
        if isinstance(patterns, (str, bytes, re.Pattern)):
            patterns = [patterns]
        self.patterns: list[Pattern] = list(patterns)
        self.failures: list[Pattern] = list(failures)
        if not self.patterns:
            raise ValueError("patterns: give at least one pattern to wait for")
        # (is_failure, index, literal or compiled regex)
        self.entries: list[tuple[bool, int, re.Pattern[Any] | _Literal[Any]]] = []
        for failure, group in ((False, self.patterns), (True, self.failures)):
            for i, p in enumerate(group):
                self.entries.append((failure, i, self._compile(p, exact, kind)))
        self.longest_literal = max(
            (len(e) for _, _, e in self.entries if not isinstance(e, re.Pattern)), default=0
        )

    @staticmethod
    def _compile(p: Pattern, exact: bool, kind: type) -> re.Pattern[Any] | _Literal[Any]:
        raw = p.pattern if isinstance(p, re.Pattern) else p
        if not isinstance(raw, kind):
            mode = "text (an encoding is set)" if kind is str else "bytes (no encoding is set)"
            raise TypeError(
                f"pattern {p!r}: the console matches {mode}; pass {kind.__name__} patterns"
            )
        if isinstance(p, re.Pattern):
            return p
        if exact:
            if not p:
                raise ValueError("pattern: an empty literal would match anywhere")
            return _Literal(p)
        return re.compile(p, re.DOTALL)

    def find(self, text: AnyText) -> tuple[int, int, bool, int, re.Match[AnyText] | None] | None:
        """Earliest (start, end, is_failure, index, match) in *text*, or ``None``."""
        best: tuple[int, int, bool, int, re.Match[AnyText] | None] | None = None
        for failure, index, entry in self.entries:
            if isinstance(entry, re.Pattern):
                m: re.Match[AnyText] | None = entry.search(text)
                if m is None:
                    continue
                start, end = m.span()
            else:
                start = entry.find(text)
                if start < 0:
                    continue
                end = start + len(entry)
                m = None
            # Earliest start; at a tie failures first, then list order (entries are in it).
            if best is None or start < best[0] or (start == best[0] and failure and not best[2]):
                best = (start, end, failure, index, m)
        return best


class Expecter(Generic[AnyText]):
    """The matching state of one console stream; see the module docstring.

    Build one with :meth:`~iochannel.console.Expecter.binary` or
    :meth:`~iochannel.console.Expecter.text` for a typed result, or directly with
    *encoding*.
    """

    def __init__(
        self,
        *,
        encoding: str | None = None,
        errors: str = "strict",
        strip_ansi: bool = False,
        window: int = 4096,
        max_before: int = 1 << 20,
        log: LogTarget = None,
        timestamps: bool = False,
    ) -> None:
        if window < 1:
            raise ValueError(f"window={window}: must be at least 1 character")
        if max_before < window:
            raise ValueError(f"max_before={max_before}: must be at least window={window}")
        self.kind: type = bytes if encoding is None else str
        self._decoder = None if encoding is None else codecs.getincrementaldecoder(encoding)(errors)
        self._empty: AnyText = cast("AnyText", self.kind())
        self._ansi: re.Pattern[AnyText] | None = None
        self._ansi_partial: re.Pattern[AnyText] | None = None
        if strip_ansi:
            self._ansi = _ANSI_STR if self.kind is str else _ANSI_BYTES  # type: ignore[assignment]
            self._ansi_partial = (
                _ANSI_PARTIAL_STR if self.kind is str else _ANSI_PARTIAL_BYTES  # type: ignore[assignment]
            )
        self._held: AnyText = self._empty
        self.window = window
        self.max_before = max_before
        self._log = log
        self._timestamps = timestamps
        self._line_start = True
        # Text kept since the last match: pieces covering [_start, _end) in
        # stream positions (characters of matched text since the stream began).
        self._pieces: deque[AnyText] = deque()
        self._start = 0
        self._end = 0
        self._since = 0  # end of the last match
        self._searcher: Searcher | None = None
        self._scanned = 0  # how far _searcher has looked
        self._tail = b""
        self.eof = False
        self.received = 0
        """Bytes fed so far."""

    @classmethod
    def binary(cls, **kwargs: object) -> Expecter[bytes]:
        return Expecter[bytes](**kwargs)  # type: ignore[arg-type]

    @classmethod
    def text(cls, encoding: str = "utf-8", **kwargs: object) -> Expecter[str]:
        return Expecter[str](encoding=encoding, **kwargs)  # type: ignore[arg-type]

    # ---- input ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Add received bytes (logged at once, matched by the next :meth:`search`)."""
        if self.eof:
            raise ValueError("feed after feed_eof: the stream has ended")
        if not data:
            return
        self.received += len(data)
        self._tail = (self._tail + data)[-TAIL_BYTES:]
        if self._log is not None:
            self._write_log(data)
        text: AnyText = data if self._decoder is None else self._decoder.decode(data)  # type: ignore[assignment]
        self._add(text, final=False)

    def feed_eof(self) -> None:
        """The stream has ended: flush a partial character or escape sequence."""
        if self.eof:
            return
        self.eof = True
        text: AnyText = self._empty
        if self._decoder is not None:
            text = self._decoder.decode(b"", final=True)  # type: ignore[assignment]
        self._add(text, final=True)

    def _add(self, text: AnyText, final: bool) -> None:
        if self._ansi is not None and self._ansi_partial is not None:
            text = self._ansi.sub(self._empty, self._held + text)
            self._held = self._empty
            if not final:
                esc = text.rfind("\x1b" if self.kind is str else b"\x1b")  # type: ignore[arg-type]
                held = esc >= 0 and len(text) - esc <= _ANSI_HOLD_MAX
                if held and self._ansi_partial.match(text, esc):
                    self._held = text[esc:]
                    text = text[:esc]
        if not text:
            return
        pieces = self._pieces
        if pieces and len(pieces[-1]) < _PIECE:
            pieces[-1] += text
        else:
            pieces.append(text)
        self._end += len(text)
        # Drop whole pieces from the front beyond max_before.
        while len(pieces) > 1 and self._end - self._start - len(pieces[0]) >= self.max_before:
            self._start += len(pieces.popleft())

    def _write_log(self, data: bytes) -> None:
        if self._timestamps:
            out = bytearray()
            for line in data.splitlines(keepends=True):
                if self._line_start:
                    now = time.time()
                    stamp = time.strftime("%H:%M:%S", time.localtime(now))
                    out += f"[{stamp}.{int(now % 1 * 1000):03d}] ".encode()
                out += line
                self._line_start = line.endswith(b"\n")
            data = bytes(out)
        log = self._log
        if callable(log):
            log(data)
        elif log is not None:
            log.write(data)

    # ---- matching ---------------------------------------------------------

    def _text_from(self, pos: int) -> AnyText:
        """The kept text from stream position *pos* (clamped to what is kept) to the end."""
        pos = max(pos, self._start)
        parts: list[AnyText] = []
        at = self._end
        for piece in reversed(self._pieces):
            if at <= pos:
                break
            at -= len(piece)
            parts.append(piece[pos - at :] if at < pos else piece)
        parts.reverse()
        return self._empty.join(parts)

    def search(self, searcher: Searcher) -> ExpectMatch[AnyText] | None:
        """Look for *searcher*'s patterns in the text received since the last match.

        Returns the match and consumes the text up to its end, or ``None``.
        Raises :class:`ExpectFailure` if a failure pattern comes first.
        """
        if searcher is not self._searcher:
            self._searcher = searcher
            origin = self._since
        elif self._scanned >= self._end:
            return None
        else:
            lookback = max(self.window, searcher.longest_literal) - 1
            origin = max(self._since, self._scanned - lookback)
        origin = max(origin, self._start)
        if origin >= self._end:
            return None
        text = self._text_from(origin)
        self._scanned = self._end
        found = searcher.find(text)
        if found is None:
            return None
        start, end, failure, index, m = found
        before = self._text_from(self._since)[: origin - max(self._since, self._start) + start]
        result = ExpectMatch[AnyText](
            index=index,
            pattern=(searcher.failures if failure else searcher.patterns)[index],
            before=before,
            after=text[start:end],
            match=m,
        )
        self._consume(origin + end)
        if failure:
            raise ExpectFailure(
                f"{_describe([result.pattern])} appeared while waiting for "
                f"{_describe(searcher.patterns)}; last bytes received: {self._tail!r}",
                self._tail,
                searcher.patterns,
                result,
            )
        return result

    def _consume(self, pos: int) -> None:
        """Forget the text before stream position *pos* (the end of a match)."""
        self._since = pos
        self._scanned = pos
        self._searcher = None
        while self._pieces and self._start + len(self._pieces[0]) <= pos:
            self._start += len(self._pieces.popleft())
        if self._pieces and self._start < pos:
            self._pieces[0] = self._pieces[0][pos - self._start :]
            self._start = pos

    def pending(self) -> AnyText:
        """The text kept since the last match (not yet consumed)."""
        return self._text_from(self._since)

    @property
    def tail(self) -> bytes:
        """The last bytes received (at most ``TAIL_BYTES``)."""
        return self._tail

    def timeout_error(self, searcher: Searcher, timeout: float, name: str = "") -> ExpectTimeout:
        where = f" on {name}" if name else ""
        return ExpectTimeout(
            f"timed out after {timeout:g} s{where} waiting for {_describe(searcher.patterns)}; "
            f"last bytes received: {self._tail!r}",
            self._tail,
            searcher.patterns,
        )

    def eof_error(self, searcher: Searcher, name: str = "", why: str = "") -> ExpectEOF:
        where = f" on {name}" if name else ""
        if why:
            where += f" ({why})"
        return ExpectEOF(
            f"end of stream{where} while waiting for {_describe(searcher.patterns)}; "
            f"last bytes received: {self._tail!r}",
            self._tail,
            searcher.patterns,
        )
