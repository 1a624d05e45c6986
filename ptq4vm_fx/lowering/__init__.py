"""The ``ptq4vm`` torch.compile backend: rewrites of ptq4vm op patterns into fused kernels, then Inductor.

``torch.compile(qmodel, backend="ptq4vm")`` finds the backend through the ``torch_dynamo_backends``
entry point (``ptq4vm_fx.lowering.backend:ptq4vm_backend``); nothing here registers it on import.
"""
