"""The backend is found by name through the torch_dynamo_backends entry point, without importing
ptq4vm_fx first, and importing ptq4vm_fx never registers it a second time (torch's registry
raises "duplicate name" on a second registration). Fresh interpreters: the registry is per process.

torch._dynamo.backends.registry.lookup_backend(name): an unknown name triggers _lazy_import(),
which calls _discover_entrypoint_backends() (importlib.metadata entry points of the group
"torch_dynamo_backends" into _BACKENDS); the entry point is load()ed and register_backend()ed on
first lookup only (`if name not in _COMPILER_FNS`).
"""

import subprocess
import sys
import textwrap

LOOKUP_THEN_IMPORT = """
import sys
import torch
from torch._dynamo.backends.registry import list_backends, lookup_backend

assert "ptq4vm_fx" not in sys.modules
assert "ptq4vm" in list_backends()
assert "ptq4vm_fx" not in sys.modules  # discovered, not loaded yet

# a float model (no ptq4vm ops at all): compiled as Inductor would, said once per process
mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
x = torch.randn(8, 16)
with torch.no_grad():
    torch.testing.assert_close(torch.compile(mlp, backend="ptq4vm")(x), mlp(x))
backend = lookup_backend("ptq4vm")
assert backend.__module__ == "ptq4vm_fx.lowering.backend", backend.__module__

import ptq4vm_fx  # must not register the name again
from ptq4vm_fx.lowering import report
from ptq4vm_fx.models import create_vim

assert lookup_backend("ptq4vm") is backend

# a float Vim: its selective scans are ptq4vm ops, nothing is quantized: the float fusions, said once
torch.manual_seed(0)
vim = create_vim("vim_tiny_patch16_224", depth=1, img_size=32, embed_dim=32, num_classes=10).eval()
images = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    torch.testing.assert_close(torch.compile(vim, backend="ptq4vm")(images), vim(images), rtol=1e-4, atol=1e-5)
counts = report.lowering_counters()
assert counts == {"graphs_without_ptq4vm_ops": 1, "graphs_lowered": 1, "float_graphs": 1, "bidirectional_scan": 1,
                  "conv1d_silu": 2}, counts
print("OK")
"""

IMPORT_THEN_LOOKUP = """
import torch
import ptq4vm_fx
import ptq4vm_fx.lowering.backend
from torch._dynamo.backends import registry

assert "ptq4vm" not in registry._COMPILER_FNS  # importing registered nothing
assert registry.lookup_backend("ptq4vm") is ptq4vm_fx.lowering.backend.ptq4vm_backend
print("OK")
"""


def _run(script: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-4000:]
    return result


def test_found_by_name_without_importing_ptq4vm_fx_and_float_models_are_lowered():
    stderr = _run(LOOKUP_THEN_IMPORT).stderr
    assert stderr.count("no ptq4vm ops to lower") == 1, stderr[-4000:]
    assert stderr.count("nothing in this graph is quantized") == 1, stderr[-4000:]


def test_importing_ptq4vm_fx_registers_nothing():
    _run(IMPORT_THEN_LOOKUP)
