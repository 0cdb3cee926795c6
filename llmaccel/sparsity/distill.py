"""``distill_(student, teacher, batches, ...)``: recover a pruned model's accuracy by distilling its dense original.

One-shot pruning (``sparsify_``) moves every output a little; training the kept weights to reproduce the
dense teacher's outputs on unlabelled inputs takes most of that back.  Each step, for one batch ``b``::

    s = output_fn(student(b))        t = output_fn(teacher(b))   (teacher: eval(), no_grad)
    rows: s and t flattened to [R, D] (D = the last dimension, one row per token / sample)

    "cosine":  loss = mean over rows r of  1 - <s_r, t_r> / (|s_r| |t_r|)
    "mse":     loss = mean over all elements of (s - t)**2
    "kl":      loss = T**2 * mean over rows r of  KL(softmax(t_r / T) || softmax(s_r / T))

then one optimizer step (AdamW by default) on the trainable set: the float ``values`` and the ``bias`` of
every :class:`~llmaccel.nn.SparseLinear`, nothing else.

Masks are kept by construction: ``values`` holds only the kept weights (their gradient is read at the
stored positions, ``sparse_linear_layouts.values_grad``), and the pattern lives in buffers (``indices``,
``bitmap``, ...) that no optimizer sees.  A slot pointing at a padding column gets a zero gradient, so it
stays 0 under AdamW (decoupled decay of 0 is 0) and momentum.  Checked anyway: the pattern buffers are
compared with a snapshot after every step (a few bytes per weight group), and every layer's format is
re-validated at the end (``weight_format()``, which rejects a non-zero padding slot).

Every other parameter is frozen for the run (``requires_grad=False``) and its flag restored afterwards,
as are the training flags of both models (the student runs in ``eval()`` unless ``train_mode=True``:
dropout would only add noise to a regression onto the teacher).  Gradients of the student are cleared
(``None``) when ``distill_`` returns.

DistributedDataParallel: pass the DDP-wrapped student and, on each rank, that rank's shard of each
global batch (same number of steps everywhere).  DDP all-reduces (averages) the gradients, so with equal
shard sizes every rank takes the full-batch step of a single process and the replicas stay identical.
DDP fixes at wrap time which parameters it synchronises, so under DDP ``distill_`` does not change any
``requires_grad``: every trainable tensor must already require grad (it raises otherwise), and other
parameters that require grad are synchronised by DDP but never stepped (freeze them before wrapping to
save their backward: ``distill_parameters`` lists the trainable set).  The report's losses are this
rank's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["distill_", "distill_parameters", "DistillReport", "LOSSES"]

_WHERE = "llmaccel.sparsity.distill_"
LOSSES = ("cosine", "mse", "kl")
SCHEDULES = ("constant", "cosine")


@dataclass
class DistillReport:
    """What :func:`distill_` did: ``history`` holds ``(step, mean loss over the steps since the last entry)``."""

    loss: str
    steps: int
    loss_start: float          # the first step's loss (before any update)
    loss_end: float            # mean loss over the last logging window
    history: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    trained: int = 0           # number of trained tensors (values + biases)

    def __str__(self) -> str:
        lines = [f"distill_ ({self.loss} loss): {self.steps} steps, {self.trained} tensors trained, "
                 f"loss {self.loss_start:.5g} -> {self.loss_end:.5g} in {self.seconds:.1f} s"]
        lines += [f"  step {s:>6}: {v:.5g}" for s, v in self.history]
        return "\n".join(lines)


def distill_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of what :func:`distill_` trains: every SparseLinear's float ``values`` and ``bias``.

    int8 ``values`` are buffers (frozen), so of an int8 SparseLinear only the bias trains.  A layer registered
    under several names is listed once.
    """
    from ..nn.sparse_linear import SparseLinear  # here: llmaccel.nn imports this package

    seen, out = set(), []
    for fqn, mod in model.named_modules():
        if not isinstance(mod, SparseLinear):
            continue
        for name in ("values", "bias"):
            p = mod._parameters.get(name)
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append((f"{fqn}.{name}" if fqn else name, p))
    return out


def _unwrap(student: nn.Module) -> tuple[nn.Module, bool]:
    ddp = isinstance(student, nn.parallel.DistributedDataParallel)
    return (student.module if ddp else student), ddp


def _check_args(student, teacher, steps, lr, loss, temperature, log_every, schedule) -> None:
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{_WHERE}: {name} must be an nn.Module, got {type(m).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{_WHERE}: steps must be an int >= 1, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{_WHERE}: lr must be a finite number > 0, got {lr!r}")
    if loss not in LOSSES:
        raise ValueError(f"{_WHERE}: loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{_WHERE}: temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"{_WHERE}: log_every must be an int >= 1, got {log_every!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"{_WHERE}: schedule must be one of {SCHEDULES}, got {schedule!r}")


def _cycle(batches: Iterable) -> Iterator[tuple[int, Any]]:
    """``(position in the pass, batch)`` of ``batches`` over and over; a one-shot iterator is remembered."""
    reiterable = iter(batches) is not batches
    source: Iterable = batches
    seen: list = []
    while True:
        count = 0
        for b in source:
            if not reiterable:
                seen.append(b)
            yield count, b
            count += 1
        if count == 0:
            raise ValueError(f"{_WHERE}: batches yielded no batch")
        if not reiterable:
            source, reiterable = seen, True


def _run(model: nn.Module, batch) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(f"{_WHERE}: each batch must be a Tensor, a dict of model kwargs or a tuple of model args, "
                    f"got {type(batch).__name__}")


def default_output(out) -> Tensor:
    """A tensor output as is; else HF-style ``logits``, then ``last_hidden_state`` (attribute or key)."""
    if isinstance(out, Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        v = getattr(out, key, None)
        if v is None and isinstance(out, Mapping):
            v = out.get(key)
        if isinstance(v, Tensor):
            return v
    raise TypeError(f"{_WHERE}: cannot tell which tensor of a {type(out).__name__} output to compare; "
                    f"pass output_fn (model output -> tensor)")


def distill_loss(s: Tensor, t: Tensor, loss: str, temperature: float = 1.0) -> Tensor:
    """The loss of the module docstring between student rows ``s`` and teacher rows ``t`` (fp32 math)."""
    s = s.float().reshape(-1, s.shape[-1])
    t = t.float().reshape(-1, t.shape[-1])
    if loss == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    if loss == "mse":
        return F.mse_loss(s, t)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature ** 2


def _pattern_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Every SparseLinear's pattern fields (everything but ``values`` and ``bias``): a snapshot to check against."""
    from ..nn.sparse_linear import SparseLinear

    snap = {}
    for fqn, mod in model.named_modules():
        if isinstance(mod, SparseLinear):
            for name in mod._field_names:
                if name != "values":
                    snap[f"{fqn}.{name}"] = getattr(mod, name).detach().clone()
    return snap


def _check_masks(model: nn.Module, snapshot: dict[str, Tensor], step: int, full: bool) -> None:
    from ..nn.sparse_linear import SparseLinear

    now = _pattern_buffers(model)
    for name, before in snapshot.items():
        if not torch.equal(now[name], before):
            raise RuntimeError(f"{_WHERE}: the sparsity pattern field {name!r} changed at step {step}")
    if full:  # padding slots still 0, every field consistent (raises ValueError naming the field otherwise)
        for mod in model.modules():
            if isinstance(mod, SparseLinear):
                mod.weight_format()


def distill_(student: nn.Module, teacher: nn.Module, batches: Iterable, *, steps: int, lr: float,
             loss: str = "cosine", output_fn: Optional[Callable[[Any], Tensor]] = None, temperature: float = 1.0,
             weight_decay: float = 0.0,
             optimizer_fn: Optional[Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = None,
             schedule: str = "constant", train_mode: bool = False, cache_teacher: bool = False,
             log_every: int = 10) -> DistillReport:
    """Distil ``teacher`` (dense) into ``student`` (holding SparseLinear layers) in place (module docstring).

    ``batches``: model inputs, cycled until ``steps`` steps ran: a tensor runs as ``model(b)``, a dict as
    ``model(**b)``, a tuple as ``model(*b)``.  ``output_fn(output) -> Tensor`` picks what is compared
    (default: a tensor output, else ``logits`` or ``last_hidden_state``).  ``temperature``: the softmax
    temperature of ``"kl"``.  The optimizer is ``optimizer_fn(params)`` or ``AdamW(params, lr,
    weight_decay=weight_decay)``; ``schedule="cosine"`` scales its learning rate at step ``i`` (from 0) by
    ``(1 + cos(pi * i / steps)) / 2``, ``"constant"`` leaves it.  ``cache_teacher=True`` keeps the teacher's
    output for each position of the pass and reuses it on later passes (a quarter of a step's compute
    saved; only valid when every pass yields the same inputs, as a list does; memory: one output per
    batch).  Returns a :class:`DistillReport` (losses every ``log_every`` steps).
    """
    _check_args(student, teacher, steps, lr, loss, temperature, log_every, schedule)
    model, ddp = _unwrap(student)
    trained = distill_parameters(model)
    if not trained:
        raise ValueError(f"{_WHERE}: student holds no SparseLinear with a float values or bias parameter to "
                         f"train (run llmaccel.sparsify_ on it first)")
    if ddp:
        frozen_under_ddp = [n for n, p in trained if not p.requires_grad]
        if frozen_under_ddp:
            raise ValueError(f"{_WHERE}: under DistributedDataParallel every trained tensor must require grad "
                             f"when DDP wraps the model (DDP only synchronises those); these do not: "
                             f"{frozen_under_ddp[:4]}")
    output_fn = default_output if output_fn is None else output_fn
    flags = {p: p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in (*model.modules(), *teacher.modules())}
    snapshot = _pattern_buffers(model)
    trained_ids = {id(p) for _, p in trained}
    history: list[tuple[int, float]] = []
    window: list[float] = []
    first = math.nan
    start = time.perf_counter()
    try:
        if not ddp:  # under DDP the flags stay as wrapped (module docstring)
            for p in flags:
                p.requires_grad_(id(p) in trained_ids)
        params = [p for _, p in trained]
        opt = optimizer_fn(params) if optimizer_fn is not None else \
            torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = None
        if schedule == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / steps)))
        teacher.eval()
        model.train(train_mode)
        stream = _cycle(batches)
        targets: dict[int, Tensor] = {}
        for step in range(1, steps + 1):
            position, batch = next(stream)
            target = targets.get(position)
            if target is None:
                with torch.no_grad():
                    target = output_fn(_run(teacher, batch))
                if cache_teacher:
                    targets[position] = target
            got = output_fn(_run(student, batch))
            if not isinstance(got, Tensor) or not isinstance(target, Tensor) or got.shape != target.shape:
                raise ValueError(f"{_WHERE}: output_fn must give tensors of one shape for student and teacher, "
                                 f"got {_shape(got)} and {_shape(target)}")
            value = distill_loss(got, target.detach(), loss, temperature)
            if not bool(torch.isfinite(value)):
                raise FloatingPointError(f"{_WHERE}: the {loss} loss is {value.item()} at step {step} "
                                         f"(lower lr, or check the inputs)")
            student.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if sched is not None:
                sched.step()
            _check_masks(model, snapshot, step, full=step == steps)
            window.append(value.item())
            if step == 1:
                first = window[0]
            if step % log_every == 0 or step == steps:
                history.append((step, sum(window) / len(window)))
                window = []
    finally:
        student.zero_grad(set_to_none=True)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, flag in modes.items():
            m.training = flag
    return DistillReport(loss, steps, first, history[-1][1], history, time.perf_counter() - start, len(trained))


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
