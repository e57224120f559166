"""When a public op skips torch's dispatcher (neva_kernels.ops._library.Op): only for plain eager calls."""
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import neva_kernels as nk
from neva_kernels.ops._library import Op, _dispatcher_needed


def test_plain_eager_calls_skip_the_dispatcher():
    x, weight = torch.randn(2, 8), torch.nn.Parameter(torch.ones(8))
    assert not _dispatcher_needed((x, x, 1e-6, "torch"))
    with torch.no_grad():
        assert not _dispatcher_needed((x, weight, 1e-6, "torch"))  # a Parameter is a plain tensor here
    with torch.inference_mode():
        assert not _dispatcher_needed((x, weight, 1e-6, "torch"))


def test_calls_autograd_must_record_go_through_the_dispatcher():
    x, weight = torch.randn(2, 8), torch.nn.Parameter(torch.ones(8))
    assert _dispatcher_needed((x, weight, 1e-6, "torch"))
    y = nk.rms_norm(x, weight)
    assert y.grad_fn is not None  # recorded: the op's registered backward runs
    y.sum().backward()
    assert weight.grad is not None


def test_fake_tensors_modes_and_transforms_go_through_the_dispatcher():
    with FakeTensorMode():
        fake = torch.randn(2, 8)
        assert _dispatcher_needed((fake, "torch"))
    assert _dispatcher_needed((fake, "torch"))  # a fake tensor outside its mode is still not plain
    seen = []
    torch.vmap(lambda row: seen.append(_dispatcher_needed((row, "torch"))) or row)(torch.randn(3, 8))
    assert seen == [True]


def test_tracing_records_the_op_unless_it_traces_its_torch_backend():
    """While torch.compile traces: the registered op (dispatcher), except an op's torch backend that asks to be
    traced as PyTorch maths (neva_kernels.torch_backend)."""
    calls = []
    make = (lambda traced: Op(lambda t, backend: calls.append("fn") or t,
                              lambda t, backend: calls.append("overload") or t, traced))
    opaque, traced = make(False), make(True)
    compiled = torch.compile(lambda t: opaque(t, "torch") + traced(t, "torch") + traced(t, "cuda"), fullgraph=True,
                             backend="eager")
    compiled(torch.zeros(2))
    assert calls == ["overload", "fn", "overload"]
