"""The parser child: limits itself, runs one reader, writes its text to a file.

Started by `tools.parsing` as ``python -I -c BOOT SYS_PATH READER SOURCE OUT
MEMORY CPU TEXT``; imports nothing of the engine. Exit codes: 0 the text is in
OUT; 2 the reader refused or failed (``type\\nmessage`` on stderr); 3 out of
memory. The CPU limit ends it with SIGXCPU (then SIGKILL), the text limit with
SIGXFSZ.
"""

from __future__ import annotations

import importlib
import resource
import sys
from pathlib import Path
from typing import Any

BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
        "from tools._parse_child import main; main(sys.argv[2:])")


def _limit(memory: int, cpu: int, text: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (text, text))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _function(target: str) -> Any:
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv: list[str]) -> None:
    target, source, out, memory, cpu, text = argv
    _limit(int(memory), int(cpu), int(text))
    try:
        from tools.readers import read

        result = read(_function(target), Path(source))
        Path(out).write_text(result, encoding="utf-8", errors="replace")
    except MemoryError:
        sys.stderr.write("MemoryError\n")
        sys.stderr.flush()
        raise SystemExit(3) from None
    except Exception as exc:
        sys.stderr.write(f"{type(exc).__name__}\n{exc}")
        sys.stderr.flush()
        raise SystemExit(2) from None
