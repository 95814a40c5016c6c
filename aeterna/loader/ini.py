"""The syntax layer of systemd unit files: text in, ordered sections out.

Pure except for :func:`read_unit_with_dropins`, the one function that touches
the file system (the unit file, its template and its ``.d/`` drop-ins).
Nothing here knows what a directive means; ``systemd_units`` does.

The rules are systemd's (``systemd.syntax(7)``, ``conf-parser.c``):

* ``[Section]`` headers and ``Key=Value`` lines, whitespace around ``=`` stripped;
* lines whose first non-blank character is ``#`` or ``;`` are comments, and
  there are no trailing comments;
* an odd number of trailing backslashes joins the next line, the backslash
  becoming a space; comment lines inside a continuation are skipped, and an
  entry's line number is that of its first physical line;
* systemd only logs and skips a line without ``=`` or outside a section; we
  refuse it, naming the file and line, because silently dropping a line of a
  unit is how a typo turns into a different service.

Specifiers (``%n``, ``%i``...) are expanded by :func:`expand_specifiers`, which
the semantic layer calls key by key, because systemd expands them in some
keys, after word splitting in others, and not at all in a few.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, replace

from .errors import UnitError

WHITESPACE = " \t\n\r"
COMMENTS = "#;"
UNIT_SUFFIXES = ("service", "socket", "target", "timer", "mount", "automount", "path",
                 "slice", "scope", "device", "swap")
_NAME_CHARS = re.compile(r"[A-Za-z0-9:_.\\-]+")
_MAX_FILE = 1 << 20  # as loader.MAX_UNIT_FILE (systemd's LONG_LINE_MAX)


@dataclass(frozen=True)
class Entry:
    """One ``Key=Value`` assignment, located to its file and first line."""

    key: str
    value: str
    file: str
    line: int


@dataclass(frozen=True)
class Section:
    """One ``[Name]`` block of one file; a name may repeat, within or across files."""

    name: str
    file: str
    line: int
    entries: tuple[Entry, ...] = ()


def parse_ini(text: str, file: str) -> tuple[Section, ...]:
    """Parse a unit file's text into its sections, in file order.

    Pure. Raises UnitError (``FILE:LINE: message``) for a line that is neither
    a comment, a ``[Section]`` header nor a ``Key=Value`` assignment inside a
    section; never raises anything else.
    """
    sections: list[Section] = []
    current: tuple[str, int] | None = None
    entries: list[Entry] = []
    for line_no, logical in _logical_lines(text):
        stripped = logical.strip(WHITESPACE)
        if not stripped:
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]") or len(stripped) < 3 or "[" in stripped[1:-1] \
                    or "]" in stripped[1:-1]:
                raise UnitError(file, line_no, "", "expected a section header like [Service], "
                                f"found {show(stripped)}")
            if current is not None:
                sections.append(Section(current[0], file, current[1], tuple(entries)))
            current, entries = (stripped[1:-1], line_no), []
            continue
        key, eq, value = stripped.partition("=")
        key = key.strip(WHITESPACE)
        if not eq:
            raise UnitError(file, line_no, "", "expected Key=Value, a [Section] header or a "
                            f"comment, found {show(stripped)}")
        if not key:
            raise UnitError(file, line_no, "", f"expected a key before '=', found {show(stripped)}")
        if current is None:
            raise UnitError(file, line_no, key, "assignment outside of any section; expected a "
                            "[Section] header such as [Unit] or [Service] before it")
        entries.append(Entry(key, value.strip(WHITESPACE), file, line_no))
    if current is not None:
        sections.append(Section(current[0], file, current[1], tuple(entries)))
    return tuple(sections)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Physical lines joined at trailing backslashes, each with its first line number."""
    if text.startswith("\ufeff"):
        text = text[1:]
    out: list[tuple[int, str]] = []
    pending: str | None = None
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        lead = line.lstrip(WHITESPACE)
        if lead and lead[0] in COMMENTS:
            continue  # a comment, even inside a continuation
        if pending is None:
            start = number
        joined = line if pending is None else pending + line
        # systemd looks at the very last character: "\\ " does not continue.
        backslashes = len(joined) - len(joined.rstrip("\\"))
        if backslashes % 2 == 1:
            pending = joined[:-1] + " "
            continue
        pending = None
        out.append((start, joined))
    if pending is not None:
        out.append((start, pending))
    return out


def show(text: str, limit: int = 60) -> str:
    """``repr`` of a value for an error message, shortened when long."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


# ------------------------------------------------------------------ unit names


@dataclass(frozen=True)
class UnitName:
    """A unit name split the way specifiers and template lookup need it.

    ``foo@bar.service``: prefix ``foo``, instance ``bar``, suffix ``service``.
    ``instance`` is None for a plain unit and ``""`` for a template (``foo@.service``).
    """

    full: str
    prefix: str
    instance: str | None
    suffix: str

    @classmethod
    def parse(cls, name: str) -> UnitName:
        """Split a unit name; raise ValueError if it is not one."""
        stem, dot, suffix = name.rpartition(".")
        if not dot or suffix not in UNIT_SUFFIXES or not stem or len(name) > 255:
            raise ValueError(f"expected a unit name like web.service, found {show(name)}")
        prefix, at, instance = stem.partition("@")
        if not _NAME_CHARS.fullmatch(prefix) or prefix[0] in ".-" or (
                at and instance and not _NAME_CHARS.fullmatch(instance)):
            raise ValueError(f"expected a unit name of letters, digits and :_.\\-@, "
                             f"found {show(name)}")
        return cls(name, prefix, instance if at else None, suffix)

    @property
    def stem(self) -> str:
        """The name without its type suffix: ``foo@bar`` (the manager's unit name)."""
        return self.full[: -len(self.suffix) - 1]

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def template(self) -> str:
        """``foo@.service`` for an instance (or a template), else the name itself."""
        return self.full if self.instance is None else f"{self.prefix}@.{self.suffix}"


def unescape_name(text: str) -> str:
    """Undo systemd-escape on a name part: ``-`` is ``/`` and ``\\xNN`` a byte."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "-":
            out += b"/"
        elif c == "\\" and text[i + 1:i + 2] == "x" and re.fullmatch(
                r"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
            out.append(int(text[i + 2:i + 4], 16))
            i += 3
        elif c == "\\":
            raise ValueError(f"expected \\xNN escapes only, found {show(text)}")
        else:
            out += c.encode()
        i += 1
    return out.decode("utf-8", errors="replace")


# ------------------------------------------------------------------ specifiers


@dataclass(frozen=True)
class SpecifierContext:
    """The manager's side of the specifiers: its directories and identity.

    The defaults are a system manager's. ``from_process`` fills them in for the
    user we run as (XDG directories for a non-root user, as ``systemd --user``).
    """

    runtime_dir: str = "/run"
    state_dir: str = "/var/lib"
    cache_dir: str = "/var/cache"
    logs_dir: str = "/var/log"
    config_dir: str = "/etc"
    temp_dir: str = "/tmp"
    var_temp_dir: str = "/var/tmp"
    user: str = "root"
    uid: int = 0
    group: str = "root"
    gid: int = 0
    home: str = "/root"
    hostname: str = "localhost"
    kernel_release: str = ""  # %v (uname -r); "" = not known: %v is refused
    machine_id: str = ""  # %m (/etc/machine-id); "" = not known

    @classmethod
    def from_process(cls) -> SpecifierContext:
        """The context of this process (reads the environment, passwd, group, hostname)."""
        import grp
        import pwd

        uid, gid = os.getuid(), os.getgid()
        try:
            pw = pwd.getpwuid(uid)
            user, home = pw.pw_name, pw.pw_dir
        except KeyError:
            user, home = str(uid), os.environ.get("HOME", "/")
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        env = os.environ
        tmp = env.get("TMPDIR", "")
        try:
            with open("/etc/machine-id", encoding="ascii") as f:
                machine_id = f.read().strip()
        except OSError:
            machine_id = ""
        ctx = cls(user=user, uid=uid, group=group, gid=gid, home=home,
                  hostname=socket.gethostname(), temp_dir=tmp or "/tmp",
                  var_temp_dir=tmp or "/var/tmp", kernel_release=os.uname().release,
                  machine_id=machine_id)
        if uid == 0:
            return ctx
        state = env.get("XDG_STATE_HOME") or f"{home}/.local/state"
        return replace(ctx, runtime_dir=env.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}",
                       state_dir=state, cache_dir=env.get("XDG_CACHE_HOME") or f"{home}/.cache",
                       logs_dir=f"{state}/log",
                       config_dir=env.get("XDG_CONFIG_HOME") or f"{home}/.config")


# Specifiers systemd knows that Aeterna does not expand: refused, not passed through.
_UNSUPPORTED_SPECIFIERS = "aAbBdDlmMoqsvwWyY"


def expand_specifiers(text: str, name: UnitName, ctx: SpecifierContext) -> str:
    """Replace ``%x`` specifiers in ``text`` for unit ``name``; pure.

    Raises:
        ValueError: for an unknown or unsupported specifier, or a lone ``%``
            at the end; the message names it.
    """
    if "%" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        spec = text[i + 1:i + 2]
        if not spec:
            raise ValueError(f"expected a specifier after '%' (write %% for a literal "
                             f"percent sign), found {show(text)}")
        out.append(_specifier(spec, name, ctx))
        i += 2
    return "".join(out)


def _specifier(spec: str, name: UnitName, ctx: SpecifierContext) -> str:
    prefix = name.prefix if name.instance is not None else name.stem
    instance = name.instance or ""
    last = prefix.rpartition("-")[2]
    values = {
        "%": "%", "n": name.full, "N": name.stem, "p": prefix, "i": instance, "j": last,
        "t": ctx.runtime_dir, "S": ctx.state_dir, "C": ctx.cache_dir, "L": ctx.logs_dir,
        "E": ctx.config_dir, "T": ctx.temp_dir, "V": ctx.var_temp_dir,
        "u": ctx.user, "U": str(ctx.uid), "g": ctx.group, "G": str(ctx.gid),
        "h": ctx.home, "H": ctx.hostname,
    }
    if spec in values:
        return values[spec]
    if spec == "v" and ctx.kernel_release:
        return ctx.kernel_release
    if spec == "m" and ctx.machine_id:
        return ctx.machine_id
    if spec in "PIJf":
        raw = {"P": prefix, "I": instance, "J": last, "f": instance or prefix}[spec]
        value = unescape_name(raw)
        if spec == "f":
            return "/" if raw == "-" else "/" + value.lstrip("/")
        return value
    if spec in _UNSUPPORTED_SPECIFIERS:
        raise ValueError(f"specifier %{spec} is not supported by Aeterna")
    raise ValueError(f"unknown specifier %{spec} (write %% for a literal percent sign)")


# ------------------------------------------------------------------ files


@dataclass(frozen=True)
class UnitSource:
    """A unit's text as read: the unit file's sections, then its drop-ins'.

    ``path`` is the file actually read (the template for an instance without a
    file of its own). ``masked`` is systemd's masking: the file is empty or a
    symlink to /dev/null, and the unit must not be loaded.
    """

    name: UnitName
    path: str
    sections: tuple[Section, ...]
    dropins: tuple[str, ...] = ()
    masked: bool = False


def read_unit_with_dropins(path: str | os.PathLike[str]) -> UnitSource:
    """Read ``DIR/NAME`` and its drop-ins: the one function here that does I/O.

    For an instance ``foo@bar.service`` the literal file is tried first, then
    the template ``foo@.service``. Drop-ins are ``*.conf`` files in
    ``NAME.d/``, then ``foo@.service.d/`` (for an instance), then the
    dash-prefix directories (``a-b-.service.d/``, ``a-.service.d/`` for
    ``a-b-c.service``), all in the unit's directory. When two directories hold
    the same file name the first one wins; the survivors apply in file-name
    order. A drop-in that is empty or links to /dev/null masks that name.

    Raises:
        UnitError: the name is not a unit name, a file cannot be read or is
            not UTF-8, or any file has a syntax error.
    """
    path = os.fspath(path)
    directory, base = os.path.split(path)
    try:
        name = UnitName.parse(base)
    except ValueError as exc:
        raise UnitError(path, 0, "", str(exc)) from None
    if name.is_template:
        raise UnitError(path, 0, "", f"{base} is a template; name an instance such as "
                        f"{name.prefix}@NAME.{name.suffix}")
    read = path
    if not os.path.lexists(path) and name.instance is not None:
        read = os.path.join(directory, name.template)
        if not os.path.lexists(read):
            raise UnitError(path, 0, "", f"no such unit file, nor its template {name.template}")
    text = _read_text(read)
    if text is None:
        return UnitSource(name, read, (), masked=True)
    sections = list(parse_ini(text, read))
    dropins = _dropin_files(directory, name)
    for dropin in dropins:
        dropin_text = _read_text(dropin)
        if dropin_text is not None:
            sections.extend(parse_ini(dropin_text, dropin))
    return UnitSource(name, read, tuple(sections), tuple(dropins))


def _dropin_dirs(name: UnitName) -> list[str]:
    """Drop-in directory names for ``name``, most specific first."""
    dirs = [f"{name.full}.d"]
    if name.instance is not None:
        dirs.append(f"{name.template}.d")
    parts = name.prefix.split("-") if name.instance is not None else name.stem.split("-")
    for n in range(len(parts) - 1, 0, -1):
        dirs.append(f"{'-'.join(parts[:n])}-.{name.suffix}.d")
    return dirs


def _dropin_files(directory: str, name: UnitName) -> list[str]:
    chosen: dict[str, str] = {}
    for sub in _dropin_dirs(name):
        full = os.path.join(directory, sub)
        try:
            files = os.listdir(full)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise UnitError(full, 0, "", f"cannot read drop-in directory: {exc.strerror}") \
                from None
        for f in files:
            if f.endswith(".conf") and f not in chosen:
                chosen[f] = os.path.join(full, f)
    return [chosen[f] for f in sorted(chosen)]


def _read_text(path: str) -> str | None:
    """A file's text, or None when it is masked (empty, or a link to /dev/null)."""
    try:
        if os.path.realpath(path) == os.devnull:
            return None
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UnitError(path, 0, "", f"cannot read unit file: {reason}") from None
    if not data:
        return None
    if len(data) > _MAX_FILE:
        raise UnitError(path, 0, "", "expected a unit file of at most 1 MiB, found a larger "
                        "file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnitError(path, 0, "", f"expected UTF-8 text, found an invalid byte at "
                        f"offset {exc.start}") from None
