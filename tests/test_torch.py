"""The op table checked against PyTorch (forward and gradients, float32). Skips cleanly without torch."""

from __future__ import annotations

import numpy as np
import pytest
from optable import ROWS, SKIPPED, OpRow, make_inputs, output_weights, run_row

pytestmark = pytest.mark.usefixtures("reference_backend")
torch = pytest.importorskip("torch")

PARAMS = [pytest.param(r, id=r.name) for r in ROWS if r.torch() is not None] + [
    pytest.param(None, id=n, marks=pytest.mark.skip(reason=why)) for n, why in SKIPPED.items()
]


def torch_row(row: OpRow, arrays: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    ts = [torch.tensor(a, requires_grad=bool(i in row.grad_inputs)) for i, a in enumerate(arrays)]
    out = row.torch()(*ts)
    grads = []
    if row.grad_inputs and out.dtype.is_floating_point:
        w = output_weights(tuple(out.shape), np.float32)
        (out * torch.tensor(w)).sum().backward()
        grads = [ts[i].grad.numpy() if ts[i].grad is not None else np.zeros_like(arrays[i]) for i in row.grad_inputs]
    return out.detach().numpy(), grads


@pytest.mark.parametrize("row", PARAMS)
def test_matches_torch(row: OpRow) -> None:
    arrays = make_inputs(row)
    out, grads = run_row(row, arrays)
    t_out, t_grads = torch_row(row, arrays)
    assert out.shape == t_out.shape, f"{row.name}: shape {out.shape}, torch {t_out.shape}"
    assert out.dtype == t_out.dtype, f"{row.name}: dtype {out.dtype}, torch {t_out.dtype}"
    if out.dtype.kind == "f":
        np.testing.assert_allclose(out, t_out, rtol=row.rtol, atol=row.atol, err_msg=row.name)
    else:
        np.testing.assert_array_equal(out, t_out, err_msg=row.name)
    if out.dtype.kind != "f":
        return
    assert len(grads) == len(t_grads)
    for i, g, tg in zip(row.grad_inputs, grads, t_grads, strict=True):
        np.testing.assert_allclose(g, tg, rtol=row.rtol, atol=row.atol, err_msg=f"{row.name}: grad of input {i}")


def test_tie_gradients_match_torch() -> None:
    """Ties: maximum/minimum split the gradient in half and max() shares it evenly, as torch does."""
    from picograd import Tensor

    a = np.array([1.0, 2.0, 3.0, 3.0], np.float32)
    b = np.array([1.0, 0.0, 3.0, 4.0], np.float32)
    for name in ("maximum", "minimum"):
        x, y = Tensor(a), Tensor(b)
        getattr(x, name)(y).sum().backward()
        tx, ty = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        getattr(tx, name)(ty).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), err_msg=name)
        np.testing.assert_allclose(y.grad.numpy(), ty.grad.numpy(), err_msg=name)
    x, tx = Tensor(a), torch.tensor(a, requires_grad=True)
    x.max().backward()
    tx.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy())
