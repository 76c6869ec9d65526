"""Where a GAN step's time goes on this CPU (eager, torch.profiler): convolutions against the rest, which
bounds what train.compile can gain (inductor leaves convolutions to oneDNN on CPU).

    python benchmarks/profile_step.py resnet|stylegan2
"""
import sys
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from step_overhead import RGB32, write_rgb32
from gendist.config import load_config
from gendist.engine.run import build_trainer
write_rgb32()
arch = sys.argv[1]
tmp = tempfile.mkdtemp()
config = load_config(ROOT / "configs/gan_digits.yaml", [f"model.arch={arch}", f"data.source=npz:{RGB32}",
    "train.batch_size=64", "train.ema_decay=0", f"run.dir={tmp}/run", "log.wandb=false"])
trainer, _ = build_trainer(config)
for _ in range(3):
    trainer.train_step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(3):
        trainer.train_step()
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower() or "mkldnn" in e.key.lower())
mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear"))
print(f"{arch}: total self CPU {total/3e6:.3f} s/step; convolution ops {conv/total:.1%}; matmuls {mm/total:.1%}; rest {(total-conv-mm)/total:.1%}")
for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
    print(f"  {e.key:45s} {e.self_cpu_time_total/total:6.1%}  calls/step {e.count/3:.0f}")
