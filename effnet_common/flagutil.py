"""The command line every entry point of the package shares: flag definition, parsing, help, errors.

Each CLI (trainer.task, trainer.prepare, trainer.evaluate, trainer.predict, trainer.export,
serving.client, ...) defines its absl flags only when it runs. Tests and the demo import several
of them into one process, where two CLIs may both have, e.g., --seed or --label_offset, with the
same meaning and default: the first definition serves both, and the flag is declared a key flag
of every command that asks for it, so `--helpfull` lists each command's flags under the
command's own name (not under this module's).

Help is for people: `--help` (and `-h`, `--helpshort`, `-?`) prints the command's `Usage` (what it
does, one example command line) and then its own flags grouped by purpose, the required ones
marked, and exits 0; `--helpfull` adds absl's full list (every module's flags), also exit 0. A
flag's group is the `group=` argument of `define`, a word of the command's choosing ("data",
"model", "outputs", ...): data, input, model and outputs print first (`LEADING_GROUPS`), the
others in the order their first flag was defined, and a flag defined without a group prints under
"other", last, so it is never hidden. `required=True` marks a flag required in the help, or
`required="unless $AIP_MODEL_DIR is set"` says when; the command still checks it itself (absl's
own required check would end in its usage text, not one line):

    flagutil.define("string", "train_data", None, "Training data: ...", group="data", required=True)

A user mistake ends the same way in every command: one line `error: ...` on stderr and exit
status USER_ERROR (2), flag-parsing mistakes included (absl would print its whole usage text).

A command's process ends through `end`: its exit handlers run and its output is flushed, but
the interpreter does not tear TensorFlow's modules and runtime down one object at a time.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import re
import sys
import textwrap
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from absl import app, flags

from effnet_common import errors

USER_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


class FlagError(errors.UserError):
    """A flag value the user must change; the message names the flag and the fix."""


def _calling_module(depth: int = 2) -> str:
    """The importable name of the module that called our caller, as absl itself resolves it
    (a module run as `python -m` is `__main__`, which absl files under sys.argv[0])."""
    name = sys._getframe(depth).f_globals.get("__name__", "")  # pylint: disable=protected-access
    return sys.argv[0] if name == "__main__" else name


OTHER = "other"  # the help group of a flag defined without one


@dataclasses.dataclass(frozen=True)
class FlagHelp:
    """How `--help` shows one flag of one command: its group, and whether (or when) it is required."""
    group: str = OTHER
    required: Union[bool, str] = False


# module -> {flag name: FlagHelp}, in definition order (the order --help lists them in).
_FLAG_HELP: Dict[str, Dict[str, FlagHelp]] = {}


def define(kind: str, name: str, *args, module_name: Optional[str] = None, group: str = OTHER,
           required: Union[bool, str] = False, **kwargs) -> None:
    """flags.DEFINE_<kind>(name, *args, **kwargs) for the calling module, unless `name` exists.

    An existing flag (another command of this process defined it) becomes a key flag of the
    calling module instead, so its --help still lists it. `group` and `required` only shape
    --help (see the module docstring); they change no parsing.
    """
    module = module_name or _calling_module()
    _FLAG_HELP.setdefault(module, {})[name] = FlagHelp(group=group, required=required)
    if name in flags.FLAGS:
        flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])
        return
    getattr(flags, f"DEFINE_{kind}")(name, *args, module_name=module, **kwargs)


# Lines of a TensorFlow error that locate the failing node in a graph: noise for a person.
_GRAPH_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[")


def one_line(error, *, limit: int = 500, first_line: bool = False) -> str:
    """An exception (or text) as one line for a person, at most `limit` characters ('…' where
    cut): the package's one error formatter. TensorFlow's graph-location lines ('Graph execution
    error', 'Detected at node', '[[{{node ...}}]]'), `{{function_node ...}}` prefixes and
    `[Op:...]` suffixes are left out; whitespace is collapsed. `first_line`: only the first line
    kept (for messages followed by a traceback or a dump)."""
    text = error if isinstance(error, str) else str(getattr(error, "message", None) or error or type(error).__name__)
    kept = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(_GRAPH_NOISE)]
    kept = kept[:1] if first_line else kept
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", " ".join(kept) or text)
    text = " ".join(re.sub(r"\s*\[Op:[^\]]*\]( name:\s*\S*)?", "", text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def fail(error) -> None:
    """Ends the command the way every user error ends: `error: ...` on stderr, exit 2."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    sys.exit(USER_ERROR)


# Flags renamed so that one name means one thing in every command: old name -> the new names.
RENAMED = {"model": "--export_dir (trainer.predict, trainer.evaluate) or --model_name (serving.client)",
           "version": "--model_version (serving.client)",
           "cache": "--cache_records (trainer.task)", "nocache": "--nocache_records (trainer.task)",
           "report": "--eval_report (trainer.task)", "noreport": "--noeval_report (trainer.task)"}


def parse_flags(argv: Sequence[str], *, unknown_flag_hint: str = "see --help"):
    """absl parsing whose mistakes are one line and exit 2 (absl: usage text, exit 1); an
    unknown flag gets `unknown_flag_hint` (a command's own, e.g. where its pass-through flags go)."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        unknown = isinstance(e, flags.UnrecognizedFlagError)
        if unknown and e.flagname in RENAMED and e.flagname not in flags.FLAGS:
            fail(f"unknown flag --{e.flagname}: renamed to {RENAMED[e.flagname]}")
        fail(f"{one_line(e)}{f' ({unknown_flag_hint})' if unknown else ''}")
    return None  # unreachable: fail() exits


def adopt_as_main(module: str) -> None:
    """Makes `module`'s key flags the main program's, as absl's own help (--helpfull's first
    section, --helpxml) looks them up under sys.argv[0], which is the console script
    (effnet-train), not trainer/task.py."""
    if module != sys.argv[0]:
        for flag in flags.FLAGS.get_key_flags_for_module(module):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


@dataclasses.dataclass(frozen=True)
class Usage:
    """What a command's --help says before its flags: what it does, in one line, and one command
    line to type; `reference` names where the long reference lives (e.g. docs/training.md)."""
    summary: str
    example: str
    reference: str = ""


_SHORT_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
_FULL_HELP = ("--helpfull", "-helpfull")


def help_request(argv: Sequence[str]) -> Optional[str]:
    """"short" or "full" where argv asks for help before any `--` (what follows `--` belongs to
    another program, e.g. the trainer flags of effnet-submit), else None."""
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg in _SHORT_HELP:
            return "short"
        if arg in _FULL_HELP:
            return "full"
    return None


def _default_text(flag) -> str:
    if isinstance(flag.default, bool):
        return "true" if flag.default else "false"
    if isinstance(flag.default, (list, tuple)):
        return ",".join(str(value) for value in flag.default)
    return str(flag.default)


def _describe(flag, about: FlagHelp) -> List[str]:
    """A flag's lines: its name (with the enum's values), required or its default, then its help."""
    name = f"--[no]{flag.name}" if isinstance(flag, flags.BooleanFlag) else f"--{flag.name}"
    values = getattr(flag.parser, "enum_values", None)
    name += f"={'|'.join(values)}" if values else ""
    if about.required:
        note = "required" if about.required is True else f"required {about.required}"
    else:
        note = "" if flag.default in (None, "", [], ()) else f"default: {_default_text(flag)}"
    head = f"  {name}" + (f"  ({note})" if note else "")
    body = textwrap.fill(" ".join((flag.help or "").split()), width=100, initial_indent=" " * 6,
                         subsequent_indent=" " * 6)
    return [head] + ([body] if body.strip() else [])


# Groups every command that has them lists first, in this order: what goes in, then what comes out.
LEADING_GROUPS = ("data", "input", "model", "outputs")


def _flag_help(module: str, name: str) -> FlagHelp:
    """How `module` defined flag `name` for --help; a flag it declared from another command's
    definitions (trainer.evaluate takes --export_dir from trainer.predict) as that one did."""
    if name in _FLAG_HELP.get(module, {}):
        return _FLAG_HELP[module][name]
    return next((helps[name] for helps in _FLAG_HELP.values() if name in helps), FlagHelp())


def _grouped(module: str) -> List[Tuple[str, List[Tuple[object, FlagHelp]]]]:
    """The module's own flags by group: LEADING_GROUPS first, then the others in the order their
    first flag was defined, "other" (flags defined without a group) last."""
    own = flags.FLAGS.get_key_flags_for_module(module)
    groups: Dict[str, list] = {name: [] for name in LEADING_GROUPS}
    for flag in own:
        about = _flag_help(module, flag.name)
        groups.setdefault(about.group, []).append((flag, about))
    if OTHER in groups:
        groups[OTHER] = groups.pop(OTHER)
    return [(group, members) for group, members in groups.items() if members]


def help_text(module: str, usage: Optional[Usage], *, full: bool = False) -> str:
    """A command's --help: the summary and an example first, then its own flags by group; with
    `full`, absl's list of every flag of every module after them."""
    module = sys.argv[0] if module == "__main__" else module
    lines = [usage.summary, f"example: {usage.example}"] if usage else [f"usage: {module} [flags]"]
    for group, members in _grouped(module):
        lines += ["", f"{group}:"] + [line for flag, about in members for line in _describe(flag, about)]
    more = f"; the reference: {usage.reference}" if usage and usage.reference else ""
    lines += ["", f"Every flag, the libraries' included: --helpfull{more}."]
    if full:
        lines += ["", "All flags, by module:", flags.FLAGS.get_help()]
    return "\n".join(lines) + "\n"


def run(main: Callable, define_flags: Callable[[], None], *, module: Optional[str] = None,
        usage: Optional[Usage] = None, user_errors: Tuple[type, ...] = (),
        unknown_flag_hint: str = "see --help") -> None:
    """Every command's entry point: defines the flags, answers --help (`usage`, then the flags by
    group; exit 0), parses them (mistakes: one line, exit 2), runs `main`, and ends an
    `errors.UserError` (or one of `user_errors`, e.g. an OSError for a command that reads paths the
    user gives) in one `error: ...` line and exit status 2."""
    define_flags()
    module = module or _calling_module()
    adopt_as_main(module)
    asked = help_request(sys.argv)
    if asked:
        try:
            sys.stdout.write(help_text(module, usage, full=asked == "full"))
        except BrokenPipeError:  # `--help | head`: the reader has what it wanted
            pass
        end(0)
    try:
        app.run(guarded(main, user_errors),
                flags_parser=lambda argv: parse_flags(argv, unknown_flag_hint=unknown_flag_hint))
    except SystemExit as done:  # how app.run, fail() and --help end
        end(done.code)


def end(code=0) -> None:
    """Ends a finished command's process with exit status `code` (None: 0; a message: printed,
    then 1, as `sys.exit` does). The exit handlers run (logging's flush, temporary files'
    cleanup) and stdout and stderr are flushed; then `os._exit` skips the interpreter's
    teardown: with TensorFlow loaded that is 0.8-0.9 s of every command (measured here on
    2 cores: 4.3-5.1 s for import, one op and exit, against 3.4-4.3 s), spent freeing memory
    the operating system frees anyway. Every file a command writes is closed before it
    returns, so nothing is lost."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # pylint: disable=protected-access  # what interpreter exit runs first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to lose
            pass
    os._exit(code)


def guarded(main: Callable, user_errors: Tuple[type, ...] = ()) -> Callable:
    """`main` with the user's mistakes ended by `fail` (one line, exit 2) and Ctrl-C by one
    `interrupted: ...` line (exit 130) instead of a traceback."""
    def run_guarded(argv):
        try:
            return main(argv)
        except (errors.UserError, *user_errors) as e:
            fail(e)
        except KeyboardInterrupt as e:
            print(f"interrupted: {one_line(str(e)) if str(e) else 'stopped by Ctrl-C'}", file=sys.stderr)
            sys.exit(INTERRUPTED)
    return run_guarded


def check_folder(flag: str, path: Optional[str]) -> None:
    """Refuses a folder flag that names an existing file, before anything is written under it.

    Raises:
      FlagError: `--model_dir=PATH is a file, not a folder: ...`.
    """
    if not path or path.startswith("gs://"):
        return  # a bucket path is checked for writing before training (gcs.check_writable), not here
    if os.path.exists(path) and not os.path.isdir(path):  # local: no TensorFlow needed to say so
        raise FlagError(f"--{flag}={path} is a file, not a folder: pass a folder (it is created if missing), "
                        "or move the file away")
