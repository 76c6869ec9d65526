"""Test harness: train several configs one after another in one launch (one process group).

    python tests/train_many.py CASES.json                       # one process
    accelerate launch --config_file launch/cpu-ddp.yaml tests/train_many.py CASES.json
    python -m torch.distributed.run --nproc_per_node 2 tests/train_many.py CASES.json

CASES.json is a list of `gendist train` argument lists (config file, then key=value overrides, each with its
own run.dir). Most of a short integration case is start-up (the launcher and each worker import torch and
torch._dynamo, then join the process group), not training; the integration tests therefore train every case
of one strategy in one launch. Each run builds its networks, data loader and strategy from its own config and
seed (`gendist.engine.run.train`), so a run does not depend on the runs before it in the same process: the
equivalence tests compare these runs with separately launched ones, so a leak between runs would fail them.
The process group stays up between runs and is left once at the end, as `gendist train` leaves it.
"""
from __future__ import annotations

import json
import sys


def main(path: str) -> int:
    from gendist.cli import exit_without_native_teardown
    from gendist.config import load_config
    from gendist.distributed import print0, shutdown
    from gendist.engine.run import train
    from gendist.errors import UserError

    code = 0
    try:
        for args in json.loads(open(path).read()):
            config = load_config(args[0], args[1:])
            code = train(config)
            print0(f"train_many: {config.run.dir} exit {code}")
            if code != 0:
                break
    except UserError as error:
        print(f"gendist: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        code = 2
    finally:
        shutdown()
    exit_without_native_teardown(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
