"""CPU benchmark cases for ``llmaccel.int8_linear`` (``CASES``, registered by :mod:`llmaccel.bench.cases`).

The unit timed is what a model does: a pass of the activations through a
stack of layers, each output feeding the next layer (4096 -> 4096, so the
shapes chain).  Peers run the same stack on the same input:

* ``fp32``  -- ``torch.nn.functional.linear`` with the original fp32 weights
  (what a user runs without quantization);
* ``ao``    -- ``torch.ao.quantization.quantize_dynamic`` int8 Linear (the
  int8 path PyTorch ships for CPUs; fbgemm/x86 engine);
* ``copy``  -- ``Tensor.copy_`` of as many bytes as the int8 stack's weights,
  from a buffer of that size to another: the machine's copy bandwidth in the
  same run.  speedup = copy time / our time = (our weight-stream rate) /
  (bytes copied per second); a read+write-counted copy bandwidth is twice
  the latter.
* ``read``  -- ``llmaccel._C.stream_read`` over the very buffers our kernel
  streams (the packed weights, huge pages and all): one sequential read of
  each byte and nothing else, split over the same threads.  It is the
  ceiling of any decode kernel on this machine, so here speedup = our share
  of it (<= 1 by construction).

Decode stacks 8 layers of 4096 x 4096 (8 x 16 MB int8 = 128 MB, 512 MB in
fp32), far beyond the 32-36 MB L3, so weights stream from DRAM on every pass.
Correctness is checked before timing: our stack against the fp32 stack
(SQNR >= 25 dB; W8A8 at 8 bits gives ~40 dB on these inputs) and, for the
torch.ao peer, its output against the fp32 stack too.

These are the CPU cases; the CUDA ones (Triton backend against bf16
``F.linear``) live in :mod:`llmaccel.bench.cases_int8_linear_cuda`.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Optional

import torch

from .case import Bench, Case, Work, seeded_generator

CASES: list[Case] = []  # collected by the registry (cases.py)

K = N = 4096


def _sqnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    err = (out.double() - ref.double()).pow(2).sum()
    return float(10 * torch.log10(ref.double().pow(2).sum() / err.clamp_min(1e-300)))


@functools.lru_cache(maxsize=3)
def _stack(n_layers: int, seed: int, k: int = K, n: int = N):
    """fp32 nn.Linear layers [n, k] and their llmaccel int8 (weight, scale, bias) quantization.

    Cached (read-only tensors): the four decode cases share one 8-layer stack (640 MB), and the two prefill
    cases their two 1-layer stacks, instead of building and quantizing them again for each case (much of a
    ``--quick`` run's time went there).
    """
    g = seeded_generator(torch.device("cpu"), seed)
    bound = 1.0 / k ** 0.5  # nn.Linear's default init range
    layers = []
    for _ in range(n_layers):
        w = (torch.rand((n, k), generator=g) * 2 - 1) * bound
        b = (torch.rand((n,), generator=g) * 2 - 1) * bound
        scale = w.abs().amax(dim=1) / 127
        wq = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
        layers.append((w, b, wq, scale.float()))
    return tuple(layers)


def _run_stack(layers, x, layer_fn):
    """Layers chain (each output feeds the next) when square; otherwise each
    layer reads x (e.g. the up-projections of several MLPs) and the outputs
    are stacked."""
    if all(lay[0].shape[0] == lay[0].shape[1] for lay in layers):
        y = x
        for lay in layers:
            y = layer_fn(y, lay)
        return y
    return torch.stack([layer_fn(x, lay) for lay in layers])


def _builder(M: int, n_layers: int, n_stacks: int, peer_kind: str, k: int = K, n: int = N, act: str = "dynamic"):
    def build(case: Case, device: torch.device) -> Bench:
        import llmaccel

        if device.type != "cpu":
            raise RuntimeError("the int8_linear CPU cases run on the CPU")
        g = seeded_generator(device, 1)
        # n_stacks independent stacks rotate so consecutive passes never share weights.
        stacks = [_stack(n_layers, seed=10 + s, k=k, n=n) for s in range(n_stacks)]
        xs = [torch.randn((M, k), generator=g) for _ in range(n_stacks)]

        def run_int8(i: int, mode: str):
            j = i % n_stacks
            return _run_stack(stacks[j], xs[j], lambda y, lay: llmaccel.int8_linear(y, lay[2], lay[3], lay[1], act=mode))

        def ours(i: int):
            return run_int8(i, act)

        def fp32(i: int):
            j = i % n_stacks
            return _run_stack(stacks[j], xs[j], lambda y, lay: torch.nn.functional.linear(y, lay[0], lay[1]))

        refs = [fp32(j) for j in range(n_stacks)]

        if peer_kind == "fp32":
            peer = fp32
        elif peer_kind == "dynamic":

            def peer(i: int):
                return run_int8(i, "dynamic")
        elif peer_kind == "ao":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
                ao_stacks = []
                for layers in stacks:
                    seq = torch.nn.Sequential(*[torch.nn.Linear(k, n) for _ in layers])
                    with torch.no_grad():
                        for lin, (w, b, _, _) in zip(seq, layers):
                            lin.weight.copy_(w)
                            lin.bias.copy_(b)
                    ao_stacks.append(torch.ao.quantization.quantize_dynamic(seq, {torch.nn.Linear},
                                                                            dtype=torch.qint8))

            def peer(i: int):
                with torch.no_grad():
                    j = i % n_stacks
                    return _run_stack(list(ao_stacks[j]), xs[j], lambda y, lin: lin(y)) if k != n else ao_stacks[j](xs[j])
        elif peer_kind == "read":
            from .._ext import ext
            from ..ops.int8_linear import packed_weight_cpp

            # The same buffers ours reads: act="dynamic" streams the packed copy (packed on
            # first use, cached per weight tensor), act="weight_only" the int8 weight itself.
            buffers = [[packed_weight_cpp(wq) if act == "dynamic" else wq for _, _, wq, _ in layers]
                       for layers in stacks]
            nthreads = torch.get_num_threads()

            def peer(i: int):
                return [ext().stream_read(p.data_ptr(), p.numel(), nthreads) for p in buffers[i % n_stacks]]
        elif peer_kind == "copy":
            n_bytes = n_layers * n * k
            src = [torch.empty(n_bytes, dtype=torch.int8).random_(-128, 127) for _ in range(n_stacks)]
            dst = [torch.empty(n_bytes, dtype=torch.int8) for _ in range(n_stacks)]

            def peer(i: int):
                j = i % n_stacks
                return dst[j].copy_(src[j])
        else:
            raise ValueError(peer_kind)

        def check(o: Any, p: Any, _state={"j": 0}) -> Optional[str]:
            j = _state["j"] % n_stacks
            _state["j"] += 1
            db = _sqnr_db(o, refs[j])
            if db < 25:
                return f"llmaccel's stack output has SQNR {db:.1f} dB against the fp32 stack (< 25 dB)"
            if peer_kind == "read" and len(p) != n_layers:
                return "the read peer did not read every layer's buffer"
            if peer_kind in ("ao", "dynamic"):
                db_ao = _sqnr_db(p, refs[j])
                if db_ao < 20:
                    return f"the torch.ao peer has SQNR {db_ao:.1f} dB against the fp32 stack (< 20 dB)"
            return None

        def args(i: int):
            j = i % n_stacks
            _, b, wq, s = stacks[j][0]
            return xs[j], wq, s, b, act

        # Decode (M <= 2) streams the weights: GB/s; prefill is compute-bound: GOP/s.
        work = Work(ops=2.0 * M * n * k * n_layers, bytes=float(n_layers * n * k) if M <= 2 else None,
                    bytes_what="int8 weight")
        bench = Bench(ours, peer, work, args, n_stacks)
        bench.check = check
        return bench

    return build


_PEERS = {
    "fp32": ("F.linear fp32", "torch.nn.functional.linear with the unquantized fp32 weights (MKL sgemm/sgemv)"),
    "ao": ("torch.ao dynamic int8", "torch.ao.quantization.quantize_dynamic(nn.Linear, qint8): fbgemm per-tensor "
                                    "dynamic int8 Linear, PyTorch's shipped int8 CPU path"),
    "read": ("read of packed weights", "llmaccel._C.stream_read over the packed weight buffers our kernel streams: "
                                       "the machine's read bandwidth for those bytes, same run (speedup = our share)"),
    "dynamic": ("llmaccel act='dynamic'", "llmaccel.int8_linear(act='dynamic') on the same layers: W8A8, weight "
                                            "streamed in the packed panel layout"),
    "copy": ("memcpy of weight bytes", "Tensor.copy_ of as many bytes as the int8 weights (the copy bandwidth of "
                                       "this machine, measured in the same run)"),
}


def _case(name: str, M: int, n_layers: int, n_stacks: int, peer_kind: str, description: str, k: int = K,
          n: int = N, act: str = "dynamic") -> Case:
    peer, peer_description = _PEERS[peer_kind]
    c = Case(op="int8_linear", name=name, shape=f"M={M} K={k} N={n} x{n_layers} layers" + (f" {act}" if act != "dynamic" else ""),
             device="cpu", peer=peer, peer_description=peer_description, description=description,
             build=_builder(M, n_layers, n_stacks, peer_kind, k, n, act))
    return c


for _kind in ("fp32", "ao", "copy", "read"):
    CASES.append(_case(f"decode-vs-{_kind}", 1, 8, 1, _kind,
                       "one token through 8 chained 4096 x 4096 layers (128 MB of int8 weights per pass, beyond L3)"))
for _kind in ("fp32", "ao"):
    CASES.append(_case(f"prefill-vs-{_kind}", 512, 1, 2, _kind,
                       "512 tokens through one 4096 x 4096 layer (compute-bound; 2 weight sets rotate)"))
for _kind in ("fp32", "ao"):
    CASES.append(_case(f"batch64-vs-{_kind}", 64, 1, 4, _kind,
                       "64 tokens through one 4096 x 4096 layer (4 weight sets rotate: 64 MB, beyond L3)"))
for _kind in ("read", "dynamic"):
    CASES.append(_case(f"wo-decode-vs-{_kind}", 1, 16, 1, _kind,
                       "act='weight_only': one token through 16 up-projections 2048 -> 5632 (184 MB of int8 weights "
                       "per pass, beyond L3)", k=2048, n=5632, act="weight_only"))
