"""llmaccel.sparsity.distill_: a 2:4-pruned (and unstructured / block / int8) student distilled from its dense
copy: the loss falls (measured independently, in float64), the masks stay, nothing but SparseLinear values and
biases moves, flags are restored, bad arguments raise, and a 2-rank gloo DDP run equals one process."""

import copy
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import llmaccel
from llmaccel.nn import SparseLinear
from llmaccel.sparsity import distill_, distill_parameters

from helpers import spawn_gloo

# Odd sizes on purpose: HID = 90 is not a multiple of 4, so the 2:4 weight of `down` has a padded last group.
V, E, HID, L = 37, 36, 90, 7


class Block(nn.Module):
    """BERT's layer in miniature (post-norm, the Linears all-MiniLM-L6-v2 has: query/key/value/output/up/down)."""

    def __init__(self):
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(E, E) for _ in range(4))
        self.up, self.down = nn.Linear(E, HID), nn.Linear(HID, E)
        self.norm1, self.norm2 = nn.LayerNorm(E), nn.LayerNorm(E)

    def forward(self, x):
        scores = self.query(x) @ self.key(x).transpose(-1, -2) / E ** 0.5
        x = self.norm1(x + self.out(torch.softmax(scores, dim=-1) @ self.value(x)))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class Encoder(nn.Module):
    """Token ids -> hidden states [B, L, E]; ``hf=True`` returns an HF-like object with ``last_hidden_state``."""

    def __init__(self, hf=False):
        super().__init__()
        self.hf = hf
        self.embed = nn.Embedding(V, E)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.final_norm = nn.LayerNorm(E)

    def forward(self, ids, scale=None):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        x = self.final_norm(x)
        if scale is not None:
            x = x * scale
        return SimpleNamespace(last_hidden_state=x) if self.hf else x


def _pair(config=None, seed=0, hf=False):
    torch.manual_seed(seed)
    teacher = Encoder(hf).eval()
    with torch.no_grad():  # a non-trivial LayerNorm affine, so freezing it is observable
        for m in teacher.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    student = copy.deepcopy(teacher)
    summary = llmaccel.sparsify_(student, config or llmaccel.SparsityConfig())
    assert len(summary.swapped) == 12
    return student, teacher


def _batches(n, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (batch, L), generator=g) for _ in range(n)]


def _cosine_gap64(student, teacher, batches):
    """Mean over tokens of 1 - cos(student, teacher), computed in float64 outside distill_."""
    with torch.no_grad():
        s = torch.cat([student(b).reshape(-1, E) for b in batches]).double()
        t = torch.cat([teacher(b).reshape(-1, E) for b in batches]).double()
    return float((1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))).mean())


def _pruned(model):
    """{fqn: bool mask of the zeros of to_dense()} for every SparseLinear."""
    return {n: m.to_dense() == 0 for n, m in model.named_modules() if isinstance(m, SparseLinear)}


@pytest.mark.parametrize("config,loss", [
    (llmaccel.SparsityConfig(), "cosine"),
    (llmaccel.SparsityConfig(), "mse"),
    (llmaccel.SparsityConfig(), "kl"),
    (llmaccel.SparsityConfig(pattern="unstructured", sparsity=0.7), "cosine"),
    (llmaccel.SparsityConfig(pattern="block", sparsity=0.5, block_size=(4, 4)), "cosine"),
])
def test_distill_lowers_the_loss_and_keeps_the_masks(config, loss):
    student, teacher = _pair(config)
    batches = _batches(3, 4)
    held_out = _batches(2, 4, seed=7)
    zeros = _pruned(student)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters()
              if not n.endswith((".values", ".bias")) or "norm" in n}
    assert any("embed" in n for n in frozen) and any("norm" in n for n in frozen)
    teacher_state = copy.deepcopy(teacher.state_dict())
    student.blocks[0].norm1.weight.requires_grad_(False)   # a mixed set of flags, to see them restored
    flags = {n: p.requires_grad for n, p in student.named_parameters()}
    student.train()
    values_before = {n: p.detach().clone() for n, p in distill_parameters(student)}
    gap_before = _cosine_gap64(student, teacher, batches)
    held_before = _cosine_gap64(student, teacher, held_out)

    report = distill_(student, teacher, batches, steps=40, lr=2e-3, loss=loss, weight_decay=0.05, log_every=10,
                      schedule="cosine" if loss == "mse" else "constant")

    gap_after = _cosine_gap64(student, teacher, batches)
    assert gap_before > 1e-3, "pruning should have moved the outputs"
    assert gap_after < 0.6 * gap_before, (gap_before, gap_after, str(report))
    assert _cosine_gap64(student, teacher, held_out) < held_before
    assert report.loss_end < report.loss_start and [s for s, _ in report.history] == [10, 20, 30, 40]
    for n, z in _pruned(student).items():   # the same zeros: pruned weights stayed 0, kept ones are non-zero
        assert torch.equal(z, zeros[n]), n
    for n, p in distill_parameters(student):
        assert not torch.equal(p, values_before[n]), f"{n} did not train"
    for n, t in frozen.items():
        assert torch.equal(dict(student.named_parameters())[n], t), f"frozen {n} changed"
    assert {n: p.requires_grad for n, p in student.named_parameters()} == flags
    assert all(p.grad is None for p in student.parameters())
    assert student.training and all(m.training for m in student.modules()) and not teacher.training
    for n, t in teacher.state_dict().items():
        assert torch.equal(t, teacher_state[n]), n


def test_int8_student_trains_only_its_biases():
    student, teacher = _pair(llmaccel.SparsityConfig(quantize="int8"))
    trained = [n for n, _ in distill_parameters(student)]
    assert trained and all(n.endswith(".bias") for n in trained)
    ints = {n: t.clone() for n, t in student.state_dict().items() if t.dtype == torch.int8}
    batches = _batches(2, 4)
    before = _cosine_gap64(student, teacher, batches)
    distill_(student, teacher, batches, steps=20, lr=5e-3)
    assert _cosine_gap64(student, teacher, batches) < before
    assert all(torch.equal(student.state_dict()[n], t) for n, t in ints.items())


def test_dict_batches_a_one_shot_iterator_and_hf_outputs():
    student, teacher = _pair(hf=True)
    data = [{"ids": b, "scale": torch.tensor(2.0)} for b in _batches(2, 3)]
    it = iter(data)   # a one-shot iterator is remembered and cycled
    report = distill_(student, teacher, it, steps=6, lr=1e-3, log_every=4)
    assert [s for s, _ in report.history] == [4, 6] and report.steps == 6
    assert "6 steps" in str(report)
    # output_fn picks what is compared: here only the first token
    report = distill_(student, teacher, data, steps=2, lr=1e-3, output_fn=lambda o: o.last_hidden_state[:, 0])
    assert report.loss_end > 0


def test_cache_teacher_gives_the_same_student():
    """The teacher runs once per batch position; with a list the targets are the same, so the steps are too."""
    runs = []
    for cache in (False, True):
        student, teacher = _pair()
        calls = []
        teacher.register_forward_hook(lambda *a: calls.append(1))
        distill_(student, teacher, _batches(2, 3), steps=5, lr=1e-3, cache_teacher=cache)
        runs.append((student.state_dict(), len(calls)))
    assert runs[0][1] == 5 and runs[1][1] == 2
    for n, t in runs[0][0].items():
        assert torch.equal(t, runs[1][0][n]), n


def test_cosine_schedule_sets_each_steps_lr():
    import math
    student, teacher = _pair()
    seen = []

    def sgd(params):
        opt = torch.optim.SGD(params, lr=0.01)
        opt.register_step_pre_hook(lambda o, *a: seen.append(o.param_groups[0]["lr"]))
        return opt

    distill_(student, teacher, _batches(1, 2), steps=4, lr=0.01, optimizer_fn=sgd, schedule="cosine")
    assert seen == pytest.approx([0.01 * (1 + math.cos(math.pi * i / 4)) / 2 for i in range(4)], rel=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(steps=2.0), "steps must be an int >= 1"),
    (dict(lr=0.0), "lr must be a finite number > 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(loss="l1"), "loss must be one of"),
    (dict(loss="kl", temperature=0), "temperature must be"),
    (dict(log_every=0), "log_every must be"),
    (dict(schedule="linear"), "schedule must be one of"),
])
def test_bad_arguments_raise(kwargs, match):
    student, teacher = _pair()
    args = dict(steps=2, lr=1e-3) | kwargs
    with pytest.raises(ValueError, match=f"llmaccel.sparsity.distill_: {match}"):
        distill_(student, teacher, _batches(1, 2), **args)


def test_bad_models_and_batches_raise():
    student, teacher = _pair()
    with pytest.raises(ValueError, match="distill_: student holds no SparseLinear"):
        distill_(copy.deepcopy(teacher), teacher, _batches(1, 2), steps=1, lr=1e-3)
    with pytest.raises(TypeError, match="distill_: teacher must be an nn.Module"):
        distill_(student, lambda x: x, _batches(1, 2), steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="distill_: batches yielded no batch"):
        distill_(student, teacher, [], steps=1, lr=1e-3)
    with pytest.raises(TypeError, match="distill_: each batch must be"):
        distill_(student, teacher, [3], steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="output_fn must give tensors of one shape"):
        distill_(student, teacher, _batches(1, 2), steps=1, lr=1e-3,
                 output_fn=lambda o: o[:, :1] if o.requires_grad else o)
    with pytest.raises(FloatingPointError, match="distill_: the cosine loss is nan at step 1"):
        distill_(student, teacher, _batches(1, 2), steps=1, lr=1e-3, output_fn=lambda o: o * float("nan"))
    # after each failure the student is as it was: flags back, no gradient left behind
    assert all(p.requires_grad for p in student.parameters()) and all(p.grad is None for p in student.parameters())


# ---------------------------------------------------------------------------------------------- DDP

WORLD, GLOBAL_BATCH, STEPS = 2, 6, 3


def _ddp_run(student, teacher, global_batches, rank, world):
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    # SGD with momentum: Adam's g / sqrt(v) would amplify the last-bit differences of the two summation orders
    return distill_(student, teacher, [b[shard] for b in global_batches], steps=STEPS, lr=0.05,
                    optimizer_fn=lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9))


def _ddp_worker(rank, out_dir):
    student, teacher = _pair()
    ddp = nn.parallel.DistributedDataParallel(student)   # every parameter requires grad at wrap time
    _ddp_run(ddp, teacher, _batches(2, GLOBAL_BATCH), rank, WORLD)
    torch.save(student.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_distill_matches_one_process(tmp_path):
    spawn_gloo(_ddp_worker, WORLD, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    student, teacher = _pair()
    start = copy.deepcopy(student.state_dict())
    _ddp_run(student, teacher, _batches(2, GLOBAL_BATCH), 0, 1)
    want = student.state_dict()
    trained = {n for n, _ in distill_parameters(student)}
    for n, w in want.items():
        assert torch.equal(ranks[0][n], ranks[1][n]), f"ranks disagree on {n}"
        if n in trained:
            torch.testing.assert_close(ranks[0][n], w, atol=2e-6, rtol=1e-5, msg=n)
            if n.endswith("key.bias"):   # it adds q . b_k to every score of a query: softmax cancels it
                torch.testing.assert_close(w, start[n], atol=1e-7, rtol=0, msg=n)
            else:
                assert not torch.equal(w, start[n]), f"{n} did not train"
        else:   # synchronised by DDP (it required grad when wrapped) but never stepped
            assert torch.equal(ranks[0][n], start[n]), f"{n} is not trained by distill_ but changed"


def test_ddp_needs_the_trained_tensors_to_require_grad(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        student, teacher = _pair()
        student.blocks[0].query.values.requires_grad_(False)
        ddp = nn.parallel.DistributedDataParallel(student)
        with pytest.raises(ValueError, match="under DistributedDataParallel every trained tensor must require"):
            distill_(ddp, teacher, _batches(1, 2), steps=1, lr=1e-3)
    finally:
        dist.destroy_process_group()
