from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ptq4vm_fx import ops, scan
from ptq4vm_fx.errors import InputError


def naive_scan(u, delta, A, B, C, D, z, delta_bias, softplus):
    """Mamba's selective scan written token by token in float64 (the definition)."""
    delta = delta + delta_bias[:, None]
    if softplus:
        delta = F.softplus(delta)
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return (torch.stack(ys, -1) + D[:, None] * u) * F.silu(z)


def definition(args, reverse: bool):
    """naive_scan on scan_args-ordered ``args`` (softplus on), scanning from the last token for ``reverse``."""
    flip = (lambda t: t.flip(-1)) if reverse else (lambda t: t)
    u, dl, A, B, C, D, z, db = args
    return flip(naive_scan(flip(u), flip(dl), A, flip(B), flip(C), D, flip(z), db, True))


def scan_args(batch=2, d=5, n=4, length=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return [r(batch, d, length), r(batch, d, length), -torch.rand(d, n, generator=g, dtype=dtype),
            r(batch, n, length), r(batch, n, length), r(d), r(batch, d, length), r(d)]


@pytest.mark.parametrize("length", [1, 7])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_definition_with_gradients(length, reverse):
    args = scan_args(length=length)
    a_ref = [t.clone().requires_grad_() for t in args]
    a_new = [t.clone().requires_grad_() for t in args]
    y_ref = definition(a_ref, reverse)
    y_new = scan.selective_scan_ref(*a_new, True, reverse)
    torch.testing.assert_close(y_new.double(), y_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y_ref)
    for g_ref, g_new in zip(torch.autograd.grad(y_ref, a_ref, grad), torch.autograd.grad(y_new, a_new, grad)):
        torch.testing.assert_close(g_new.double(), g_ref, rtol=1e-4, atol=1e-5)


def test_scan_custom_op_forward_and_backward_equal_reference():
    args = [t.float() for t in scan_args()]
    a_op = [t.clone().requires_grad_() for t in args]
    a_ref = [t.clone().requires_grad_() for t in args]
    y_op = torch.ops.ptq4vm.selective_scan(*a_op, True, True)
    y_ref = scan.selective_scan_ref(*a_ref, True, True)
    torch.testing.assert_close(y_op, y_ref)
    y_op.sum().backward()
    y_ref.sum().backward()
    for a, b in zip(a_op, a_ref):
        torch.testing.assert_close(a.grad, b.grad)


def test_scan_custom_op_with_grad_on_cpu_scans_once(monkeypatch):
    """On the CPU the op's autograd runs the reference, which keeps its checkpoints: one forward scan per
    training step, not a second one in backward."""
    calls = []
    forward = scan._scan_forward
    monkeypatch.setattr(scan, "_scan_forward", lambda *a, **k: calls.append(k) or forward(*a, **k))
    args = [t.float().requires_grad_() for t in scan_args()]
    torch.ops.ptq4vm.selective_scan(*args, True, True).sum().backward()
    assert calls == [{"checkpoints": True}]
    with torch.no_grad():
        torch.ops.ptq4vm.selective_scan(*args, True, True)
    assert calls[1:] == [{"checkpoints": False}]


def test_scan_registered_backward_equals_reference():
    """The op's registered backward (recomputing through the reference; the autograd of devices other
    than the CPU) against the reference's own gradients, for the inputs that need one."""
    args = [t.float() for t in scan_args()]
    needs = [True, True, True, False, True, False, True, True]
    ctx = SimpleNamespace(needs_input_grad=(*needs, False, False))
    ctx.save_for_backward = lambda *t: setattr(ctx, "saved_tensors", t)
    args[5] = None  # no D
    ops._scan_setup_context(ctx, (*args, True, True), None)
    grad_out = torch.randn_like(args[0])
    grads = ops._scan_backward(ctx, grad_out)
    leaves = [t.clone().requires_grad_(n) if t is not None else None for t, n in zip(args, needs)]
    y = scan.selective_scan_ref(*leaves, True, True)
    expected = torch.autograd.grad(y, [t for t, n in zip(leaves, needs) if n], grad_out)
    assert [g is not None for g in grads] == needs + [False, False]
    for g, e in zip([g for g in grads if g is not None], expected):
        torch.testing.assert_close(g, e)


def test_ops_pass_opcheck():
    args = [t.float() for t in scan_args()]
    torch.library.opcheck(torch.ops.ptq4vm.selective_scan.default, (*args, True, False))
    grad_args = [t.clone().requires_grad_() for t in args]  # through the op's CPU autograd kernel
    torch.library.opcheck(torch.ops.ptq4vm.selective_scan.default, (*grad_args, True, True))
    x = torch.randn(2, 5, 3)
    torch.library.opcheck(torch.ops.ptq4vm.quantize_per_token.default,
                          (x, torch.ones(3), torch.full((5,), 0.1), torch.zeros(5, dtype=torch.int32), 8))
    xq = torch.randint(-128, 128, (2, 5, 3), dtype=torch.int8)
    wq = torch.randint(-127, 128, (4, 3), dtype=torch.int8)
    torch.library.opcheck(torch.ops.ptq4vm.int8_linear.default,
                          (xq, torch.rand(5), torch.zeros(5, dtype=torch.int32), wq, torch.rand(4),
                           wq.int().sum(1), torch.randn(4), torch.float32))


def test_scan_rejects_wrong_shapes():
    args = [t.float() for t in scan_args()]
    args[3] = args[3][:, :, :3]
    with pytest.raises(ValueError, match="B must have shape"):
        torch.ops.ptq4vm.selective_scan(*args, True, False)


def test_quantize_per_token_codes_follow_the_contract():
    x = torch.tensor([[[0.25, -0.35, 1.0], [2.5, 0.5, -3.0]]])  # (1, L=2, C=3)
    inv_smooth = torch.tensor([1.0, 2.0, 0.5])
    scale = torch.tensor([0.5, 1.0])
    zp = torch.tensor([3, -128], dtype=torch.int32)
    q = torch.ops.ptq4vm.quantize_per_token(x, inv_smooth, scale, zp, 8)
    # token 0: [0.5, -1.4, 1.0] -> round -> [0, -1, 1] + 3; token 1: [2.5, 1.0, -1.5] -> [2, 1, -2] - 128, clamped
    assert q.dtype == torch.int8
    assert q.tolist() == [[[3, 2, 4], [-126, -127, -128]]]


def test_quantize_per_token_clamps_to_bits():
    x = torch.full((1, 1, 4), 100.0)
    q = torch.ops.ptq4vm.quantize_per_token(x, torch.ones(4), torch.ones(1), torch.zeros(1, dtype=torch.int32), 4)
    assert q.unique().tolist() == [7]


def test_int8_linear_is_integer_exact():
    g = torch.Generator().manual_seed(1)
    xq = torch.randint(-128, 128, (3, 5, 1537), dtype=torch.int8, generator=g)
    wq = torch.randint(-127, 128, (6, 1537), dtype=torch.int8, generator=g)
    zp = torch.randint(-128, 128, (5,), dtype=torch.int32, generator=g)
    colsum = wq.int().sum(1)
    y = torch.ops.ptq4vm.int8_linear(xq, torch.ones(5), zp, wq, torch.ones(6), colsum, None, torch.float32)
    exact = (xq.long() - zp.long()[:, None]) @ wq.long().t()
    assert torch.equal(y.double(), exact.double())


def test_quantize_rejects_a_token_count_it_was_not_calibrated_for():
    with pytest.raises(ValueError, match="calibrated for 5 tokens"):
        torch.ops.ptq4vm.quantize_per_token(torch.randn(2, 7, 3), torch.ones(3), torch.ones(5),
                                            torch.zeros(5, dtype=torch.int32), 8)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_backward_across_chunks_matches_definition(reverse):
    """Backward recomputes the states chunk by chunk from the ones the forward kept: a length of two
    chunks and a partial one, against the definition; the forward without grad is the same run."""
    length = 2 * scan._CHUNK + 3
    args = scan_args(length=length)
    a_ref = [t.clone().requires_grad_() for t in args]
    a_new = [t.float().requires_grad_() for t in args]
    y_ref = definition(a_ref, reverse)
    y_new = scan.selective_scan_ref(*a_new, True, reverse)
    torch.testing.assert_close(y_new.double(), y_ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(scan.selective_scan_ref(*a_new, True, reverse), y_new)
    grad = torch.randn_like(y_ref)
    for g_ref, g_new in zip(torch.autograd.grad(y_ref, a_ref, grad), torch.autograd.grad(y_new, a_new, grad.float())):
        torch.testing.assert_close(g_new.double(), g_ref, rtol=1e-4, atol=1e-5)


def ordered_args(batch=2, d=5, n=4, length=7):
    """ptq4vm::ordered_scan's tensors for two directions (fp32), and their (2, length + 2) order: direction 0
    forward then two padding steps, direction 1 a shuffled order with padding steps inside and at its end."""
    per = [scan_args(batch, d, n, length, torch.float32), [t.float().flip(-1) for t in scan_args(batch, d, n, length)]]
    tensors = [per[0][0], [p[1] for p in per], torch.stack([p[2] for p in per]), [p[3] for p in per],
               [p[4] for p in per], torch.stack([p[5] for p in per]), per[0][6], torch.stack([p[7] for p in per])]
    shuffled = torch.randperm(length, generator=torch.Generator().manual_seed(0)).tolist()
    order = torch.tensor([list(range(length)) + [-1, -1], shuffled[:3] + [-1] + shuffled[3:] + [-1]], dtype=torch.int32)
    return tensors, order


def test_ordered_scan_op_forward_and_backward_equal_the_gathered_scans():
    """The op (CPU: its autograd runs the reference) against the explicit formulation: each direction's
    inputs gathered into its order (zeros at padding), scanned, scattered back, summed; values and gradients."""
    tensors, order = ordered_args()
    leaves = [[t.clone().requires_grad_() for t in x] if isinstance(x, list) else x.clone().requires_grad_()
              for x in tensors]
    out = torch.ops.ptq4vm.ordered_scan(*leaves, order, None, True)
    u, deltas, A, Bs, Cs, D, z, db = [[t.detach().clone().requires_grad_() for t in x] if isinstance(x, list)
                                      else x.detach().clone().requires_grad_() for x in tensors]
    expect = 0
    for k in range(order.shape[0]):
        valid, index = order[k] >= 0, order[k].clamp(min=0).long()

        def gathered(t, valid=valid, index=index):
            return torch.where(valid, t.index_select(-1, index), 0)

        y = scan.selective_scan_ref(gathered(u), gathered(deltas[k]), A[k], gathered(Bs[k]), gathered(Cs[k]), D[k],
                                    gathered(z), db[k], True)
        expect = expect + torch.zeros_like(y[..., : u.shape[-1]]).index_add(-1, order[k][valid].long(), y[..., valid])
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [leaves[0], *leaves[1], leaves[2], *leaves[3], leaves[6]], grad)
    want = torch.autograd.grad(expect, [u, *deltas, A, *Bs, z], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_ordered_scan_passes_opcheck_and_rejects_wrong_shapes():
    tensors, order = ordered_args()
    torch.library.opcheck(torch.ops.ptq4vm.ordered_scan.default, (*tensors, order, None, True))
    u, deltas, A, Bs, Cs, D, z, db = tensors
    with pytest.raises(InputError, match="order has 2 directions but 1 deltas"):
        torch.ops.ptq4vm.ordered_scan(u, deltas[:1], A, Bs, Cs, D, z, db, order, None, True)
    with pytest.raises(InputError, match="D must have 2 directions of 5"):
        torch.ops.ptq4vm.ordered_scan(u, deltas, A, Bs, Cs, D[:1], z, db, order, None, True)
    with pytest.raises(InputError, match="B must have shape"):
        torch.ops.ptq4vm.ordered_scan(u, deltas, A, [Bs[0], Bs[1][..., :3]], Cs, D, z, db, order, None, True)


def test_a_padded_token_is_exactly_zero_through_a_quantized_linear():
    """LocalVSSM's ordered scan reads a padded token as zeros instead of running x_proj / dt_proj on the
    zero-padded map: equal because a zero activation quantizes to its zero point, which the column-sum
    correction cancels exactly (bias-free linears), at any scale and zero point."""
    x = torch.zeros(1, 3, 6)
    scale, zero_point = torch.tensor([0.01, 0.3, 7.0]), torch.tensor([-128, 5, 127], dtype=torch.int32)
    xq = torch.ops.ptq4vm.quantize_per_token(x, torch.rand(6) + 0.5, scale, zero_point, 8)
    assert torch.equal(xq[0], zero_point[:, None].expand(3, 6).to(torch.int8))
    wq = torch.randint(-127, 128, (4, 6), dtype=torch.int8)
    y = torch.ops.ptq4vm.int8_linear(xq, scale, zero_point, wq, torch.rand(4), wq.int().sum(1), None, torch.float32)
    assert torch.equal(y, torch.zeros(1, 3, 4))


def test_ordered_scan_compiles_under_autograd():
    """AOTAutograd traces the op's autograd kernel (the reference) on fake maps, whose values it cannot check:
    the compiled forward and gradients equal eager's."""
    tensors, order = ordered_args()
    u, deltas, A, Bs, Cs, D, z, db = tensors

    def scan_of(u, d0, d1, A, B0, B1, C0, C1, D, z, db):
        return torch.ops.ptq4vm.ordered_scan(u, [d0, d1], A, [B0, B1], [C0, C1], D, z, db, order, None, True)

    args = [u, *deltas, A, *Bs, *Cs, D, z, db]
    eager, compiled = ([a.clone().requires_grad_() for a in args] for _ in range(2))
    y_eager, y_compiled = scan_of(*eager), torch.compile(scan_of, backend="aot_eager", fullgraph=True)(*compiled)
    assert torch.equal(y_eager, y_compiled)
    grad = torch.randn_like(y_eager)
    y_eager.backward(grad)
    y_compiled.backward(grad)
    for a, b in zip(eager, compiled):
        assert torch.equal(a.grad, b.grad)
