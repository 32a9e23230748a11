"""Edge cases of the training API (modules, losses, optimizers, data, checkpoints) and of the inspection tools,
each a regression test for a bug found by comparing with PyTorch or by feeding unusual inputs."""

from __future__ import annotations

import gzip
import html
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import picograd as pg
from picograd import debug, nn, optim
from picograd.datasets import MNIST, DataLoader
from picograd.dump import timing_table, write_report
from picograd.html_report import render_html
from picograd.nn import functional as F

F32 = np.float32


# ---- losses -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_bce_with_logits_gradient_at_zero_logit(eager: bool, pos_weight: float | None, reference_backend) -> None:
    # d/dx is sigmoid(x) - t (scaled by pos_weight on the positive term): 0.5 - t at x = 0. The kinks of |x| and
    # max(x, 0) used to add up to -t there.
    x0 = np.array([0.0, 0.0, 0.0, 2.0, -2.0], F32)
    t = np.array([1.0, 0.0, 0.5, 1.0, 0.0], F32)
    with pg.eager(eager):
        x = pg.Tensor(x0, requires_grad=True)
        pw = None if pos_weight is None else pg.Tensor(np.array([pos_weight], F32))
        F.binary_cross_entropy_with_logits(x, t, reduction="sum", pos_weight=pw).backward()
        got = x.grad.numpy()
    s = 1 / (1 + np.exp(-x0.astype(np.float64)))
    w = 1.0 if pos_weight is None else pos_weight
    want = (1 - t) * s - w * t * (1 - s)  # d/dx of -(w t log s + (1-t) log(1-s))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_bce_weights_must_broadcast_to_the_input(reference_backend) -> None:
    p, t = pg.Tensor(np.full(5, 0.5, F32)), np.ones(5, F32)
    with pytest.raises(ValueError, match=r"binary_cross_entropy: weight of shape \(3,\) does not broadcast .*\(5,\)"):
        F.binary_cross_entropy(p, t, weight=np.ones(3))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: pos_weight of shape \(3,\)"):
        F.binary_cross_entropy_with_logits(p, t, pos_weight=np.ones(3))
    with pytest.raises(ValueError, match=r"weight of shape \(2, 5\) does not broadcast"):
        F.binary_cross_entropy(p, t, weight=np.ones((2, 5)))  # would silently double the loss's size


def test_bce_target_outside_0_1_raises_like_torch(reference_backend) -> None:
    with pytest.raises(ValueError, match=r"binary_cross_entropy: target values must be probabilities .*\[0, 2\]"):
        F.binary_cross_entropy(pg.Tensor(np.full(3, 0.5, F32)), np.array([0.0, 1.0, 2.0], F32))


def test_cross_entropy_with_float_class_indices_says_so(reference_backend) -> None:
    x = pg.Tensor(np.zeros((3, 4), F32))
    for y in (np.array([0.0, 1.0, 2.0]), pg.Tensor(np.array([0.0, 1.0, 2.0], F32))):
        with pytest.raises(TypeError, match=r"cross_entropy: class targets must be integers, got float(32|64)\[3\]"):
            F.cross_entropy(x, y)


def test_one_hot_rejects_a_bad_num_classes() -> None:
    for n in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="one_hot: num_classes must be a positive int"):
            F.one_hot(np.array([0, 1]), n)


# ---- dropout ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eager", [False, True])
def test_dropout_p1_gives_zeros_like_torch(eager: bool, reference_backend) -> None:
    with pg.eager(eager):
        x = pg.Tensor(np.arange(1, 7, dtype=F32).reshape(2, 3), requires_grad=True)
        d = nn.Dropout(1.0)
        out = d(x)
        np.testing.assert_array_equal(out.numpy(), np.zeros((2, 3), F32))
        out.sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), np.zeros((2, 3), F32))
        np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), np.zeros((2, 3), F32))
        np.testing.assert_array_equal(x.dropout(1.0).numpy(), np.zeros((2, 3), F32))  # the Tensor method too
        d.eval()
        assert d(x) is x


def test_dropout_p_is_checked() -> None:
    with pytest.raises(TypeError, match="Dropout: p must be a number"):
        nn.Dropout(True)
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\], got 1.5"):
        F.dropout(pg.ones(2), 1.5)
    with pytest.raises(TypeError, match="dropout: p must be a number"):
        pg.ones(2).dropout(True)


# ---- modules ------------------------------------------------------------------------------------------------------
def test_load_state_dict_names_the_entry_for_non_numeric_values() -> None:
    lin = nn.Linear(2, 3)
    before = lin.weight.numpy()
    good_bias = np.zeros(3, F32)
    for bad, what in [(np.array([["a", "b"]] * 3), "<U1"), (None, "object"), (np.zeros((3, 2), complex), "complex")]:
        with pytest.raises(TypeError, match=rf"load_state_dict: weight is a .* of dtype {what}.*float32\[3, 2\]"):
            lin.load_state_dict({"weight": bad, "bias": good_bias})
    np.testing.assert_array_equal(lin.weight.numpy(), before)


def test_register_buffer_and_parameter_validate_like_torch() -> None:
    m = nn.Module()
    m.register_buffer("running", None)  # reserves the name; skipped until a Tensor is assigned
    m.register_parameter("w", None)
    assert m.state_dict() == {} and list(m.parameters()) == []
    with pytest.raises(TypeError, match="register_buffer: q must be a Tensor or None, got ndarray"):
        m.register_buffer("q", np.ones(2))
    with pytest.raises(KeyError, match="without '.'"):
        m.register_buffer("a.b", pg.ones(2))
    with pytest.raises(KeyError, match="'training' already exists"):
        m.register_buffer("training", pg.ones(2))
    with pytest.raises(TypeError, match=r"register_parameter: z is int64\[2\]; only float tensors"):
        m.register_parameter("z", pg.Tensor(np.ones(2, np.int64)))
    m.running = pg.ones(2)
    assert list(m.state_dict()) == ["running"]


def test_a_shared_module_is_listed_once_like_torch() -> None:
    lin = nn.Linear(2, 2)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in m.named_modules()] == ["", "0", "1"]
    assert [n for n, _ in m.named_modules(remove_duplicate=False)] == ["", "0", "1", "2"]
    assert len(list(m.modules())) == 3 and [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias"]


def test_train_mode_must_be_a_bool() -> None:
    s = nn.Sequential(nn.Dropout())
    with pytest.raises(TypeError, match="Sequential.train: mode must be a bool, got str 'no'"):
        s.train("no")
    assert s.training


def test_container_indexing_errors_name_the_container() -> None:
    s = nn.Sequential(nn.ReLU(), nn.Tanh())
    assert isinstance(s[-1], nn.Tanh)
    with pytest.raises(IndexError, match="Sequential: index 2 is out of range for 2 modules"):
        s[2]
    with pytest.raises(TypeError, match="Sequential: indices must be ints or slices"):
        s["0"]


def test_reprs_show_their_arguments() -> None:
    assert repr(nn.Softmax(1)) == "Softmax(dim=1)" and repr(nn.LogSoftmax(0)) == "LogSoftmax(dim=0)"
    assert repr(nn.Flatten(0)) == "Flatten(start_dim=0, end_dim=-1)"


# ---- checkpoints --------------------------------------------------------------------------------------------------
def test_save_keeps_keys_that_collide_with_savez_arguments(tmp_path: Path) -> None:
    state = {"file": np.ones(2, F32), "allow_pickle": np.arange(3), "a.b": np.zeros((2, 2))}
    nn.save(state, tmp_path / "ck.pt")
    back = nn.load(tmp_path / "ck.pt")
    assert sorted(back) == sorted(state)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype


def test_save_refuses_what_load_could_not_read(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="save: a is a list of dtype object"):
        nn.save({"a": [1, None]}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="save: keys must be non-empty strs, got int 1"):
        nn.save({1: np.ones(2)}, tmp_path / "x.npz")


def test_load_of_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"garbage")
    np.save(tmp_path / "a.npy", np.ones(3))
    for name in ("junk", "a.npy"):
        with pytest.raises(ValueError, match="is not a checkpoint written by picograd.nn.save"):
            nn.load(tmp_path / name)


# ---- optimizers ---------------------------------------------------------------------------------------------------
def _w() -> pg.Tensor:
    return pg.Tensor(np.ones(3, F32), requires_grad=True)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: optim.SGD(_w(), lr=0.1), TypeError, "got a single Tensor; wrap it in a list"),
    (lambda: optim.SGD([_w()], lr=None), TypeError, "SGD: lr must be a finite number, got NoneType"),
    (lambda: optim.SGD([_w()], lr="0.1"), TypeError, "SGD: lr must be a finite number, got str"),
    (lambda: optim.Adam([_w()], betas=(0.9,)), ValueError, r"Adam: betas must be a pair"),
    (lambda: optim.SGD([{"params": [_w()], "nesterov": True, "dampening": 0.5}], lr=0.1, momentum=0.9),
     ValueError, "nesterov"),
    (lambda: optim.Adam([{"params": [_w()], "betas": (1.5, 0.5)}]), ValueError, r"betas must be in \[0, 1\)"),
    (lambda: optim.AdamW([{"params": [_w()], "weight_decay": -1.0}]), ValueError, "weight_decay"),
    (lambda: optim.SGD([{"params": [_w()], "momentum": -0.5}], lr=0.1), ValueError, "momentum"),
    (lambda: optim.SGD([{"lr": 0.1}], lr=0.1), TypeError, r"'params' entry, got a dict with keys \['lr'\]"),
    (lambda: optim.SGD({_w()}, lr=0.1), TypeError, "SGD: params must be an ordered collection"),
    (lambda: optim.SGD([{"params": {_w()}}], lr=0.1), TypeError, "a group's params must be an ordered collection"),
])
def test_optimizer_arguments_are_checked_in_every_group(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("eager", [False, True])
def test_zero_grad_set_to_none_false_keeps_zero_gradients_like_torch(eager: bool, reference_backend) -> None:
    # torch: a zero gradient still gets momentum and weight decay; a None one is skipped.
    with pg.eager(eager):
        w, v = _w(), _w()
        opt = optim.SGD([w, v], lr=0.1, momentum=0.9, weight_decay=0.1)
        (w * v).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        np.testing.assert_array_equal(v.grad.numpy(), np.zeros(3, F32))
        (w * 2.0).sum().backward()  # v takes no part in this loss
        opt.step()
        # by hand (torch gives the same): buf1 = 1 + 0.1 = 1.1, v1 = 1 - 0.11 = 0.89;
        # g2 = 0 + 0.1 * 0.89, buf2 = 0.9 * 1.1 + 0.089, v2 = 0.89 - 0.1 * buf2
        np.testing.assert_allclose(v.numpy(), np.full(3, 0.89 - 0.1 * (0.99 + 0.089)), rtol=1e-6)
        m = nn.Linear(2, 2)
        m.zero_grad(set_to_none=False)  # no gradient yet: stays None
        assert m.weight.grad is None
        opt.zero_grad()
        assert v.grad is None


def test_optimizer_load_state_dict_refuses_a_mismatched_checkpoint() -> None:
    w = _w()
    adam = optim.Adam([w], lr=0.1)
    (w * w).sum().backward()
    adam.step()
    state = adam.state_dict()
    sgd = optim.SGD([_w()], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: unexpected keys \['param0.exp_avg'"):
        sgd.load_state_dict(state)
    assert sgd.steps == 0  # nothing was loaded
    with pytest.raises(ValueError, match=r"unexpected keys \['group1.lr'\]"):
        optim.Adam([_w()]).load_state_dict({**state, "group1.lr": np.array(0.5)})
    with pytest.raises(KeyError, match="no 'steps' entry; expected a picograd optimizer state_dict"):
        optim.Adam([_w()]).load_state_dict({"state": {}, "param_groups": []})
    other = optim.Adam([_w()])
    other.load_state_dict(state)
    assert other.steps == 1 and other.lr == 0.1


# ---- data ---------------------------------------------------------------------------------------------------------
def _idx(arr: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("labels, code, match", [
    (np.array([3, 300], np.int32), 0x0C, r"labels must be classes 0..9, found 1 outside \(e.g. 300\)"),
    (np.array([-1, 2], np.int8), 0x09, r"labels must be classes 0..9, .*e.g. -1"),
    (np.array([1.5, 2.0], np.float32), 0x0D, "expected integer class labels, got float32"),
])
def test_mnist_refuses_corrupt_labels(tmp_path: Path, labels: np.ndarray, code: int, match: str) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((2, 28, 28), np.uint8), 8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(labels, code))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: " + match):
        MNIST(tmp_path, train=False, download=False)


def test_loader_checks_seed_and_data_up_front() -> None:
    x = np.arange(10, dtype=F32)
    for seed in ("a", 1.5, -1, True):
        with pytest.raises(TypeError, match="DataLoader: seed must be None or a non-negative int"):
            DataLoader(x, shuffle=True, seed=seed)
    with pytest.raises(TypeError, match="DataLoader: data must be .* got a dict"):
        DataLoader({"x": x})
    with pytest.raises(TypeError, match="DataLoader: data must be .* got a NoneType"):
        DataLoader(None)
    with pytest.raises(TypeError, match=r"DataLoader: an array of dtype <U1 \(2,\) cannot become Tensor batches"):
        DataLoader(np.array(["a", "b"]))
    assert [b[0].tolist() for b in DataLoader(np.array(["a", "b"]), numpy=True)] == [["a", "b"]]


# ---- inspection tools ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, dtype, text", [(1e40, np.float32, "inf"), (16777217, np.float32, "1.6777216e+07"),
                                                (1e-300, np.float32, "0.0"), (0.1, np.float32, "0.1"),
                                                (0.1, np.float64, "0.1:f64")])
def test_printed_literals_are_the_values_the_program_uses(value, dtype, text) -> None:
    x = pg.Tensor(np.ones(3, dtype), dtype=dtype)
    line = next(ln for ln in pg.dump(x * value, pending=False).splitlines() if "= mul" in ln)
    assert line.split("=", 1)[1].split("#")[0].split() == ["mul", "in0", text]


def test_a_node_that_is_two_outputs_says_so() -> None:
    a = pg.Tensor(np.ones(3, F32))
    text = pg.dump(a + 1.0, a * 2.0, a + 1.0, pending=False)
    assert "outputs: %0 %1 %0" in text
    assert "out0,out2" in next(ln for ln in text.splitlines() if ln.startswith("  %0:"))


def test_dump_of_a_non_tensor_raises_clearly() -> None:
    with pytest.raises(TypeError, match="dump: expected Tensors .* got int 3"):
        pg.dump(pg.ones(2), 3)


def _record_zero_kernel_program(backend: str) -> debug.Capture:
    x = pg.Tensor(np.ones(3, F32))
    roots = [x.reshape(3, 1).node]
    program = None if backend == "numpy" else SimpleNamespace(kernels=[], key_hash="0kernels", source="# module")
    with debug.Capture() as cap:
        for _ in range(2):
            debug.on_realize({"roots": roots, "program": program, "backend": backend, "hit": False,
                              "compile_s": 0.0, "run_s": 1e-4})
    return cap


def test_html_report_does_not_blame_the_interpreter_for_a_compiled_program_without_kernels(tmp_path: Path) -> None:
    cap = _record_zero_kernel_program("cpu")
    page = html.unescape(render_html(cap, {0: None}, {0: "program0"}))
    assert "numpy interpreter" not in page and "nothing to compute" in page
    page = html.unescape(render_html(_record_zero_kernel_program("numpy"), {0: None}, {0: "program0"}))
    assert "numpy interpreter" in page
    assert Path(write_report(cap, tmp_path / "out", svg=False)["index"]).is_file()


def test_timings_on_the_interpreter_do_not_mention_jit_compilation() -> None:
    table = timing_table(_record_zero_kernel_program("numpy").programs[0])
    assert "median of calls 2..2" in table and "compil" not in table.split("times:")[1]
    table = timing_table(_record_zero_kernel_program("cpu").programs[0])
    assert "(the first one compiles)" in table


def test_loader_refuses_a_list_of_samples() -> None:
    # read as two arrays (1.0, 0) and (2.0, 1), the batches were x = [1], [2] then y-as-x = [0], [1]
    with pytest.raises(TypeError, match="DataLoader: got a list of 2 tuples, which looks like a list of samples"):
        DataLoader([(1.0, 0), (2.0, 1)], batch_size=1)
    assert len(DataLoader([np.zeros(4), np.ones(4)], batch_size=2)) == 2  # a list of arrays is fine


def test_linear_checks_its_sizes() -> None:
    for args in ((2.5, 3), (3, -1), (True, 2)):
        with pytest.raises(ValueError, match="Linear: (in|out)_features must be a non-negative int"):
            nn.Linear(*args)


def test_dump_realizes_the_tensors_a_function_returns_in_a_dict(reference_backend) -> None:
    from picograd.dump import _realize_result

    out = {"loss": pg.ones(3).sum() * 2.0, "step": 3}
    assert out["loss"].node.buffer is None
    _realize_result(out)
    assert out["loss"].node.buffer is not None


def test_a_replaced_parameter_keeps_its_place_like_torch() -> None:
    lin = nn.Linear(2, 3)
    lin.weight = nn.Parameter(np.zeros((3, 2), F32))  # e.g. a custom init
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    assert list(lin.state_dict()) == ["weight", "bias"]
    lin.bias = None  # stays registered while None (skipped), and comes back in its place
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    lin.bias = nn.Parameter(np.zeros(3, F32))
    lin.weight = nn.Parameter(np.ones((3, 2), F32))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    s = nn.Sequential(nn.ReLU(), nn.Tanh())
    setattr(s, "0", None)
    assert [type(m).__name__ for m in s] == ["Tanh"] and len(s) == 1
    ml = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    setattr(ml, "0", None)
    ml.append(nn.Sigmoid())
    assert [type(m).__name__ for m in ml] == ["Tanh", "Sigmoid"]


def test_dump_cli_missing_file_of_a_function_target_is_a_usage_error(tmp_path: Path, capsys) -> None:
    from picograd.dump import main

    with pytest.raises(SystemExit) as e:
        main(["-o", str(tmp_path / "out"), str(tmp_path / "nofile.py") + ":main"])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing run, nothing written


def test_a_reversed_slice_prints_in_python_syntax(reference_backend) -> None:
    a = pg.Tensor(np.arange(12, dtype=F32).reshape(3, 4))
    text = pg.dump(a[::-1, 2::-2], pending=False)
    assert "slice[2::-1, 2::-2] in0" in text  # was slice[2:-1:-1, 2:-1:-2]: empty slices in Python's syntax
    assert np.array_equal(a[::-1, 2::-2].numpy(), np.arange(12).reshape(3, 4)[2::-1, 2::-2])


def test_setting_training_directly_makes_jit_trace_again() -> None:
    # torch allows `m.training = False`; a replayed step kept drawing dropout masks after it
    d = nn.Sequential(nn.Dropout(0.5))

    @pg.jit
    def f(x: pg.Tensor) -> pg.Tensor:
        return d(x) * 1.0

    x = pg.Tensor(np.ones((8, 8), F32))
    for _ in range(5):
        f(x)
    d[0].training = False
    np.testing.assert_array_equal(f(x).numpy(), np.ones((8, 8), F32))
