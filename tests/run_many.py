"""Test harness: run several `gendist` commands one after another in one launch (one process group).

    python tests/run_many.py COMMANDS.json                       # one process
    accelerate launch --config_file launch/cpu-ddp.yaml tests/run_many.py COMMANDS.json
    python -m torch.distributed.run --nproc_per_node 2 tests/run_many.py COMMANDS.json

COMMANDS.json is a list of {"argv": [gendist arguments, e.g. "train", CONFIG, "key=value", ...], "stdout": PATH
or null}: with a path, the command's standard output goes to that file (rank r > 0: PATH.rank<r>). Most of a
short integration case is start-up (the launcher and each worker import torch and torch._dynamo, then join
the process group), not the command's work, so the integration tests run the commands of one launcher in one
launch. Each command builds everything from its own arguments (`gendist.cli.main`: config, seed, networks,
data, strategy); the equivalence tests compare such runs with separately launched ones, so state leaking
from one command into the next would fail them. The commands leave the process group when they end
(`gendist.distributed.shutdown`); here it stays up for the next command and is left once at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


def main(path: str) -> int:
    import gendist.distributed as distributed
    from gendist.cli import exit_without_native_teardown
    from gendist.cli import main as gendist_main

    leave_process_group = distributed.shutdown
    distributed.shutdown = lambda: None  # the commands import it when they run: they get this one
    rank = int(os.environ.get("RANK", "0"))
    code = 0
    try:
        for command in json.loads(Path(path).read_text()):
            out = command.get("stdout")
            target = None if out is None else out if rank == 0 else f"{out}.rank{rank}"
            with open(target, "w") if target else contextlib.nullcontext(sys.stdout) as stream:
                with contextlib.redirect_stdout(stream):
                    code = gendist_main(command["argv"])
            print(f"run_many: gendist {' '.join(command['argv'][:2])} exit {code}", flush=True)
            if code != 0:
                break
    finally:
        leave_process_group()
    exit_without_native_teardown(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
