"""`refcoco-edit build` with a planned death, for the kill-and-resume test.

    python -m tests.refcoco_edit.build_worker [--die-before METHOD:N] [--pause-after METHOD:N] -- BUILD ARGS...

`--die-before add_candidates:3` SIGKILLs the process itself just before the 3rd call of
`Store.add_candidates` (so the 3rd sample is stored without its candidates); `--pause-after
add_sample:2` prints "paused" after the 2nd `Store.add_sample` returned and waits, so that the test
can SIGKILL it from outside at a known point. Without either it is the plain CLI.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from refcoco_edit import cli
from refcoco_edit.store import Store


def _arm(spec: str, when: str) -> None:
    method, _, n = spec.partition(":")
    target = int(n)
    original = getattr(Store, method)
    calls = 0

    def wrapper(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if when == "before" and calls == target:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(self, *args, **kwargs)
        if when == "after" and calls == target:
            print("paused", flush=True)
            time.sleep(600)
        return result

    setattr(Store, method, wrapper)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: build_worker [--die-before M:N] [--pause-after M:N] -- BUILD ARGS")
    split = argv.index("--")
    own, rest = argv[:split], argv[split + 1:]
    for flag, when in (("--die-before", "before"), ("--pause-after", "after")):
        if flag in own:
            _arm(own[own.index(flag) + 1], when)
    return cli.main(["build", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
