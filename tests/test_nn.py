"""picograd.nn: the Module registry, state_dict and checkpoints, train/eval, devices, and each layer
against numpy (lazy and eager)."""

from __future__ import annotations

import numpy as np
import pytest

import picograd as pg
from picograd import nn
from picograd.nn import functional as F

RNG = np.random.default_rng(0)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.register_buffer("count", pg.zeros(1))
        self.note = "not registered"

    def forward(self, x: pg.Tensor) -> pg.Tensor:
        return self.fc(x) * self.scale


def test_registry_names_and_order() -> None:
    m = nn.Sequential(Block(), nn.ReLU(), nn.Linear(3, 2, bias=False))
    # As in PyTorch: each module's own tensors, then its children's, depth first.
    assert [n for n, _ in m.named_parameters()] == ["0.scale", "0.fc.weight", "0.fc.bias", "2.weight"]
    assert [n for n, _ in m.named_buffers()] == ["0.count"]
    assert [n for n, _ in m.named_modules()] == ["", "0", "0.fc", "1", "2"]
    assert sorted(m.state_dict()) == ["0.count", "0.fc.bias", "0.fc.weight", "0.scale", "2.weight"]
    assert len(m) == 3 and isinstance(m[1], nn.ReLU) and [type(c) for c in m] == [Block, nn.ReLU, nn.Linear]


def test_reassigning_and_deleting_attributes_updates_the_registry() -> None:
    b = Block()
    b.scale = None  # no longer a parameter
    del b.count
    assert [n for n, _ in b.named_parameters()] == ["fc.weight", "fc.bias"]
    assert list(b.named_buffers()) == []


def test_shared_parameters_are_listed_once() -> None:
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(m.parameters())) == 2


def test_module_without_super_init_fails_clearly() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            self.w = pg.zeros(2)

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_linear_init_is_pytorch_default_and_seeded() -> None:
    pg.manual_seed(3)
    a = nn.Linear(400, 300)
    pg.manual_seed(3)
    b = nn.Linear(400, 300)
    w = a.weight.numpy()
    assert a.weight.shape == (300, 400) and a.bias.shape == (300,) and w.dtype == np.float32
    bound = 1 / np.sqrt(400)
    assert np.abs(w).max() <= bound and np.abs(a.bias.numpy()).max() <= bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.02)  # U(-b, b) has std b/sqrt(3)
    np.testing.assert_array_equal(w, b.weight.numpy())
    assert a.weight.requires_grad and a.weight._rg is True


@pytest.mark.parametrize("eager", [False, True])
def test_linear_forward_and_grads(eager: bool) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    with pg.eager(eager):
        lin = nn.Linear(4, 3)
        out = lin(pg.Tensor(x))
        out.sum().backward()
        w, b = lin.weight.numpy(), lin.bias.numpy()
        np.testing.assert_allclose(out.numpy(), x @ w.T + b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lin.weight.grad.numpy(), np.ones((5, 3)).T @ x, rtol=1e-5)
        np.testing.assert_allclose(lin.bias.grad.numpy(), np.full(3, 5.0), rtol=1e-6)
        # A batched (3-D) input takes the general broadcasting path.
        x3 = RNG.standard_normal((2, 5, 4)).astype(np.float32)
        np.testing.assert_allclose(lin(pg.Tensor(x3)).numpy(), x3 @ w.T + b, rtol=1e-5, atol=1e-6)


def test_linear_rejects_mismatched_input() -> None:
    with pytest.raises(ValueError, match=r"linear: input of shape \(2, 5\).*\(3, 4\)"):
        nn.Linear(4, 3)(pg.zeros(2, 5))


@pytest.mark.parametrize(
    "layer, ref",
    [
        (nn.ReLU(), lambda x: np.maximum(x, 0)),
        (nn.LeakyReLU(0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
        (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (nn.Tanh(), np.tanh),
        (nn.Softmax(dim=1), lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
        (nn.LogSoftmax(dim=1), lambda x: x - np.log(np.exp(x).sum(1, keepdims=True))),
        (nn.LogSoftmax(dim=0), lambda x: x - np.log(np.exp(x).sum(0, keepdims=True))),
        (nn.Identity(), lambda x: x),
        (nn.Flatten(0), lambda x: x.reshape(-1)),
    ],
)
def test_activation_layers(layer: nn.Module, ref) -> None:
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    want = ref(x.astype(np.float64))
    np.testing.assert_allclose(layer(pg.Tensor(x)).numpy(), want, rtol=1e-5, atol=1e-6)
    with pg.eager():
        np.testing.assert_allclose(layer(pg.Tensor(x)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_functional_forms_match_tensor_methods() -> None:
    x = pg.Tensor(RNG.standard_normal((3, 5)).astype(np.float32))
    for f, m in [(F.relu, x.relu), (F.sigmoid, x.sigmoid), (F.tanh, x.tanh), (F.log_softmax, x.log_softmax)]:
        np.testing.assert_allclose(f(x).numpy(), m().numpy(), rtol=1e-6)
    np.testing.assert_allclose(F.leaky_relu(x, 0.2).numpy(), x.leaky_relu(0.2).numpy())
    np.testing.assert_allclose(F.softmax(x, 0).numpy(), x.softmax(0).numpy(), rtol=1e-6)


def test_dropout_train_and_eval() -> None:
    pg.manual_seed(0)
    d = nn.Dropout(0.25)
    x = pg.ones(200, 100)
    out = d(x).numpy()
    kept = out != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(out[kept], 1 / 0.75, rtol=1e-6)
    d.eval()
    assert not d.training
    assert d(x) is x  # the identity: no rand node, no extra program
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\]"):
        nn.Dropout(1.5)  # p = 1 is allowed, as in torch: all zeros (test_api_edges)


def test_dropout_lazy_equals_eager_with_the_same_seed() -> None:
    x = RNG.standard_normal((8, 16)).astype(np.float32)
    pg.manual_seed(7)
    lazy = [F.dropout(pg.Tensor(x), 0.5).numpy() for _ in range(3)]
    pg.manual_seed(7)
    with pg.eager():
        eager = [F.dropout(pg.Tensor(x), 0.5).numpy() for _ in range(3)]
    for a, b in zip(lazy, eager, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(lazy[0], lazy[1])  # a fresh mask per call


def test_train_eval_propagates() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.ReLU()))
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())


def test_state_dict_round_trips_through_npz(tmp_path) -> None:
    pg.manual_seed(0)
    a = nn.Sequential(Block(), nn.ReLU(), nn.Linear(3, 2))
    pg.manual_seed(1)
    b = nn.Sequential(Block(), nn.ReLU(), nn.Linear(3, 2))
    x = pg.Tensor(RNG.standard_normal((5, 4)).astype(np.float32))
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    path = tmp_path / "ck.npz"
    nn.save(a.state_dict(), path)
    with np.load(path, allow_pickle=False) as f:  # plain arrays: loads without pickle
        assert sorted(f.files) == sorted(a.state_dict())
    weight = b[2].weight
    missing, unexpected = b.load_state_dict(nn.load(path))
    assert missing == [] and unexpected == []
    assert b[2].weight is weight  # loaded in place: optimizers holding the tensor see the new value
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    # The loaded weights are trainable leaves again.
    b(x).sum().backward()
    assert b[2].weight.grad is not None


def test_state_dict_is_a_copy() -> None:
    lin = nn.Linear(2, 2)
    sd = lin.state_dict()
    sd["weight"][:] = 123.0
    assert not np.any(lin.weight.numpy() == 123.0)


def test_load_state_dict_errors() -> None:
    lin = nn.Linear(3, 2)
    good = lin.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['bias'\].*unexpected keys \['extra'\]"):
        lin.load_state_dict({"weight": good["weight"], "extra": np.zeros(1)})
    assert lin.load_state_dict({"weight": good["weight"], "extra": np.zeros(1)}, strict=False) == (["bias"], ["extra"])
    with pytest.raises(ValueError, match=r"weight has shape \(3, 2\) in the checkpoint, \(2, 3\) in the model"):
        lin.load_state_dict({"weight": good["weight"].T, "bias": good["bias"]})


def test_checkpoint_refuses_pickled_objects(tmp_path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        nn.load(path)


def test_to_device() -> None:
    m = nn.Sequential(nn.Linear(2, 2))
    w = m[0].weight
    assert m.to("cpu") is m and m[0].weight is w and w.device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        m.to("tpu")


def test_zero_grad_and_repr() -> None:
    m = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.2), nn.Dropout(0.1))
    m(pg.ones(1, 2)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    r = repr(m)
    assert "(0): Linear(in_features=2, out_features=3, bias=True)" in r and "negative_slope=0.2" in r and "p=0.1" in r


def test_sequential_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match="Sequential: argument 1 is a function"):
        nn.Sequential(nn.ReLU(), F.relu)


def test_module_list() -> None:
    ml = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 1)])
    ml.append(nn.ReLU())
    assert len(ml) == 3 and isinstance(ml[2], nn.ReLU)
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]


# ---- regressions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.pt", "model", "model.npz", "ckpt.bin"])
def test_save_writes_exactly_the_given_path(tmp_path, name: str) -> None:
    sd = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": pg.Tensor(np.ones(2, np.float32))}
    path = tmp_path / name
    nn.save(sd, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    out = nn.load(path)
    np.testing.assert_array_equal(out["w"], sd["w"])
    np.testing.assert_array_equal(out["b"], np.ones(2, np.float32))
    nn.save(sd, str(path))  # str paths too, overwriting
    assert sorted(nn.load(str(path))) == ["b", "w"]


def test_load_state_dict_refuses_float_values_for_an_int_buffer() -> None:
    m = nn.Module()
    m.register_buffer("count", pg.Tensor(np.array([1, 2], np.int64), requires_grad=False))
    m.w = pg.Tensor(np.zeros(2, np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=r"load_state_dict: count .*float64.*int64"):
        m.load_state_dict({"count": np.array([1.7, 2.0]), "w": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(m.count.numpy(), [1, 2])  # nothing half-loaded
    # int -> float and same-kind conversions still load
    m.load_state_dict({"count": np.array([3, 4], np.int32), "w": np.array([1, 2], np.int64)})
    np.testing.assert_array_equal(m.count.numpy(), [3, 4])
    np.testing.assert_array_equal(m.w.numpy(), [1.0, 2.0])
    m.load_state_dict({"count": np.array([5, 6], np.int64), "w": np.array([0.5, 1.5], np.float64)})
    np.testing.assert_array_equal(m.w.numpy(), [0.5, 1.5])


def test_module_list_append_rejects_non_modules() -> None:
    ml = nn.ModuleList([nn.ReLU()])
    with pytest.raises(TypeError, match=r"ModuleList.append: .*int.*not a Module"):
        ml.append(3)
    with pytest.raises(TypeError, match=r"not a Module"):
        nn.ModuleList([nn.ReLU(), "x"])
    assert len(ml) == 1


def test_sequential_slice_is_a_sequential() -> None:
    s = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    head = s[0:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2
    assert head[0] is s[0] and head[1] is s[1]
    x = pg.Tensor(np.ones((1, 3), np.float32))
    np.testing.assert_allclose(head(x).numpy(), s[1](s[0](x)).numpy())
    assert isinstance(s[::-1], nn.Sequential) and s[::-1][0] is s[2]
    ml = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    assert isinstance(ml[1:], nn.ModuleList) and len(ml[1:]) == 1
