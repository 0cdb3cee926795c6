"""Op specs: one declarative description per llmaccel op, from which everything else about the op is built.

An :class:`OpSpec` names the op and gives its schema, its ``check`` (validation + normalization into one
arguments object), its fake (output shapes for tracing), the device that decides the backend, optional
op-level choices (``prepare``), output finishing, and whether it is a backward op.  :func:`define` turns a
spec into an :class:`Op`, which holds:

* the ``torch.library`` custom op ``torch.ops.llmaccel.<name>`` (body = check, then the backend the
  dispatcher picks) and its fake (check, then the spec's shape rule);
* the dispatcher (:class:`llmaccel.backends.OpDispatcher`): per-backend implementations, each registered
  with ``@op.implement(backend, check=limit)``, where ``limit(args)`` returns None or the reason it cannot run;
* ``op.call(*op_args)``, the direct-call fast path the public function uses: the op's body itself when
  nothing needs the custom-op boundary (no autograd, tracing, modes or subclasses), ``torch.ops`` else;
* ``op.public(fn)``: records ``llmaccel.<name>`` so ``llmaccel.backends.explain(name, ...)`` takes its
  arguments;
* ``op.autograd(backward, setup_context)``: the derivative; ``backward`` returns a dict of gradients by
  argument name, and typically calls the op's backward op (itself an :class:`Op`, dispatched like any other).

Every implementation, limit, prepare and fake receives the one arguments object ``args`` (a named tuple of the
schema's arguments, ``op.Args``), built by the spec's ``check`` once per call; kernels trust it.

Adding an op family (sparse GEMM next) takes, besides its own kernel files (``csrc/<op>*.cpp``,
``kernels/<op>*.py``), op file (``llmaccel/ops/<op>.py``: an OpSpec with its check and fake, one
``@op.implement`` adapter per backend, an ``@op.public`` function calling ``op.call``; a backward op is a
second OpSpec with ``follows_forward=True``), benchmark cases (``llmaccel/bench/cases_<op>.py``) and test
files (``tests/test_<op>.py``), changes in these 4 places:

1. ``llmaccel/ops/__init__.py``: its module name in ``_OP_MODULES`` (``llmaccel`` re-exports ``ops.__all__``);
2. ``llmaccel/bench/cases.py``: its cases module in ``_CASE_MODULES``;
3. ``tests/test_backends.py``: one ``explain`` case (the test requires one per registered op);
4. with C++ kernels, their registration in the C++ layer: the binding in ``csrc/bindings.cpp`` and, with ISA
   variants, the family's rows in ``csrc/variants.{h,cpp}`` (``setup.py`` compiles every ``csrc/*.cpp``;
   ``llmaccel.cpu_info()`` reports a new family under its own name).

Nothing else learns the op's name: the dispatcher, ``explain()``, the schema and the fake come from the spec.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .. import backends


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What an op is; :func:`define` builds the op from it."""

    name: str                                   # torch.ops.llmaccel.<name>, llmaccel.backends.explain(<name>)
    schema: str                                 # "(Tensor a, Tensor b) -> Tensor" (torch.library syntax)
    check: Callable[..., Any]                   # check(*op_args) -> args object; raises naming op and argument
    fake: Callable[[Any], Any]                  # fake(args) -> outputs of the right shapes/dtypes (meta rule)
    device_of: Callable[[Any], torch.device] = lambda args: args[0].device  # the device that picks the backend
    prepare: Optional[Callable[[Any], tuple[Any, Optional[str]]]] = None    # op-level choice: (args, note)
    finish: Optional[Callable[[Any], Any]] = None  # applied to every backend's outputs (e.g. make contiguous)
    follows_forward: bool = False               # a backward op: see OpDispatcher


def _arg_names_and_defaults(schema: str) -> tuple[list[str], list[Any]]:
    parsed = torch._C.parse_schema("f" + schema)
    names = [a.name for a in parsed.arguments]
    defaults = [a.default_value for a in parsed.arguments if a.has_default_value()]
    return names, defaults


class Op:
    """An op built from its :class:`OpSpec` (module docstring)."""

    def __init__(self, spec: OpSpec):
        self.spec = spec
        self.name = spec.name
        names, defaults = _arg_names_and_defaults(spec.schema)
        # Defaults of trailing schema arguments fill in when torch.ops is called without them (torch passes
        # only the arguments given to a Python custom op's body).
        self.Args = collections.namedtuple(f"{spec.name}_args", names, defaults=defaults or None)
        # pack((v1, v2, ...)): an Args from all its values, without the Python frame of Args(...) (checks run on
        # every call, and the per-call Python cost is what small shapes pay).
        self.pack = functools.partial(tuple.__new__, self.Args)
        self.dispatch = backends.dispatcher(spec.name, device_of=spec.device_of, prepare=spec.prepare,
                                            follows_forward=spec.follows_forward)
        self.body = self._make_body()
        custom = torch.library.custom_op(f"llmaccel::{spec.name}", self.body, mutates_args=(), schema=spec.schema)
        check, fake = spec.check, spec.fake
        custom.register_fake(lambda *args: fake(check(*args)))
        self._custom = custom
        self.op = getattr(torch.ops.llmaccel, spec.name)
        self.call = self._make_call()
        self.dispatch.set_public(None, check)

    def _make_body(self) -> Callable:
        check, dispatch, finish = self.spec.check, self.dispatch, self.spec.finish
        if finish is None:
            def body(*args):
                return dispatch(check(*args))
        else:
            def body(*args):
                return finish(dispatch(check(*args)))
        body.__name__ = f"{self.name}_body"
        return body

    def _make_call(self) -> Callable:
        op, body = self.op, self.body
        boundary_needed, check_tensor_args = backends._op_boundary_needed, backends._check_tensor_args

        def call(*args):
            """``torch.ops.llmaccel.<name>(*args)``, or the op's body directly when the boundary does nothing."""
            if boundary_needed([a for a in args if isinstance(a, Tensor)]):
                if not torch.compiler.is_compiling():  # dynamo checks the schema itself while tracing
                    check_tensor_args(op, args)
                return op(*args)
            return body(*args)

        return call

    def implement(self, backend: str, check: Optional[Callable[[Any], Optional[str]]] = None,
                  describe: Optional[Callable[[Any], str]] = None):
        """Decorator: ``fn(args)`` runs this op on ``backend``; ``check(args)`` returns None or why it cannot;
        ``describe(args)`` says which kernel it runs for them and why (a note in explain())."""
        return self.dispatch.register(backend, check, describe)

    def public(self, fn: Callable) -> Callable:
        """Decorator for ``llmaccel.<name>``: explain() accepts exactly its arguments."""
        self.dispatch.set_public(fn, self.spec.check)
        return fn

    def autograd(self, backward: Callable, setup_context: Callable) -> None:
        """``setup_context(ctx, args, output)`` with the arguments object; ``backward(ctx, *grads)`` returns
        ``{argument name: gradient}`` (missing names get None)."""
        Args, names = self.Args, self.Args._fields

        def setup(ctx, inputs, output):
            ctx.n_inputs = len(inputs)  # torch.ops passes a trailing defaulted argument only when it is given
            setup_context(ctx, Args(*inputs), output)

        def bwd(ctx, *grads):
            got = backward(ctx, *grads)
            return tuple(got.get(n) for n in names[:ctx.n_inputs])

        self._custom.register_autograd(bwd, setup_context=setup)


def define(spec: OpSpec) -> Op:
    """Build the op ``spec`` describes (module docstring)."""
    return Op(spec)
