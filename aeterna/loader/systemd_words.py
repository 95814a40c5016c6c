"""Word-level syntax of systemd values: quotes, C escapes, command lines, assignments.

Pure functions that mirror systemd's ``extract_first_word`` (with
``EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE``), ``config_parse_exec`` and
``config_parse_environ``. They raise ValueError with an "expected ..., found
..." message; the caller adds the file, line and key.

Environment references (``$VAR``, ``${VAR}``, ``$$``) in command lines are
*kept* at load time, exactly as systemd keeps them until exec: their values
may come from ``EnvironmentFile=`` or the manager (``$MAINPID``), which a pure
loader cannot know. :func:`expand_exec_env` applies systemd's rules and is what
the spawner calls with the final environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .ini import WHITESPACE, show

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                   "v": "\v", "\\": "\\", '"': '"', "'": "'", "s": " "}
_DIGITS = {"x": (2, 16), "u": (4, 16), "U": (8, 16)}


class _UnknownEscape(Exception):
    """Strict mode met an escape systemd does not know: retry keeping it verbatim."""


def _cunescape_one(text: str, pos: int) -> tuple[str, int] | None:
    """Decode the escape whose letter is at ``pos``: (character, letters used) or None."""
    c = text[pos]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], 1
    if c in _DIGITS:
        width, base = _DIGITS[c]
        digits = text[pos + 1:pos + 1 + width]
        pattern = r"[0-9a-fA-F]+"
    elif c in "01234567":
        width, base, digits, pattern = 3, 8, text[pos:pos + 3], r"[0-7]+"  # \ooo
    else:
        return None
    if len(digits) != width or not re.fullmatch(pattern, digits):
        return None
    value = int(digits, base)
    if value == 0 or value > 0x10FFFF or 0xD800 <= value <= 0xDFFF or (base == 8 and value > 255):
        return None
    return chr(value), width + (1 if c in _DIGITS else 0)


def _next_word(text: str, pos: int, relax: bool) -> tuple[str | None, int]:
    """One word from ``pos``: quotes removed, C escapes decoded; (None, end) at the end."""
    n = len(text)
    while pos < n and text[pos] in WHITESPACE:
        pos += 1
    if pos >= n:
        return None, pos
    buf: list[str] = []
    quote = ""
    while pos < n:
        c = text[pos]
        if c == "\\":
            if pos + 1 >= n:  # a trailing backslash
                if quote:
                    raise ValueError(f"expected balanced quotes, found {show(text)}")
                if not relax:
                    raise _UnknownEscape()
                buf.append("\\")
                pos += 1
                break
            decoded = _cunescape_one(text, pos + 1)
            if decoded is None:
                if not relax:
                    raise _UnknownEscape()
                buf.append("\\" + text[pos + 1])
                pos += 2
            else:
                buf.append(decoded[0])
                pos += 1 + decoded[1]
        elif quote:
            if c == quote:
                quote = ""
            else:
                buf.append(c)
            pos += 1
        elif c in "'\"":
            quote = c
            pos += 1
        elif c in WHITESPACE:
            break
        else:
            buf.append(c)
            pos += 1
    if quote:
        raise ValueError(f"expected balanced quotes, found {show(text)}")
    return "".join(buf), pos


def next_word(text: str, pos: int, warnings: list[str]) -> tuple[str | None, int]:
    """Like systemd: strict first; unknown escapes are then kept verbatim, with a warning."""
    try:
        return _next_word(text, pos, relax=False)
    except _UnknownEscape:
        word, end = _next_word(text, pos, relax=True)
        warnings.append(f"unknown escape sequence kept verbatim in {show(word or '')}")
        return word, end


def split_words(text: str, warnings: list[str]) -> list[str]:
    """All words of ``text`` (quotes removed, escapes decoded)."""
    words: list[str] = []
    pos = 0
    while True:
        word, pos = next_word(text, pos, warnings)
        if word is None:
            return words
        words.append(word)


# ------------------------------------------------------------------ commands


@dataclass(frozen=True)
class ExecCommand:
    """One command line of ``ExecStart=`` and friends, prefixes decoded.

    ``argv`` is (program, arguments...). With the ``@`` prefix, ``argv0`` is
    what the program sees as argv[0] instead of the program's path.
    ``privileged`` keeps a ``+``, ``!`` or ``!!`` prefix.
    """

    argv: tuple[str, ...]
    ignore_failure: bool = False
    argv0: str = ""
    privileged: str = ""

    @property
    def full_privileges(self) -> bool:
        """``+`` and ``!`` run with the manager's own user; ``!!`` only where the kernel
        lacks ambient capabilities, which Linux has had since 4.3, so it runs as User=."""
        return self.privileged in ("+", "!")

    def encode(self) -> tuple[str, ...]:
        """The model's form for ExecStartPre/Post/Reload/Stop, which have no flag
        fields: systemd's own words, with ``-``/``+``/``@`` prefixing the program and
        argv[0] following it when ``@`` is given. :meth:`decode` reverses it."""
        prefix = (("-" if self.ignore_failure else "") + ("+" if self.full_privileges else "")
                  + ("@" if self.argv0 else ""))
        rest = ((self.argv0,) if self.argv0 else ()) + self.argv[1:]
        return (prefix + self.argv[0],) + rest

    @classmethod
    def decode(cls, words: tuple[str, ...]) -> ExecCommand:
        """Read back :meth:`encode`'s form (a program never starts with ``-+@``)."""
        first = words[0]
        ignore = first.startswith("-")
        first = first[1:] if ignore else first
        privileged = "+" if first.startswith("+") else ""
        first = first[1:] if privileged else first
        if first.startswith("@") and len(words) > 1:
            return cls((first[1:],) + words[2:], ignore, words[1], privileged)
        return cls((first,) + words[1:], ignore, "", privileged)


def parse_exec(value: str, expand: Callable[[str], str],
               warnings: list[str]) -> list[ExecCommand]:
    """Parse an ``Exec*=`` value into commands (several when separated by a lone ``;``).

    ``expand`` resolves specifiers in each word after splitting, as systemd
    does. The ``:`` prefix (no environment expansion) is kept by doubling each
    ``$`` so that :func:`expand_exec_env` leaves the words literal.
    """
    commands: list[ExecCommand] = []
    pos, n = 0, len(value)
    while True:
        first, pos = next_word(value, pos, warnings)
        if first is None:
            return commands
        flags, k = _prefixes(first)
        program = expand(first[k:])
        if not program:
            raise ValueError(f"expected a program after the prefix, found {show(value)}")
        if program.endswith("/") or ("/" in program and not program.startswith("/")):
            raise ValueError(f"expected an absolute path or a plain program name, "
                             f"found {show(program)}")
        argv: list[str] = [] if "@" in flags else [program]
        semicolon = False
        while True:
            while pos < n and value[pos] in WHITESPACE:
                pos += 1
            if value[pos:pos + 1] == ";" and value[pos + 1:pos + 2] in ("", *WHITESPACE):
                pos, semicolon = pos + 1, True
                break
            if value[pos:pos + 2] == "\\;" and value[pos + 2:pos + 3] in ("", *WHITESPACE):
                argv.append(";")
                pos += 2
                continue
            word, pos = next_word(value, pos, warnings)
            if word is None:
                break
            argv.append(expand(word))
        if not argv:
            raise ValueError(f"expected argv[0] after the program of an '@' command, "
                             f"found {show(value)}")
        if ":" in flags:
            argv = [w.replace("$", "$$") for w in argv]
        privileged = next((f for f in ("+", "!!", "!") if f in flags), "")
        if "@" in flags:
            commands.append(ExecCommand((program, *argv[1:]), "-" in flags, argv[0], privileged))
        else:
            commands.append(ExecCommand(tuple(argv), "-" in flags, "", privileged))
        if not semicolon:
            return commands


def _prefixes(word: str) -> tuple[set[str], int]:
    """systemd's prefix loop: each of - @ : at most once, one of + ! !! in total."""
    flags: set[str] = set()
    i = 0
    while i < len(word):
        c = word[i]
        if c in "-@:" and c not in flags:
            flags.add(c)
        elif c == "+" and not flags & {"+", "!", "!!"}:
            flags.add("+")
        elif c == "!" and not flags & {"+", "!", "!!"}:
            flags.add("!")
        elif c == "!" and "!" in flags and "!!" not in flags:
            flags = (flags - {"!"}) | {"!!"}
        else:
            break
        i += 1
    return flags, i


# ------------------------------------------------------------------ environment


def parse_environment(value: str, expand: Callable[[str], str],
                      warnings: list[str]) -> list[tuple[str, str]]:
    """``Environment=`` words: quoted ``NAME=value`` assignments, several per line."""
    pairs: list[tuple[str, str]] = []
    for word in split_words(value, warnings):
        word = expand(word)
        name, eq, val = word.partition("=")
        if not eq or not ENV_NAME.fullmatch(name):
            raise ValueError(f"expected NAME=VALUE assignments, found {show(word)}")
        pairs.append((name, val))
    return pairs


_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\})")


def expand_exec_env(argv: tuple[str, ...], env: Mapping[str, str]) -> tuple[str, ...]:
    """Expand environment references in a command at exec time, as systemd does.

    A word that is exactly ``$NAME`` becomes the value split at whitespace,
    quotes removed (zero or more words; nothing when unset): systemd.service(5)'s
    ``TWO="'two two' too"`` gives ``two two`` and ``too``. ``$NAME`` inside a
    longer word is kept literally, as systemd keeps it. Elsewhere ``${NAME}`` becomes
    the value (empty when unset) inside one word, ``${NAME:-default}`` and
    ``${NAME:+alternative}`` work as in the shell, ``$$`` is a literal ``$``
    and any other ``$`` is kept.
    """
    out: list[str] = []
    for word in argv:
        if word.startswith("$") and ENV_NAME.fullmatch(word[1:]):
            out.extend(_split_value(env.get(word[1:], "")))
            continue
        out.append(_REF.sub(lambda m: _replace(m, env), word))
    return tuple(out)


def _split_value(value: str) -> list[str]:
    """A value split as systemd splits it (EXTRACT_UNQUOTE|EXTRACT_RELAX): quotes
    group words and are removed; an unbalanced quote runs to the end."""
    words: list[str] = []
    buf: list[str] = []
    quote = ""
    in_word = False
    for c in value:
        if quote:
            if c == quote:
                quote = ""
            else:
                buf.append(c)
        elif c in "'\"":
            quote, in_word = c, True
        elif c in WHITESPACE:
            if in_word:
                words.append("".join(buf))
                buf, in_word = [], False
        else:
            buf.append(c)
            in_word = True
    if in_word:
        words.append("".join(buf))
    return words


def _replace(m: re.Match[str], env: Mapping[str, str]) -> str:
    if m.group(0) == "$$":
        return "$"
    value = env.get(m.group(1), "")
    if m.group(2) == ":-":
        return value or m.group(3)
    if m.group(2) == ":+":
        return m.group(3) if value else ""
    return value
