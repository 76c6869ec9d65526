"""gendist: distributed training of deep generative models (VAEs, GANs) on Accelerate and DeepSpeed.

`gendist.train(config, overrides=[...])` and `gendist.load(run_dir)` are the Python API (gendist/api.py);
they are imported on first use, so `python -m gendist` does not pay for torch before it needs it."""

__all__ = ["train", "load"]


def __getattr__(name: str):
    if name in ("train", "load", "Run", "TrainingStopped"):
        from gendist import api

        return getattr(api, name)
    raise AttributeError(f"module 'gendist' has no attribute '{name}'")
