"""Backend selection: one mechanism for every llmaccel op.

Every op is a ``torch.library`` custom op (``torch.ops.llmaccel.<name>``, built
from its spec by :mod:`llmaccel.ops.spec`) whose body asks this module which
implementation to run (public functions skip the custom-op layer in plain
eager calls that need no autograd, tracing or mode -- :func:`_op_boundary_needed`
-- and run the same body):

===========  =========================================  ==========================
backend      what runs                                  when ``"auto"`` picks it
===========  =========================================  ==========================
``triton``   hand-written Triton kernel (kernels/)      CUDA tensors (GPU ok for
                                                        the op), Triton importable
``cpp``      C++/OpenMP kernel in ``llmaccel._C``        CPU tensors, extension built
``torch``    plain-PyTorch reference (the documented   last resort, any device
             truth tests compare against)
===========  =========================================  ==========================

Choosing a backend:

* ``LLMACCEL_BACKEND=auto|triton|cpp|torch`` in the environment (read per call);
* ``with llmaccel.backends.use("torch"): ...`` (wins over the environment);
* ``llmaccel.backends.explain("int8_mm", a, b)`` says what would run and why
  every other backend was refused.

An explicit request that cannot be met raises :class:`BackendUnavailable` with
the reason.  When ``"auto"`` has to skip its first choice it logs once per
(op, backend, reason) on ``logging.getLogger("llmaccel")``.

Triton on CPU tensors runs in Triton's interpreter; that needs
``TRITON_INTERPRET=1`` in the environment *before* ``llmaccel`` is imported
(Triton reads it when kernels are defined), and is only used when requested
explicitly.  This is how CI tests every Triton kernel without a GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import logging
import os
from typing import Callable, Iterator, Optional

import torch
import torch.autograd.profiler as _profiler

from . import _ext
from .kernels._interpret import INTERPRET

__all__ = ["BACKENDS", "BackendUnavailable", "Explanation", "explain", "use", "current", "available_backends"]

BACKENDS = ("triton", "cpp", "torch")
_CHOICES = ("auto",) + BACKENDS

logger = logging.getLogger("llmaccel")

TRITON_INTERPRET = INTERPRET  # read once at import, in kernels/_interpret.py

_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("llmaccel_backend", default=None)
_logged: set = set()


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this call."""


def _validate_name(name: str, where: str) -> str:
    name = name.strip().lower()
    if name not in _CHOICES:
        raise ValueError(f"llmaccel: {where} must be one of {', '.join(_CHOICES)}; got {name!r}")
    return name


def current() -> str:
    """The backend requested now: the innermost ``use()``, else ``LLMACCEL_BACKEND``, else ``"auto"``."""
    name = _override.get()
    if name is not None:
        return name
    raw = _env_raw()
    # Read per call (tests and users flip it at run time); validated once per distinct value.
    if raw != _env_cache[0]:
        _env_cache[:] = [raw, "auto" if raw is None else _validate_name(_ENV_DECODE(raw), "LLMACCEL_BACKEND")]
    return _env_cache[1]


# Why not os.environ.get on every call: that is three Python frames (get, __getitem__, encodekey), and right
# after a decode kernel has streamed megabytes of weight (evicting the interpreter's code and data) they cost
# ~30-40 us per call on the 2-core Sapphire Rapids class VM, a quarter of a sparse decode call's Python.
# os.environ keeps its variables in a plain dict of encoded keys and values (``_data``), updated in place by
# every os.environ write, so one dict lookup reads the same value.  Where that layout is not there (another
# Python implementation), the public mapping is read.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = None
_ENV_DECODE = getattr(os.environ, "decodevalue", str)  # a stored value back to str, as os.environ.get does
if type(_ENV_DATA) is dict and hasattr(os.environ, "encodekey"):
    try:
        _ENV_KEY = os.environ.encodekey("LLMACCEL_BACKEND")
    except Exception:  # pragma: no cover - an unexpected os.environ
        _ENV_KEY = None
if _ENV_KEY is None:  # the fallback reads os.environ.get, whose values are already str
    _ENV_DECODE = str


def _env_raw():
    """LLMACCEL_BACKEND as os.environ holds it (bytes on POSIX, str elsewhere), or None when unset."""
    if _ENV_KEY is not None:
        return _ENV_DATA.get(_ENV_KEY)
    return os.environ.get("LLMACCEL_BACKEND")


_env_cache: list = [None, "auto"]  # [LLMACCEL_BACKEND as _env_raw gives it (None: unset), its validated name]


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the enclosed llmaccel calls on backend ``name`` (``"auto"`` restores automatic choice)."""
    token = _override.set(_validate_name(name, "backend"))
    try:
        yield
    finally:
        _override.reset(token)


# --------------------------------------------------------------------------
# Backend-wide availability (op-independent).  Each returns None when usable
# or a human-readable reason.
# --------------------------------------------------------------------------

def _triton_import_error() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"Triton is not importable ({exc.__class__.__name__}: {exc})"
    return None


def _cpp_import_error() -> Optional[str]:
    return _ext.load_error()


def triton_device_problem(device: torch.device) -> Optional[str]:
    if device.type == "cuda":
        if TRITON_INTERPRET:
            return None  # interpreted: copies to host, any device works
        return _triton_import_error()
    if device.type == "cpu":
        err = _triton_import_error()
        if err:
            return err
        if not TRITON_INTERPRET:
            return "tensors are on the CPU and TRITON_INTERPRET=1 was not set before llmaccel was imported"
        return None
    return f"Triton kernels run on CUDA tensors, not {device.type}"


def cpp_device_problem(device: torch.device) -> Optional[str]:
    if device.type != "cpu":
        return f"the C++ kernels run on CPU tensors, not {device.type}"
    return _cpp_import_error()


def int8_dot_problem(device: torch.device) -> Optional[str]:
    """Op-level check shared by the Triton int8 kernels: int8 ``tl.dot`` needs sm80+ (not under the interpreter)."""
    if device.type == "cuda" and not TRITON_INTERPRET:
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"int8 tl.dot needs compute capability >= 8.0; this GPU is {major}.{minor}"
    return None


_DEVICE_PROBLEM: dict[str, Callable[[torch.device], Optional[str]]] = {
    "triton": triton_device_problem,
    "cpp": cpp_device_problem,
    "torch": lambda device: None,
}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that could run on ``device`` at all (op-specific limits aside)."""
    device = torch.device(device)
    return [b for b in BACKENDS if _DEVICE_PROBLEM[b](device) is None]


# --------------------------------------------------------------------------
# Per-op registry
# --------------------------------------------------------------------------

@dataclasses.dataclass
class _Impl:
    fn: Callable
    # Op-specific limits (dtype, shape, GPU generation...): None or a reason.
    check: Optional[Callable[..., Optional[str]]]
    # What this backend does for these arguments when it runs (which kernel, and why): a note for explain().
    describe: Optional[Callable[..., str]] = None


@dataclasses.dataclass
class Explanation:
    """Which backend an op call would run on, and why the others would not."""

    op: str
    requested: str
    backend: Optional[str]
    refused: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)  # op-level choices (e.g. int8_linear's mode)

    def __str__(self) -> str:
        head = f"llmaccel::{self.op} (requested: {self.requested}) -> {self.backend or 'nothing can run it'}"
        lines = [head] + [f"  {note}" for note in self.notes]
        lines += [f"  {b}: refused: {why}" for b, why in self.refused.items()]
        return "\n".join(lines)


class OpDispatcher:
    """Implementations of one op, keyed by backend, and the selection logic.

    Every callable here takes the op's validated arguments object (``llmaccel.ops.spec``: one named tuple per
    call, built once by the op's ``check``): ``impl(args)``, ``check(args)``, ``device_of(args)``,
    ``prepare(args) -> (args, note)``.
    """

    def __init__(self, name: str, device_of: Callable[..., torch.device],
                 prepare: Optional[Callable[..., tuple[object, Optional[str]]]] = None,
                 follows_forward: bool = False):
        self.name = name
        self._device_of = device_of
        # prepare(args) -> (args, note): resolves op-level choices (such as int8_linear's act="auto") before a
        # backend is picked; the note explains the choice in explain().
        self._prepare = prepare
        # A backward op: an explicitly requested backend that cannot run it (its kernel lacks the float-mask
        # gradient, or dropout) hands the call to the torch reference instead of raising, since the forward
        # already ran on that backend; explain() says so.
        self._follows_forward = follows_forward
        self._impls: dict[str, _Impl] = {}
        # The public function whose signature explain() binds its arguments to, and the op's check
        # (validation + normalization into the arguments object); both set by set_public.
        self.public: Optional[Callable] = None
        self._normalize: Optional[Callable] = None

    def set_public(self, fn: Optional[Callable], normalize: Callable) -> None:
        """``fn`` is ``llmaccel.<name>`` (None for an op without one): :func:`explain` accepts exactly its
        arguments (and the custom op's).  Every argument of the op schema must be a parameter of ``fn`` (same
        name); ``fn``'s extra parameters (``return_lse``...) do not reach the dispatcher.  ``normalize(*op_args)``
        is the op's check, run by explain so bad input raises the op's own error."""
        if fn is not None:
            missing = [n for n in self.schema_names() if n not in inspect.signature(fn).parameters]
            if missing:
                raise ValueError(f"llmaccel::{self.name}: the public function {fn.__name__} lacks the op arguments "
                                 f"{missing}")
        self.public = fn
        self._normalize = normalize

    def _schema(self):
        return getattr(torch.ops.llmaccel, self.name).default._schema

    def schema_names(self) -> list[str]:
        return [a.name for a in self._schema().arguments]

    def _schema_signature(self) -> inspect.Signature:
        params = []
        for a in self._schema().arguments:
            default = a.default_value if a.has_default_value() else inspect.Parameter.empty
            params.append(inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
        return inspect.Signature(params)

    def bind(self, args: tuple, kwargs: dict) -> tuple:
        """The op's positional arguments (schema order) for a call written as ``llmaccel.<name>(*args, **kwargs)``
        (defaults filled in), or as ``torch.ops.llmaccel.<name>(*args, **kwargs)``; TypeError naming the op else."""
        names = self.schema_names()
        errors = []
        for where, sig in ((f"llmaccel.{self.name}", self.public and inspect.signature(self.public)),
                           (f"torch.ops.llmaccel.{self.name}", self._schema_signature())):
            if sig is None:
                continue
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as exc:
                errors.append((where, sig, exc))
                continue
            bound.apply_defaults()
            return tuple(bound.arguments[n] for n in names)
        where, sig, exc = errors[0]
        raise TypeError(f"llmaccel.backends.explain('{self.name}', ...): the arguments do not fit {where}{sig}: "
                        f"{exc}") from None

    def register(self, backend: str, check: Optional[Callable[..., Optional[str]]] = None,
                 describe: Optional[Callable[..., str]] = None):
        """Decorator: ``fn(args)`` implements this op on ``backend``; ``check(args)`` states op-specific limits;
        ``describe(args)`` says what the backend will do for them (shown by explain() when it is chosen)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")

        def deco(fn: Callable) -> Callable:
            self._impls[backend] = _Impl(fn, check, describe)
            return fn

        return deco

    def _refusal(self, backend: str, device: torch.device, args) -> Optional[str]:
        impl = self._impls.get(backend)
        if impl is None:
            return f"llmaccel::{self.name} has no {backend} implementation"
        problem = _DEVICE_PROBLEM[backend](device)
        if problem is None and impl.check is not None:
            problem = impl.check(args)
        return problem

    @staticmethod
    def _auto_order(device: torch.device) -> list[str]:
        # Triton on CPU means the (slow) interpreter: only on explicit request.
        return ["triton", "torch"] if device.type == "cuda" else ["cpp", "torch"]

    def _order(self, requested: str, device: torch.device) -> list[str]:
        if requested == "auto":
            return self._auto_order(device)
        return [requested, "torch"] if self._follows_forward and requested != "torch" else [requested]

    def explain(self, *args, **kwargs) -> Explanation:
        """What :func:`explain` reports; takes the arguments of ``llmaccel.<name>`` (or of the custom op)."""
        args = self._normalize(*self.bind(args, kwargs))
        notes = []
        if self._prepare is not None:
            args, note = self._prepare(args)
            if note:
                notes.append(note)
        device = self._device_of(args)
        requested = current()
        refused: dict[str, str] = {}
        chosen = None
        for backend in self._order(requested, device):
            why = self._refusal(backend, device, args)
            if why is None:
                chosen = backend
                break
            refused[backend] = why
        if chosen is not None and self._impls[chosen].describe is not None:
            notes.append(f"{chosen}: {self._impls[chosen].describe(args)}")
        if requested not in ("auto", chosen) and chosen is not None:
            notes.append(f"backend {requested!r} was requested but cannot run this backward; the torch reference "
                         f"runs it (the forward ran on {requested!r})")
        for backend in BACKENDS:
            if backend != chosen and backend not in refused:
                why = self._refusal(backend, device, args)
                if requested != "auto":
                    refused[backend] = why or f"not requested (backend {requested!r} was requested)"
                else:
                    refused[backend] = why or f"not the automatic choice for {device.type} tensors"
        return Explanation(self.name, requested, chosen, refused, notes)

    def select(self, args) -> Callable:
        device = self._device_of(args)
        requested = current()
        if requested != "auto" and not self._follows_forward:
            why = self._refusal(requested, device, args)
            if why is not None:
                raise BackendUnavailable(f"llmaccel::{self.name}: backend {requested!r} was requested but {why}")
            return self._impls[requested].fn
        first = None
        for backend in self._auto_order(device) if requested == "auto" else self._order(requested, device):
            why = self._refusal(backend, device, args)
            if why is None:
                if first is not None:
                    key = (self.name, first[0], first[1])
                    if key not in _logged:
                        _logged.add(key)
                        logger.warning("llmaccel::%s: falling back from %s to %s: %s", self.name, first[0], backend,
                                       first[1])
                return self._impls[backend].fn
            if first is None:
                first = (backend, why)
        if requested != "auto":
            raise BackendUnavailable(f"llmaccel::{self.name}: backend {requested!r} was requested but {first[1]}")
        raise BackendUnavailable(f"llmaccel::{self.name}: no backend can run this call")

    def __call__(self, args):
        if self._prepare is not None:
            args, _ = self._prepare(args)
        return self.select(args)(args)


_REGISTRY: dict[str, OpDispatcher] = {}


# --------------------------------------------------------------------------
# Calling an op from its public function
# --------------------------------------------------------------------------

_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _op_boundary_needed(tensors) -> bool:
    """Whether a call must enter through ``torch.ops`` rather than the op's body directly.

    The custom-op boundary is what autograd, ``torch.compile``/export, tracing,
    functorch transforms, dispatch and function modes (FakeTensorMode,
    FlopCounterMode, ...), the profiler and tensor subclasses hook into.  When none of them
    is in play it does nothing but cost time: 10-20 us per call with warm
    caches, and ~60 us per int8_linear call in a decode pass, where streaming
    16 MB of weights has evicted the Python code it runs on (measured on the
    2-core Zen 4 VM, 8 x 4096^2 layers at M=1: 15% of the pass).
    """
    # (torch.jit.is_scripting() is never true here: scripted code does not run Python.)
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return True
    # Under torch.profiler the op road makes every llmaccel kernel a named event ("llmaccel::int8_linear"),
    # where the direct road would hide it inside its caller's time.
    if _profiler._is_profiler_enabled:
        return True
    if torch._C._are_functorch_transforms_active() or torch._C._is_torch_function_mode_enabled():
        return True
    if torch._C._len_torch_dispatch_stack() > 0:
        return True
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:  # an optional argument left out
            continue
        if type(t) not in _PLAIN_TENSOR_TYPES or (grad and t.requires_grad):
            return True
    return False


def _check_tensor_args(op, args) -> None:
    """On the torch.ops road: a non-tensor where the schema wants a Tensor raises a TypeError naming the
    op and the argument (the body's own validation does the same on the direct road)."""
    for arg, value in zip(op.default._schema.arguments, args):
        if isinstance(arg.type, torch.TensorType) and not isinstance(value, torch.Tensor):
            name = op.default._schema.name.removeprefix("llmaccel::")
            raise TypeError(f"llmaccel.{name}: {arg.name} must be a torch.Tensor, got {type(value).__name__}")


def dispatcher(name: str, device_of: Callable[..., torch.device], prepare=None,
               follows_forward: bool = False) -> OpDispatcher:
    """Create (once) the dispatcher of op ``name``; ``device_of(args)`` gives the device that decides."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is already registered")
    _REGISTRY[name] = OpDispatcher(name, device_of, prepare, follows_forward)
    return _REGISTRY[name]


def explain(op_name: str, *args, **kwargs) -> Explanation:
    """Which backend ``llmaccel.<op_name>(*args, **kwargs)`` would run on now, and why each other was refused.

    Takes exactly the arguments of the public function ``llmaccel.<op_name>`` (positional or keyword, defaults
    filled in), or those of ``torch.ops.llmaccel.<op_name>``; arguments that fit neither raise a TypeError
    naming the op, and bad values raise the op's own error.
    """
    op_name = op_name.removeprefix("llmaccel::").removeprefix("llmaccel.")
    if op_name not in _REGISTRY:
        raise ValueError(f"llmaccel: unknown op {op_name!r}; known ops: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[op_name].explain(*args, **kwargs)
