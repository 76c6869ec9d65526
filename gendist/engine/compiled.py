"""train.compile: every network compiled once with torch.compile, in place, under every strategy.

Each network (not its unit) is compiled: a unit's `forward(member, ...)` dispatches on a string, so compiling
the unit (what DeepSpeed's `engine.compile()` and compiling a DDP wrapper do) would trace one variant per
member and method into a single cache. A network is compiled in place (`_compiled_call_impl`, what
`nn.Module.compile` sets), so its parameters, state-dict keys and checkpoints are the eager ones, every
strategy wraps the same module, and DDP's reducer and ZeRO-1/2's gradient hooks see the compiled backward's
gradients as usual (DDP all-reduces after the compiled backward instead of overlapping it bucket by bucket).

Alternating phases flip `requires_grad` of whole units (pytorch #91542). Dynamo guards on it, so a network
gets one graph per role it plays and keeps all of them: trained (its own phase), frozen with constant inputs
(the generator inside the discriminator's step) and frozen with inputs that need a gradient (the
discriminator inside the generator's step). All of them compile in the first step; a phase switch after that
reuses them (counted: `compile/graphs` must not grow after the first steps, and a growth is reported).

Run eager, with a start-up line saying so:
- phases that differentiate through a gradient (R1, R2, WGAN-GP, path length): AOTAutograd refuses double
  backward through a compiled graph (pytorch #91469); and phases that read weights with torch.func
  (unrolled discriminators), which would substitute new weights at every unrolled step;
- sampling and evaluation (`Trainer.sampling`): other batch sizes, eval mode and no_grad would each compile
  another graph for a few calls;
- a network's own methods (a VAE's `encode`, a joint discriminator's `features`): only `forward` is compiled.
"""
from __future__ import annotations

import contextlib
import time
import types

import torch
from torch import nn

from gendist.errors import UserError


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean torch.compile itself failed (tracing, lowering, the C++/Triton compiler)."""
    from torch._dynamo.exc import TorchDynamoException

    errors: list[type[BaseException]] = [TorchDynamoException]
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:  # older torch: inductor's failures arrive as BackendCompilerFailed
        pass
    return tuple(errors)


def _first_line(error: BaseException) -> str:
    """The line of a compile error that says what failed (dynamo's 'Explanation:' line when it has one)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    explained = [line.removeprefix("Explanation:").strip() for line in lines if line.startswith("Explanation:")]
    return (explained or lines)[0][:400]


def compile_in_place(network: nn.Module, name: str, mode: str, hooks: bool = True) -> None:
    """Make `network(...)` run a torch.compile'd forward; a compile failure is a one-line UserError.

    hooks=True compiles the module's whole call (its forward hooks, e.g. spectral norm's, and its children's,
    inside the graph); hooks=False compiles its `forward` only, so its own hooks (FSDP's all-gather) run eager
    around the graph."""
    target = network._call_impl if hooks else network.forward

    def call(*args, **kwargs):
        return target(*args, **kwargs)

    # One code object per compiled region: dynamo keeps compiled variants, and its recompile limit, per code
    # object; two regions sharing one (nn.Module._call_impl, a class's forward, or this closure's code) would
    # share both.
    code = call.__code__.replace(co_name=f"compiled_{name.replace('.', '_')}")
    call = types.FunctionType(code, call.__globals__, code.co_name, call.__defaults__, call.__closure__)
    compiled = torch.compile(call, mode=None if mode == "default" else mode)
    errors = _compile_errors()

    def guarded(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except errors as error:
            raise UserError(f"train.compile: torch.compile failed on network '{name}' ({type(error).__name__}: "
                            f"{_first_line(error)}); set train.compile=false to train it eager") from None

    if hooks:
        network._compiled_call_impl = guarded  # what nn.Module.__call__ runs when set (see nn.Module.compile)
    else:
        network.forward = guarded  # an instance attribute: parameters, state-dict keys and the class unchanged


def compile_regions(network: nn.Module, name: str) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, hooks) of what compile_in_place compiles for one network: the whole network, or under
    FSDP2 (whose every parameter group is a module with all-gather hooks) each group that holds no other group,
    its forward only, with the glue between groups eager. Dynamo skips FSDP's hooks: compiling across them
    breaks the graph at each one and compiles the frames after each break in code objects every module shares
    (nn.Module._call_impl, a class's forward), so a network with layers of several sizes reaches dynamo's
    recompile limit and falls back to eager layer by layer (measured: a StyleGAN2 pair compiled whole under
    FSDP took 49 graphs and 36 graph breaks by step 10, and hit the limit). torchtitan compiles per block
    for the same reason."""
    from torch.distributed.fsdp import FSDPModule

    if not any(isinstance(module, FSDPModule) for module in network.modules()):
        return [(name, network, True)]
    groups = {child for child in network.modules() if isinstance(child, FSDPModule)}
    return [(f"{name}.{path}" if path else name, module, False) for path, module in network.named_modules()
            if module in groups and not any(other in groups for other in module.modules() if other is not module)]


def eager():
    """Context in which every compiled network runs its plain forward (no compilation, no guard checks)."""
    return torch.compiler.set_stance("force_eager")


def maybe_eager(active: bool):
    return eager() if active else contextlib.nullcontext()


def runs_eager(phase) -> bool:
    """Phases whose networks run eager under train.compile: double backward, or weights read by torch.func
    (gan.unroll_steps: every unrolled step would substitute new weights into the graph)."""
    return bool(phase.double_backward or phase.reads_weights_of)


def _counters() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


class CompileWatch:
    """Graphs compiled and graph breaks since the networks were compiled (this process), reported once at
    the first log line and again only when more graphs appear (a recompilation)."""

    def __init__(self, names: list[str], say):
        self.names, self.say = names, say
        self.graphs0, self.breaks0 = _counters()
        self.started = time.perf_counter()
        self.reported_graphs: int | None = None
        self.reported_step = 0

    def counts(self) -> tuple[int, int]:
        graphs, breaks = _counters()
        return graphs - self.graphs0, breaks - self.breaks0

    def metrics(self, step: int) -> dict[str, float]:
        graphs, breaks = self.counts()
        if self.reported_graphs is None:
            from torch._dynamo.utils import counters

            reasons = sorted(counters["graph_break"].items(), key=lambda item: -item[1])[:3]
            because = "; ".join(f"{count}x {reason.splitlines()[0][:120]}" for reason, count in reasons)
            self.say(f"gendist: train.compile: {graphs} graphs for {', '.join(self.names)} by step {step} "
                     f"({time.perf_counter() - self.started:.0f} s since start-up), {breaks} graph breaks"
                     + (f": {because}" if because else ""))
        elif graphs > self.reported_graphs:
            self.say(f"gendist: warning: train.compile: {graphs - self.reported_graphs} more graphs compiled "
                     f"between steps {self.reported_step} and {step}: a shape, dtype or mode changed (a "
                     "recompilation; TORCH_LOGS=recompiles names the guard)")
        self.reported_graphs, self.reported_step = graphs, step
        return {"compile/graphs": float(graphs), "compile/graph_breaks": float(breaks)}


def check_options(config, strategy_name: str, stage: int, image_data: bool) -> None:
    """Refuse, in one line and before any set-up, the combinations train.compile/channels_last cannot run."""
    if config.train.compile and strategy_name == "deepspeed" and stage == 3:
        raise UserError("train.compile with DeepSpeed ZeRO-3: its parameter-gathering hooks run inside every "
                        "module's forward and need DeepSpeed's own compiler backend; use dist.zero_stage=1 or 2, "
                        "dist.strategy=fsdp, or train.compile=false")
    if config.train.channels_last and strategy_name in ("fsdp", "deepspeed"):
        raise UserError(f"train.channels_last: dist.strategy={strategy_name} flattens parameters into its own "
                        "contiguous buffers, which drops the memory format; use single or ddp, or set "
                        "train.channels_last=false")
    if config.train.channels_last and not image_data:
        raise UserError("train.channels_last applies to image data (N, C, H, W); these data are not images: set "
                        "train.channels_last=false")


def setup_compile(config, units: dict[str, nn.Module], phases, say) -> CompileWatch | None:
    """Compile every network of every unit (after the strategy wrapped them) when train.compile is on."""
    if not config.train.compile:
        return None
    names = [member for unit in units.values() for member in unit]
    regions = [region for unit in units.values() for member, network in unit.items()
               for region in compile_regions(network, member)]
    for name, module, hooks in regions:
        compile_in_place(module, name, config.train.compile_mode, hooks)
    eager_phases = [phase.name for phase in phases if runs_eager(phase)]
    per_group = len(regions) > len(names)  # FSDP2: each parameter group's forward, see compile_regions
    say(f"gendist: train.compile: {', '.join(names)} compiled (mode {config.train.compile_mode}"
        + (f"; {len(regions)} FSDP parameter groups, each its forward, the code between them eager" if per_group
           else "") + f") on their first call; eager: sampling, evaluation"
        + (f", and phases {', '.join(eager_phases)} (they differentiate through a gradient or read weights with "
           "torch.func)" if eager_phases else ""))
    return CompileWatch(names, say)


def setup_channels_last(config, units: dict[str, nn.Module]) -> bool:
    """Convert the units' 4-d weights to channels-last (the trainer converts image batches) when asked."""
    if not config.train.channels_last:
        return False
    for unit in units.values():
        unit.to(memory_format=torch.channels_last)
    return True
