#!/usr/bin/env python
"""A whole decoder through transformers ``generate``: tokens/s and accuracy of llmaccel vs fp32 and torch.ao.

    python bench/decoder_generate.py                 # 8 layers, hidden 2048, GQA 32/8, 32000-token head
    python bench/decoder_generate.py --reps 5 --json out.json
    python bench/decoder_generate.py --quick         # tiny model, a few tokens: a CI smoke run, seconds

The model is a Llama-style ``LlamaForCausalLM`` built from a ``LlamaConfig`` with random weights
(``torch.manual_seed``; vocab 32000, hidden 2048, intermediate 5632, 8 layers, 32 query / 8 key-value
heads, an untied output head; every size is an option).  Each configuration is a deep copy of that one
fp32 model:

* ``fp32``          -- the model as built (``attn_implementation="sdpa"``, transformers' default);
* ``wo-head-fp32``  -- ``llmaccel.optimize(attention=True, quantize="int8-weight-only", quantize_head=False)``:
  int8 weight-only Linears, the output head kept fp32;
* ``wo``            -- the same with ``optimize``'s default head policy (an untied head is quantized too);
* ``w8a8``          -- ``llmaccel.optimize(attention=True, quantize="int8", quantize_head=True)``: W8A8
  dynamic (per-token int8 activations, integer dot products), head included: torch.ao's scheme, with 8-bit
  activations where torch.ao keeps 7 (``reduce_range``), no calibration (torch.ao has none either);
* ``torch.ao``      -- ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)``
  (W8A8 dynamic, fbgemm; it quantizes the head too).

Timing: each configuration runs ``model.generate(input_ids, max_new_tokens=N, min_new_tokens=N,
do_sample=False, use_cache=True)`` at batch 1 from a fixed random prompt.  A ``LogitsProcessor`` (called
once per generated token, right after that step's forward) records ``time.perf_counter()``; the first
stamp closes the prefill, and **decode ms/token = (last stamp - first stamp) / (N - 1)**: the N - 1
single-token forwards with everything ``generate`` does between them (cache update, logits processing,
argmax).  Prefill ms is start-to-first-stamp.  The configurations run round-robin, one generate each
per repetition (so load drift on a shared machine hits all alike); the table gives the median over
repetitions and, for the ratios, the median of each repetition's ratio.

Accuracy, against the fp32 model:

* greedy agreement: the share of the N generated tokens equal to fp32's at the same position, and the
  first position where they differ (random weights make greedy text degenerate and one early flip changes
  everything after it, so this is a weak signal);
* first step: max and mean |logit - fp32 logit| of the prompt's last position, relative to the fp32
  logits' standard deviation;
* teacher-forced top-1: one forward over ``--tf-batch`` x ``--tf-len`` random tokens; the share of
  positions whose argmax matches fp32's (and top-5 containment of fp32's argmax): the fairer signal.

Weight bytes: parameters and buffers (shared tensors once) plus torch.ao's packed int8 weights; "read per
token" leaves out the embedding table (a decode step reads one row of it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn

ALL_CONFIGS = ("fp32", "wo-head-fp32", "wo", "w8a8", "torch.ao")


def build_model(layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int, seed: int):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, tie_word_embeddings=False,
                                   max_position_embeddings=4096)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = None  # never stop early
    return model


def make_config(base: nn.Module, name: str) -> nn.Module:
    import llmaccel

    model = copy.deepcopy(base)
    if name == "fp32":
        return model
    if name == "wo-head-fp32":
        return llmaccel.optimize(model, attention=True, quantize="int8-weight-only", quantize_head=False)
    if name == "wo":
        return llmaccel.optimize(model, attention=True, quantize="int8-weight-only")
    if name == "w8a8":
        return llmaccel.optimize(model, attention=True, quantize="int8", quantize_head=True)
    if name == "torch.ao":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    raise ValueError(f"unknown configuration {name!r}; choose from {ALL_CONFIGS}")


def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(all weight bytes, bytes a decode step reads: all but the embedding table)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    for m in model.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):  # torch.ao dynamic Linear
            w, b = packed._weight_bias()
            total += w.numel() * w.element_size() + (b.numel() * b.element_size() if b is not None else 0)
            total += 8 * (w.q_per_channel_scales().numel() if w.qscheme() != torch.per_tensor_affine else 1)
    emb = model.get_input_embeddings().weight
    return total, total - emb.numel() * emb.element_size()


class _Stamps:
    """LogitsProcessor: a perf_counter stamp per generated token (after that step's forward)."""

    def __init__(self):
        self.t: list[float] = []

    def __call__(self, input_ids, scores):
        self.t.append(time.perf_counter())
        return scores


def timed_generate(model, ids: torch.Tensor, new_tokens: int) -> dict:
    from transformers import LogitsProcessorList

    stamps = _Stamps()
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             use_cache=True, logits_processor=LogitsProcessorList([stamps]))
        t1 = time.perf_counter()
    s = stamps.t
    assert len(s) == new_tokens, (len(s), new_tokens)
    decode = (s[-1] - s[0]) / (new_tokens - 1) if new_tokens > 1 else float("nan")
    return {"tokens": out[0, ids.shape[1]:].tolist(), "prefill_ms": 1e3 * (s[0] - t0),
            "decode_ms": 1e3 * decode, "total_s": t1 - t0}


def accuracy(model, ref_model, ids, tf_ids, ref_cache: dict) -> dict:
    with torch.inference_mode():
        if "first" not in ref_cache:
            ref_cache["first"] = ref_model(ids).logits[0, -1].double()
            ref_cache["tf"] = ref_model(tf_ids).logits.double()
        first = model(ids).logits[0, -1].double()
        tf = model(tf_ids).logits.double()
    rf, rtf = ref_cache["first"], ref_cache["tf"]
    scale = float(rf.std())
    d = (first - rf).abs()
    ref_top1 = rtf.argmax(-1)
    top5 = tf.topk(5, dim=-1).indices
    return {"first_step_max_abs_rel": float(d.max()) / scale, "first_step_mean_abs_rel": float(d.mean()) / scale,
            "first_step_top1_same": bool(first.argmax() == rf.argmax()),
            "tf_top1_agreement": float((tf.argmax(-1) == ref_top1).double().mean()),
            "tf_top5_contains_fp32_top1": float((top5 == ref_top1[..., None]).any(-1).double().mean()),
            "tf_positions": int(ref_top1.numel())}


LINEAR_OPS = ("llmaccel::int8_linear", "aten::mm", "aten::addmm", "aten::bmm", "quantized::linear_dynamic",
              "aten::_weight_int8pack_mm")
ATTENTION_OPS = ("llmaccel::attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_attention_math", "aten::scaled_dot_product_attention")


class _StartProfilerAfterPrefill:
    """LogitsProcessor: starts the profiler at its first call, i.e. once the prefill forward is done."""

    def __init__(self, prof):
        self.prof, self.started = prof, False

    def __call__(self, input_ids, scores):
        if not self.started:
            self.prof.start()
            self.started = True
        return scores


def profile_decode(model, ids: torch.Tensor, tokens: int, vocab: int) -> dict:
    """torch.profiler over ``tokens`` decode steps of ``generate`` (started right after the prefill): self
    CPU ms per decode step in the head (a linear-kind op with a ``vocab``-sized input), the other linears,
    attention, and everything else (norms, SiLU, mul, rotary, cache update, generate's own work).
    torch.ao's ``quantized::linear_dynamic`` records no weight shape (packed params), so its head is counted
    under the linears."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import LogitsProcessorList

    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=tokens + 1, min_new_tokens=tokens + 1, do_sample=False, use_cache=True,
                       logits_processor=LogitsProcessorList([_StartProfilerAfterPrefill(prof)]))
    prof.stop()
    per = {"head": 0.0, "linears": 0.0, "attention": 0.0, "glue": 0.0}
    top: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        ms = e.self_cpu_time_total / 1e3 / tokens
        if e.key in LINEAR_OPS:
            dims = {d for shape in e.input_shapes for d in (shape or [])}
            per["head" if vocab in dims else "linears"] += ms
        elif e.key in ATTENTION_OPS or "attention" in e.key:
            per["attention"] += ms
        else:
            per["glue"] += ms
        top[e.key] = top.get(e.key, 0.0) + ms
    ops = sorted(top.items(), key=lambda kv: -kv[1])[:8]
    return {"per_step_ms": per, "total_ms": sum(per.values()), "top_ops_ms": dict(ops)}


def _uptime() -> str:
    try:
        return " ".join(f"{x}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3, help="round-robin repetitions (after one warm-up round)")
    ap.add_argument("--tf-batch", type=int, default=4)
    ap.add_argument("--tf-len", type=int, default=64)
    ap.add_argument("--configs", default=",".join(ALL_CONFIGS), help=f"comma-separated subset of {ALL_CONFIGS}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads for every configuration (llmaccel's kernels use the same count); "
                         "0 keeps torch's default. On a machine other jobs load, 1 thread can be faster: a "
                         "2-thread parallel region waits for its descheduled thread")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke: 2 layers, hidden 128, intermediate 256, 4/2 heads, vocab 512, 8 new tokens, "
                         "1 repetition")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N decode steps of each configuration (torch.profiler; self CPU ms per step "
                         "in the head, the other linears, attention, glue)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab = 2, 128, 256, 4, 2, 512
        args.prompt, args.new_tokens, args.reps, args.tf_batch, args.tf_len = 8, 8, 1, 2, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in ALL_CONFIGS:
            ap.error(f"unknown configuration {c!r}; choose from {ALL_CONFIGS}")
    if "fp32" not in configs:
        configs.insert(0, "fp32")  # the reference for ratios and accuracy

    load_start = _uptime()
    t_build = time.perf_counter()
    base = build_model(args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab,
                       args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, args.vocab, (1, args.prompt), generator=gen)
    tf_ids = torch.randint(0, args.vocab, (args.tf_batch, args.tf_len), generator=gen)
    models = {c: make_config(base, c) for c in configs}
    del base
    build_s = time.perf_counter() - t_build
    reports = {c: str(getattr(m, "llmaccel_report", "")) for c, m in models.items()}

    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for c in configs:  # warm-up round (untimed): first-call allocations, dispatch caches
        timed_generate(models[c], ids, min(4, args.new_tokens))
    for _ in range(args.reps):
        for c in configs:
            runs[c].append(timed_generate(models[c], ids, args.new_tokens))

    ref_cache: dict = {}
    ref_tokens = runs["fp32"][0]["tokens"]
    results = {}
    for c in configs:
        dec = [r["decode_ms"] for r in runs[c]]
        total, read = weight_bytes(models[c])
        toks = runs[c][0]["tokens"]
        agree = [a == b for a, b in zip(toks, ref_tokens)]
        row = {"decode_ms": statistics.median(dec), "decode_ms_all": dec,
               "tok_per_s": 1e3 / statistics.median(dec),
               "prefill_ms": statistics.median(r["prefill_ms"] for r in runs[c]),
               "vs_fp32": statistics.median(f["decode_ms"] / r["decode_ms"] for f, r in zip(runs["fp32"], runs[c])),
               "weight_bytes": total, "read_bytes_per_token": read,
               "greedy_agreement": sum(agree) / len(agree),
               "greedy_first_diff": next((i for i, a in enumerate(agree) if not a), None),
               "deterministic": all(r["tokens"] == toks for r in runs[c])}
        if "torch.ao" in runs:
            row["vs_torch_ao"] = statistics.median(a["decode_ms"] / r["decode_ms"]
                                                   for a, r in zip(runs["torch.ao"], runs[c]))
        row.update(accuracy(models[c], models["fp32"], ids, tf_ids, ref_cache))
        results[c] = row

    profiles = {c: profile_decode(models[c], ids, args.profile, args.vocab) for c in configs} if args.profile else {}

    out = {"model": {k: getattr(args, k) for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab",
                                                  "prompt", "new_tokens", "reps", "seed", "quick")},
           "torch_threads": torch.get_num_threads(), "build_s": build_s,
           "loadavg_start": load_start, "loadavg_end": _uptime(), "results": results, "reports": reports,
           "profiles": profiles}
    _print_table(out)
    if args.json:
        text = json.dumps(out, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return out


def _print_table(out: dict) -> None:
    m = out["model"]
    print(f"decoder: {m['layers']} layers, hidden {m['hidden']}, intermediate {m['intermediate']}, "
          f"{m['heads']}/{m['kv_heads']} heads, vocab {m['vocab']}; batch 1, prompt {m['prompt']}, "
          f"{m['new_tokens']} new tokens, {m['reps']} round-robin reps; torch threads {out['torch_threads']}")
    print(f"load average at start {out['loadavg_start']}, at end {out['loadavg_end']}")
    hdr = (f"{'config':<13} {'decode ms/tok':>13} {'tok/s':>7} {'vs fp32':>7} {'vs ao':>6} {'prefill ms':>10} "
           f"{'MiB read/tok':>12} {'greedy':>6} {'1st diff':>8} {'step1 max/mean rel':>18} {'TF top1':>7} "
           f"{'TF top5':>7}")
    print(hdr)
    for c, r in out["results"].items():
        ao = f"{r['vs_torch_ao']:.2f}x" if "vs_torch_ao" in r else "-"
        fd = "-" if r["greedy_first_diff"] is None else str(r["greedy_first_diff"])
        print(f"{c:<13} {r['decode_ms']:>13.2f} {r['tok_per_s']:>7.2f} {r['vs_fp32']:>6.2f}x {ao:>6} "
              f"{r['prefill_ms']:>10.1f} {r['read_bytes_per_token'] / 2**20:>12.1f} {r['greedy_agreement']:>6.3f} "
              f"{fd:>8} {r['first_step_max_abs_rel']:>8.4f}/{r['first_step_mean_abs_rel']:<9.5f} "
              f"{r['tf_top1_agreement']:>7.4f} {r['tf_top5_contains_fp32_top1']:>7.4f}")
    for c, p in out.get("profiles", {}).items():
        parts = ", ".join(f"{k} {v:.1f} ({100 * v / p['total_ms']:.0f}%)" for k, v in p["per_step_ms"].items())
        ops = ", ".join(f"{k} {v:.1f}" for k, v in p["top_ops_ms"].items())
        print(f"profile {c}: self CPU ms per decode step {p['total_ms']:.1f}: {parts}\n    top ops: {ops}")


if __name__ == "__main__":
    main(sys.argv[1:])
