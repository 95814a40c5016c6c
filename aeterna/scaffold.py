"""``aeterna init PROFILE [DIR|-]``: a service's files, rendered from ``templates/``.

A profile is a directory ``templates/<profile>/``: ``profile.yaml`` (its
description, its variables' defaults, the units to validate, the command to
run next) and the files to write, by their path in the output; ``__name__`` in
a path is the ``--name``. The files are jinja2 templates rendered in the
loader's sandbox (``loader/templates.py``), so one profile may include another's
file: the container's unit is the web profile's. The project's own ``units/``
are these renderings with the defaults (tests/pure/test_scaffold.py holds that).

Never overwrites by default: existing files that differ are listed and nothing
is written (exit 1); ``--force`` overwrites them, ``--skip-existing`` leaves
them. A file already as it would be written is "unchanged". After writing, the
units written are validated (exit 2 if one is not valid).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import __version__
from .loader.errors import UnitError, UnitErrors
from .model import UnitSpec
from .results import EXIT_FAILED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    import jinja2

# json, shlex, yaml and jinja2 are imported by the functions that use them: the
# CLI builds this verb's parser on every run, the manager's included.

PROFILES = ("web", "agent", "worker", "socket", "container", "host", "kubernetes")
_PROFILE_KEYS = ("description", "defaults", "choices", "main", "validate", "next")


def builtin_templates() -> str:
    """``aeterna/templates`` in an installed wheel, else the checkout's ``templates/``."""
    here = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(here, "templates")
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(here),
                                                                 "templates")


@dataclass(frozen=True)
class Profile:
    name: str
    directory: str
    description: str
    defaults: dict[str, Any]
    main: str
    validate: tuple[str, ...]
    next: str
    files: tuple[str, ...]  # template paths relative to the profile's directory
    choices: dict[str, tuple[str, ...]]  # the values a variable may take, where limited


@dataclass(frozen=True)
class Rendered:
    path: str  # relative to the output directory
    text: str


def find_profile(name: str, roots: list[str]) -> Profile:
    """The profile ``name`` in the first root that has it; UnitError if none does."""
    for root in roots:
        directory = os.path.join(root, name)
        meta = os.path.join(directory, "profile.yaml")
        if os.path.isfile(meta):
            return _read_profile(name, directory, meta)
    known = sorted({d for r in roots if os.path.isdir(r) for d in os.listdir(r)
                    if os.path.isfile(os.path.join(r, d, "profile.yaml"))})
    raise UnitError(roots[0], 0, "", f"expected a profile, one of {', '.join(known)}; "
                    f"found {name!r}")


def _read_profile(name: str, directory: str, meta: str) -> Profile:
    import yaml

    try:
        with open(meta, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UnitError(meta, getattr(getattr(exc, "problem_mark", None), "line", -1) + 1,
                        "", f"cannot read the profile: {exc}") from None
    if not isinstance(data, dict) or not set(data) <= set(_PROFILE_KEYS):
        raise UnitError(meta, 1, "", f"expected a mapping of {', '.join(_PROFILE_KEYS)}")
    files = []
    for base, dirs, names in os.walk(directory):
        dirs.sort()
        for n in sorted(names):
            rel = os.path.relpath(os.path.join(base, n), directory)
            if rel != "profile.yaml":
                files.append(rel)
    return Profile(name, directory, str(data.get("description", "")),
                   dict(data.get("defaults") or {}), str(data.get("main") or files[0]),
                   tuple(data.get("validate") or ()), str(data.get("next", "")), tuple(files),
                   {str(k): tuple(str(c) for c in v)
                    for k, v in (data.get("choices") or {}).items()})


def context_for(profile: Profile, name: str | None, port: str | None, app: str | None,
                sets: list[str], directory: str) -> dict[str, Any]:
    """The template variables: the profile's defaults, then the options."""
    import shlex

    ctx = dict(profile.defaults)
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise ValueError(f"--set: expected KEY=VALUE, found {item!r}")
        ctx[key] = value
    options: dict[str, str | None] = {"name": name, "port": port, "app": app}
    for key, given in options.items():
        if given is not None:
            ctx[key] = given
    unit = str(ctx.get("name", profile.name))
    from .loader.yaml_units import _UNIT_NAME

    if not _UNIT_NAME.fullmatch(unit) or "@" in unit:
        raise ValueError(f"--name: expected letters, digits and _.:-, found {unit!r}")
    ctx["name"] = unit
    ctx.setdefault("version", __version__)
    # A default may be made of the others ("{{ name }}-units"); a value given is as given.
    explicit = {item.partition("=")[0] for item in sets} | {
        k for k, v in options.items() if v is not None}
    derived = [k for k, v in profile.defaults.items()
               if k not in explicit and isinstance(v, str) and "{{" in v]
    if derived:
        from .loader.templates import render, scaffold_environment

        env = scaffold_environment()
        for key in derived:
            try:
                ctx[key] = render(env, ctx[key], f"{profile.directory}/profile.yaml", ctx)
            except UnitError as exc:
                raise ValueError(f"defaults: {key}: {exc}") from None
    for key, allowed in profile.choices.items():
        if str(ctx.get(key)) not in allowed:
            raise ValueError(f"--set {key}: expected {' or '.join(allowed)}, "
                             f"found {ctx.get(key)!r}")
    if "port" in ctx:
        try:
            ctx["port"] = int(ctx["port"])
        except (TypeError, ValueError):
            raise ValueError(f"--port: expected a port number, found {ctx['port']!r}") from None
        if not 0 < ctx["port"] < 65536:
            raise ValueError(f"--port: expected 1 to 65535, found {ctx['port']}")
    try:
        ctx["argv"] = shlex.split(str(ctx.get("app", "")))
    except ValueError:
        raise ValueError(f"--app: expected a command with balanced quotes, "
                         f"found {ctx.get('app')!r}") from None
    ctx["dir"] = directory
    ctx["absdir"] = os.path.abspath(directory)  # for a bind mount (docker -v wants one)
    return ctx


def _environment(roots: list[str]) -> jinja2.Environment:
    import json
    import shlex

    import jinja2

    from .loader.templates import scaffold_environment

    env = scaffold_environment()
    env.loader = jinja2.FileSystemLoader(roots)
    # A YAML/JSON string or list, quoted so that any text stays one value.
    env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False)
    env.filters["shell"] = lambda v: shlex.join(v) if isinstance(v, list) else shlex.quote(v)
    return env


def render_profile(profile: Profile, ctx: dict[str, Any], roots: list[str]) -> list[Rendered]:
    """Every file of the profile, rendered; UnitError naming the template on failure."""
    import jinja2

    from .loader.templates import render_template

    env = _environment(roots)
    root = os.path.dirname(profile.directory)
    out = []
    for rel in profile.files:
        source = os.path.join(profile.directory, rel)
        try:
            template = env.get_template(os.path.relpath(source, root))
        except jinja2.TemplateSyntaxError as exc:
            raise UnitError(exc.filename or source, exc.lineno or 0, "",
                            f"template syntax error: {exc.message}") from None
        except (OSError, UnicodeDecodeError, jinja2.TemplateNotFound) as exc:
            raise UnitError(source, 0, "", f"cannot read: {exc}") from None
        out.append(Rendered(rel.replace("__name__", ctx["name"]),
                            render_template(template, source, ctx)))
    return out


# --------------------------------------------------------------------------- the verb
def add_parser(sub: Any) -> None:
    p = sub.add_parser("init", help="write a service's unit files (and container, host or "
                       "Kubernetes files) from a profile",
                       description="profiles: " + ", ".join(PROFILES))
    p.add_argument("profile", metavar="PROFILE",
                   help="web, agent, worker, socket, container, host or kubernetes")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR|-",
                   help="where to write (default: .); - writes one file to stdout")
    p.add_argument("--name", help="the unit's name")
    p.add_argument("--port", help="the port the service listens on")
    p.add_argument("--app", help="the command to run, as one string")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other variable of the profile (repeatable)")
    p.add_argument("--template-dir", action="append", default=[], metavar="DIR",
                   help="look for profiles here first (repeatable)")
    p.add_argument("--file", help="with -: which file to write (default: the main one)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--force", action="store_true", help="overwrite files that differ")
    how.add_argument("--skip-existing", action="store_true", help="leave existing files")
    p.add_argument("--dry-run", action="store_true", help="list what would be written")


def run(args: argparse.Namespace) -> int:
    roots = [*args.template_dir, builtin_templates()]
    try:
        profile = find_profile(args.profile, roots)
        ctx = context_for(profile, args.name, args.port, args.app, args.set,
                          "." if args.dir == "-" else args.dir)
        files = render_profile(profile, ctx, roots)
    except (UnitError, ValueError) as exc:
        print(f"aeterna: init: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dir == "-":
        return _to_stdout(profile, ctx, files, args.file)
    return _write(profile, ctx, files, args)


def _to_stdout(profile: Profile, ctx: dict[str, Any], files: list[Rendered],
               wanted: str | None) -> int:
    main = (wanted or profile.main).replace("__name__", ctx["name"])
    chosen = [f for f in files if f.path == main]
    if not chosen:
        print(f"aeterna: init: --file: expected one of {', '.join(f.path for f in files)}, "
              f"found {main!r}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(chosen[0].text)
    others = [f.path for f in files if f.path != main]
    if others:
        print(f"aeterna: init: wrote {main} only (also in this profile: {', '.join(others)};"
              f" --file NAME)", file=sys.stderr)
    return EXIT_OK


def _state(path: str, text: str) -> str:
    if not os.path.lexists(path):
        return "new"
    try:
        with open(path, encoding="utf-8") as f:
            return "unchanged" if f.read() == text else "conflict"
    except (OSError, UnicodeDecodeError):
        return "conflict"


def _write(profile: Profile, ctx: dict[str, Any], files: list[Rendered],
           args: argparse.Namespace) -> int:
    plan = [(f, os.path.join(args.dir, f.path)) for f in files]
    states = {target: _state(target, f.text) for f, target in plan}
    conflicts = [t for t, s in states.items() if s == "conflict"]
    if conflicts and not (args.force or args.skip_existing):
        for t in conflicts:
            print(f"conflict: {t} exists and differs", file=sys.stderr)
        print("aeterna: init: nothing written; --force overwrites, --skip-existing leaves "
              "them", file=sys.stderr)
        return EXIT_FAILED
    verb = ({"new": "would write", "unchanged": "unchanged",
             "conflict": "would overwrite" if args.force else "would skip (exists)"}
            if args.dry_run else
            {"new": "wrote", "unchanged": "unchanged",
             "conflict": "overwrote" if args.force else "skipped (exists)"})
    for f, target in plan:
        state = states[target]
        if args.dry_run:
            print(f"{verb[state]}: {target}")
            continue
        if state == "new" or (state == "conflict" and args.force):
            try:
                _write_file(target, f.text)
            except OSError as exc:
                print(f"aeterna: init: {target}: {exc.strerror}", file=sys.stderr)
                return EXIT_FAILED
        print(f"{verb[state]}: {target}")
    if args.dry_run:
        return EXIT_OK
    rc = _validate([os.path.join(args.dir, v.replace("__name__", ctx["name"]))
                    for v in profile.validate])
    if rc == EXIT_OK and profile.next:
        from .loader.templates import render, scaffold_environment

        print("next: " + render(scaffold_environment(), profile.next, "profile.yaml", ctx))
    return rc


def _write_file(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    if path.endswith((".sh", "entrypoint")):
        os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def _validate(paths: list[str]) -> int:
    if not paths:
        return EXIT_OK
    from .loader import load_paths

    try:
        result = load_paths(paths)
    except UnitErrors as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return EXIT_USAGE
    for u in result.units:
        print(f"valid: {u.source.file}: {u.name}")
    return EXIT_OK


# --------------------------------------------------------------------------- validate
def describe(unit: UnitSpec) -> str:
    """An instance's values once its specifiers (``%i``...) are expanded."""
    import shlex

    s = unit.service
    lines = [f"  command: {shlex.join(s.command)}"]
    lines += [f"  listen: {sock.address} ({sock.name})" for sock in s.sockets]
    lines += [f"  env: {k}={v}" for k, v in s.env]
    return "\n".join(lines)


def show_rendered(paths: list[str], instance: str) -> tuple[int, list[str]]:
    """``aeterna validate web@.yaml --instance 8080``: print each template among
    ``paths`` rendered for the instance; (exit status, the instances to load)."""
    from .loader.instances import TEMPLATE_SUFFIXES, check_instance, is_template_file
    from .loader.templates import render_unit

    try:
        check_instance(instance)
    except ValueError as exc:
        print(f"aeterna: --instance: {exc}", file=sys.stderr)
        return EXIT_USAGE, []
    templates = []
    for p in paths:
        names = sorted(os.listdir(p)) if os.path.isdir(p) else [""]
        templates += [os.path.join(p, n) if n else p for n in names
                      if is_template_file(n or p) and (n or p).endswith(TEMPLATE_SUFFIXES)]
    if not templates:
        print("aeterna: --instance: expected a template (NAME@.yaml) among the paths, "
              "found none", file=sys.stderr)
        return EXIT_USAGE, []
    wanted = []
    for t in templates:
        prefix = os.path.basename(t).partition("@")[0]
        try:
            with open(t, encoding="utf-8") as f:
                text = render_unit(f.read(), t, instance)
        except UnitError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE, []
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{t}: cannot read: {exc}", file=sys.stderr)
            return EXIT_USAGE, []
        print(f"# {t} rendered for {prefix}@{instance}")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        wanted.append(f"{prefix}@{instance}")
    return EXIT_OK, wanted
