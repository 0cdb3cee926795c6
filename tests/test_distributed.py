"""llmaccel modules under torch.distributed: DDP fine-tuning on a quantized base (2 CPU ranks, gloo).

The model is what a user fine-tunes: llmaccel.nn.MultiheadAttention, then an
MLP converted by ``quantize_`` to frozen Int8Linear layers whose biases stay
trainable, then a trainable fp32 head.  Each rank takes half of the batch;
DDP must average the gradients so that every rank sees exactly the
full-batch gradient of a single-process run, and after an optimizer step the
ranks must hold identical parameters (and untouched int8 weights).
"""

import os

import pytest
import torch
import torch.distributed as dist

import llmaccel
from helpers import spawn_gloo

WORLD = 2
E, HEADS, L, BATCH = 32, 4, 7, 6


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = llmaccel.nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(E, 3 * E), torch.nn.GELU(), torch.nn.Linear(3 * E, E))
        self.head = torch.nn.Linear(E, 5)

    def forward(self, x):
        h = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(h + self.mlp(h))


def _model():
    torch.manual_seed(1234)
    m = Block()
    llmaccel.quantize_(m, llmaccel.Int8Config(act="dynamic"), filter_fn=lambda mod, name: name.startswith("mlp."))
    assert isinstance(m.mlp[0], llmaccel.nn.Int8Linear) and isinstance(m.head, torch.nn.Linear)
    return m


def _data():
    g = torch.Generator().manual_seed(99)
    return torch.randn(BATCH, L, E, generator=g), torch.randn(BATCH, L, 5, generator=g)


def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def _worker(rank, out_dir):
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x, y = _data()
    shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    loss = torch.nn.functional.mse_loss(ddp(x[shard]), y[shard])
    loss.backward()
    grads = _grads(model)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    torch.save({"grads": grads, "state": model.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_finetune_on_quantized_base_matches_single_process(tmp_path):
    spawn_gloo(_worker, WORLD, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # Single process, full batch: the gradient DDP must reproduce on every rank.
    model = _model()
    x, y = _data()
    torch.nn.functional.mse_loss(model(x), y).backward()
    want = _grads(model)
    frozen = {n: t.clone() for n, t in model.state_dict().items() if t.dtype == torch.int8}
    assert frozen, "the quantized base should hold int8 weights"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"mlp.0.bias", "mlp.2.bias", "head.weight", "attn.in_proj_weight"} <= trainable

    for r, got in enumerate(ranks):
        assert set(got["grads"]) == set(want), r
        for n in want:
            # Per-rank mean losses averaged by DDP == full-batch mean loss; only summation order differs.
            torch.testing.assert_close(got["grads"][n], want[n], atol=1e-6, rtol=1e-5, msg=f"rank {r}: {n}")
        for n, w in frozen.items():
            assert torch.equal(got["state"][n], w), f"rank {r}: int8 weight {n} changed"
    for n, t in ranks[0]["state"].items():
        assert torch.equal(t, ranks[1]["state"][n]), f"ranks disagree on {n} after the step"
