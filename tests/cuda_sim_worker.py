"""Runs the CUDA checks in a process of its own and prints one JSON line of results.

The CUDA simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba is first imported, which the
main pytest process may already have done, so tests/test_cuda.py starts this file in a subprocess with the
environment set. The same checks run on a real GPU (benchmarks/gpu_check.sh) without the variable.

Checks: every op-table row on device="cuda" (forward and gradients of sum(out * w), one realize)
against eager numpy; a two-step MLP training run (dropout, Adam) against the same run on the numpy
backend; and that the second step reuses the compiled program."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import picograd as pg  # noqa: E402
import picograd.cuda  # noqa: E402,F401
from picograd import Tensor  # noqa: E402


def build_row(row, arrays):  # noqa: ANN001, ANN201 - optable.run_row's graph, on device="cuda", not realized
    from optable import output_weights

    pg.manual_seed(0)
    with pg.eager(False):
        ts = [Tensor(a, dtype=a.dtype, requires_grad=s.is_float and s.grad, device="cuda")
              for a, s in zip(arrays, row.inputs, strict=True)]
        out = row.fn(*ts)
        wrt = [ts[i] for i in row.grad_inputs]
        if wrt and out.dtype.kind == "f":
            w = output_weights(out.shape, out.dtype, 1)
            (out * Tensor(w, dtype=w.dtype, device="cuda")).sum().backward()
        return out, wrt


def fetch_row(out, wrt):  # noqa: ANN001, ANN201
    assert out.device == "cuda", f"the output is on {out.device}"
    assert isinstance(out.node.buffer.data, picograd.cuda.CudaArray), type(out.node.buffer.data)
    grads = [t.grad.numpy() if t.grad is not None else np.zeros_like(t.numpy()) for t in wrt]
    return out.numpy(), grads


def compare(row, got, got_g, want, want_g) -> None:  # noqa: ANN001
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    np.testing.assert_allclose(got, want, rtol=max(row.rtol, 1e-5), atol=max(row.atol, 1e-6))
    for g, w in zip(got_g, want_g, strict=True):
        np.testing.assert_allclose(g, w, rtol=max(row.rtol, 1e-5), atol=max(row.atol, 1e-5))


def check_rows(only: list[str] | None) -> dict[str, str]:
    """Every row's graph is built first and all are realized together: ONE program (on a GPU machine its
    hundreds of kernels compile in parallel; row by row, compile start-up would dominate). If that fails,
    rows are realized one by one to say which."""
    from optable import ROWS, make_inputs, run_row

    rows = [r for r in ROWS if not only or r.name in only]
    res: dict[str, str] = {}
    built = {}
    for row in rows:
        try:
            arrays = make_inputs(row)
            built[row.name] = (row, arrays, *build_row(row, arrays))
        except Exception as e:
            res[row.name] = f"build: {type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    try:
        t0 = time.time()
        pg.realize(*[b[2] for b in built.values()])
        print(f"all rows in one realize: {time.time() - t0:.1f} s", file=sys.stderr)
    except Exception as e:
        print(f"one realize for all rows failed ({type(e).__name__}: {e}); row by row", file=sys.stderr)
        for name, (row, arrays, _, _) in list(built.items()):
            try:
                built[name] = (row, arrays, *build_row(row, arrays))
                pg.realize(built[name][2])
            except Exception as e:
                res[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
                del built[name]
    for name, (row, arrays, out, wrt) in built.items():
        try:
            want, want_g = run_row(row, arrays, mode="eager")
            got, got_g = fetch_row(out, wrt)
            compare(row, got, got_g, want, want_g)
            res[name] = "ok"
        except Exception as e:  # reported per row by the parent test
            res[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    return res


def train_mlp(device: str, backend: str, steps: int = 3, sizes=(12, 16, 8, 3), check_resident: bool = False,
              use_jit: bool = False) -> tuple[list[float], list]:
    """A few Adam steps of a small MLP with dropout; returns losses and final parameters."""
    from picograd import nn, optim
    from picograd.nn import functional as F

    os.environ["PICOGRAD_BACKEND"] = backend
    pg.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(0.25)]
    model = nn.Sequential(*layers).to(device)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []

    def step(x: Tensor, y: Tensor) -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = pg.jit(step) if use_jit else step
    train_mlp.jit_stats = getattr(fn, "stats", None)
    for _ in range(steps):
        x = rng.standard_normal((5, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], 5)
        losses.append(fn(Tensor(x, device=device), Tensor(y, device=device)).item())
        if check_resident:  # parameters, gradients and Adam's state never left the GPU
            state = [t for st in opt.state.values() for t in st.values()]
            for t in list(model.parameters()) + [p.grad for p in model.parameters()] + state:
                assert isinstance(t.node.buffer.data, picograd.cuda.CudaArray), (t.shape, type(t.node.buffer.data))
    return losses, [p.numpy() for p in model.parameters()]


def check_mlp() -> dict[str, str]:
    res = {}
    try:
        want_l, want_p = train_mlp("cpu", "numpy")
        before = dict(picograd.cuda.stats())
        got_l, got_p = train_mlp("cuda", "cuda", check_resident=True)
        after = picograd.cuda.stats()
        np.testing.assert_allclose(got_l, want_l, rtol=1e-4, atol=1e-5)
        for g, w in zip(got_p, want_p, strict=False):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
        res["mlp_train"] = "ok"
        # the first steps compile (Adam's first step differs), a later step of the same structure must hit
        hits, compiles = after["hits"] - before["hits"], after["compiles"] - before["compiles"]
        res["mlp_cache_hit"] = "ok" if hits >= 1 and compiles <= 2 else f"compiles={compiles} hits={hits}"
        # picograd.jit replays the cuda program (steps 4-6) and stays on the device
        want_l, want_p = train_mlp("cpu", "numpy", steps=6)
        got_l, got_p = train_mlp("cuda", "cuda", steps=6, check_resident=True, use_jit=True)
        np.testing.assert_allclose(got_l, want_l, rtol=1e-4, atol=1e-5)
        for g, w in zip(got_p, want_p, strict=False):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
        assert train_mlp.jit_stats["replayed"] == 3, train_mlp.jit_stats
        res["mlp_jit"] = "ok"
    except Exception as e:
        res["mlp_train"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"
    return res


def check_misc() -> dict[str, str]:
    """Multi-tile matmuls with fused epilogues (edges not multiples of the tile), devices and transfers."""
    res = {}

    def case(name, fn) -> None:  # noqa: ANN001
        try:
            fn()
            res[name] = "ok"
        except Exception as e:
            res[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"

    def linear_relu(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> list[Tensor]:
        """relu(a @ b.T + c) on the GPU and, pending, its squares' sum's gradients: [out, da, db, dc]."""
        ta, tb, tc = (Tensor(x, device="cuda", requires_grad=True) for x in (a, b, c))
        out = (ta @ tb.T + tc).relu()  # an epilogue: bias, ReLU, and the pre-activation kept for backward
        (out * out).sum().backward()
        return [out, ta.grad, tb.grad, tc.grad]

    def check_linear_relu(a: np.ndarray, b: np.ndarray, c: np.ndarray, got: list[Tensor]) -> None:
        want = np.maximum(a @ b.T + c, 0)
        g = 2 * want * (want > 0)
        np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-4)
        for t, w in zip(got[1:], (g @ b, g.T @ a, g.sum(0)), strict=True):
            np.testing.assert_allclose(t.numpy(), w, rtol=1e-4, atol=1e-3)

    def tiles() -> None:
        rng = np.random.default_rng(1)
        for m, k, n in ((19, 9, 23), (33, 70, 17), (2, 130, 3)):
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((n, k)).astype(np.float32)
            c = rng.standard_normal(n).astype(np.float32)
            got = linear_relu(a, b, c)
            pg.realize(*got)
            check_linear_relu(a, b, c, got)
        x = rng.standard_normal((3, 5, 7)).astype(np.float32)
        y = rng.standard_normal((3, 7, 11)).astype(np.float32)
        np.testing.assert_allclose((Tensor(x, device="cuda") @ Tensor(y, device="cuda")).numpy(), x @ y,
                                   rtol=1e-5, atol=1e-4)

    def split_k() -> None:  # long products with few output tiles: partial tiles, then a kernel adding them
        from picograd.debug import Capture

        rng = np.random.default_rng(3)
        a, w = rng.standard_normal((6, 150)).astype(np.float32), rng.standard_normal((5, 150)).astype(np.float32)
        c, q = rng.standard_normal(5).astype(np.float32), rng.standard_normal((150, 3)).astype(np.float32)
        x, y = rng.standard_normal((3, 4, 200)).astype(np.float32), rng.standard_normal((3, 200, 2)).astype(np.float32)
        # The simulator's tiny tiles, then a 3-SM GPU's (16x32 tiles, 256-thread blocks; slower to simulate).
        for sms, splits_at_least in ((None, 3), ("3", 2)):
            if sms:
                os.environ["PICOGRAD_CUDA_SIM_SMS"] = sms
            picograd.cuda.clear_cache()  # programs are cached by graph, not by launch configuration
            try:
                with Capture(profile=False) as cap:
                    got = linear_relu(a, w, c)
                    flipped = (Tensor(a, device="cuda") @ Tensor(q, device="cuda")).T * 2  # stored transposed
                    batched = Tensor(x, device="cuda") @ Tensor(y, device="cuda")  # past the small grid's z limit
                    pg.realize(*got, flipped, batched)
            finally:
                os.environ.pop("PICOGRAD_CUDA_SIM_SMS", None)
                picograd.cuda.clear_cache()
            sums = [k.name for rec in cap.programs for k in rec.kernels if k.name.endswith("_sum")]
            assert len(sums) >= splits_at_least or os.environ.get("PICOGRAD_CUDA_SPLIT_K") == "0", (sms, sums)
            check_linear_relu(a, w, c, got)
            np.testing.assert_allclose(flipped.numpy(), (a @ q).T * 2, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(batched.numpy(), x @ y, rtol=1e-5, atol=1e-4)
        # random shapes at the tiny tiles: k from 32 (the least that splits) up, edges that cut tiles, batches
        for _ in range(8):
            nb, m, n, k = (int(v) for v in rng.integers((1, 1, 1, 32), (4, 14, 14, 400)))
            a3 = rng.standard_normal((nb, m, k)).astype(np.float32)
            b3 = rng.standard_normal((nb, k, n)).astype(np.float32)
            got = (Tensor(a3, device="cuda") @ Tensor(b3, device="cuda")).tanh()
            np.testing.assert_allclose(got.numpy(), np.tanh(a3 @ b3), rtol=1e-4, atol=1e-4, err_msg=str((nb, m, n, k)))

    def long_reductions() -> None:  # big enough for the tree and two-pass templates on a GPU
        rng = np.random.default_rng(2)
        from picograd.codegen.cuda_runtime import simulated

        x = rng.standard_normal((3, 3000 if simulated() else 200000)).astype(np.float32)
        t = Tensor(x, device="cuda")
        np.testing.assert_allclose(t.sum(axis=1).numpy(), x.sum(1), rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(t.max(axis=1).numpy(), x.max(1))
        np.testing.assert_allclose(t.mean().numpy(), x.mean(), rtol=1e-4, atol=1e-5)

    def devices() -> None:
        a = Tensor(np.ones((2, 3), np.float32), device="cuda")
        assert a.device == "cuda" and isinstance(a.node.buffer.data, picograd.cuda.CudaArray)
        assert repr(a).endswith("dtype=float32, device='cuda')") and "device" not in repr(a.to("cpu")), repr(a)
        assert a.to("cuda:0") is a and Tensor(np.ones(2, np.float32), device="cuda:0").device == "cuda"  # torch's name
        lin = picograd.nn.Linear(2, 3).to("cuda:0")
        assert all(p.device == "cuda" for p in lin.parameters()), [p.device for p in lin.parameters()]
        b = a.to("cpu")
        assert b.device == "cpu" and isinstance(b.node.buffer.data, np.ndarray)
        assert a.to("cuda") is a and b.to("cuda").device == "cuda"
        np.testing.assert_array_equal((b.to("cuda") * 2).numpy(), np.full((2, 3), 2, np.float32))
        try:
            a + b
        except ValueError as e:
            assert "device" in str(e), e
        else:
            raise AssertionError("mixing cuda and cpu tensors in one op did not raise")
        assert picograd.cuda.is_available()

    def small_ints() -> None:  # numba computes int8..uint32 in 64 bits on the GPU: fused code must wrap
        a = np.array([100, -100, 127, -128, 3], np.int8)
        t = Tensor(a, device="cuda")
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(((t + t) > 0).numpy(), (a + a) > 0)
            np.testing.assert_array_equal(((t * t) < 7).numpy(), (a * a) < 7)
            np.testing.assert_array_equal(((-t) > 0).numpy(), (-a) > 0)

    def inspection() -> None:  # PICOGRAD_DEBUG / picograd-dump see the CUDA program's kernels and source
        from picograd.debug import Capture

        with Capture() as cap:
            for _ in range(2):
                (Tensor(np.ones((3, 4), np.float32), device="cuda").exp() * 2).sum(axis=1).realize()
        (rec,) = cap.programs
        assert rec.kernels and "cuda" in rec.source and rec.calls == 2 and rec.hits == 1, rec

    def empty_batch() -> None:  # a Linear layer and its gradients on a batch of no rows
        x = Tensor(np.ones((0, 3), np.float32), device="cuda", requires_grad=True)
        w = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4), device="cuda", requires_grad=True)
        b = Tensor(np.ones(4, np.float32), device="cuda", requires_grad=True)
        out = (x @ w + b).relu()
        (out * 2).sum().backward()
        pg.realize(out, w.grad, b.grad)
        assert out.numpy().shape == (0, 4)
        np.testing.assert_array_equal(w.grad.numpy(), np.zeros((3, 4), np.float32))
        np.testing.assert_array_equal(b.grad.numpy(), np.zeros(4, np.float32))
        np.testing.assert_array_equal((x @ w).sum(axis=0).numpy(), np.zeros(4, np.float32))

    def host_backend(fn):  # noqa: ANN001, ANN202 - cpu tensors on the numpy interpreter (main() set "cuda")
        def run() -> None:
            old = os.environ.get("PICOGRAD_BACKEND")
            os.environ["PICOGRAD_BACKEND"] = "numpy"
            try:
                fn()
            finally:
                os.environ["PICOGRAD_BACKEND"] = old if old is not None else "cpu"

        return run

    @host_backend
    def mixed_device_realize() -> None:  # one realize gathering cpu and cuda nodes: a program per device
        a = Tensor(np.ones(3, np.float32)) * 2  # reads a cpu buffer
        c = Tensor(np.ones(3, np.float32), device="cuda") * 3
        pg.realize(a, c)
        assert isinstance(a.node.buffer.data, np.ndarray) and a.node.buffer.device == "cpu", a.node.buffer
        assert isinstance(c.node.buffer.data, picograd.cuda.CudaArray), c.node.buffer
        np.testing.assert_array_equal(a.numpy(), np.full(3, 2, np.float32))
        np.testing.assert_array_equal(c.numpy(), np.full(3, 3, np.float32))
        # a CPU gradient that reads no buffer (d(2w)/dw), pending while a cuda value is read: it was computed by
        # the cuda program, and the CPU tensor then held a CudaArray that CPU programs could not read
        w = Tensor(np.ones(3, np.float32), requires_grad=True)
        (w * 2).sum().backward()
        assert (Tensor(np.ones(3, np.float32), device="cuda") * 3).sum().item() == 9.0
        assert isinstance(w.grad.node.buffer.data, np.ndarray), type(w.grad.node.buffer.data)
        np.testing.assert_array_equal((w.grad + w).numpy(), np.full(3, 3, np.float32))

    @host_backend
    def module_to_moves_grads() -> None:  # as torch's Module.to: gradients follow their parameters
        from picograd import nn, optim

        out = {}
        for dev in ("cpu", "cuda"):
            pg.manual_seed(0)
            m = nn.Linear(2, 3)
            opt = optim.SGD(m.parameters(), lr=0.1)
            m(Tensor(np.ones((1, 2), np.float32))).sum().backward()
            m.to(dev)
            assert all(p.grad.device == dev for p in m.parameters()), [p.grad.device for p in m.parameters()]
            opt.step()  # mixed devices before: cuda parameters with cpu gradients
            out[dev] = [p.numpy() for p in m.parameters()]
        for a, b in zip(out["cpu"], out["cuda"], strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-6)

    def jit_after_module_to() -> None:  # a step traced on the GPU must not replay over a model moved off it
        from picograd import nn, optim

        pg.manual_seed(0)
        m = nn.Linear(3, 2).to("cuda")
        opt = optim.SGD(m.parameters(), lr=0.1)

        @pg.jit
        def step(x: Tensor) -> Tensor:
            opt.zero_grad()
            loss = m(x).sum()
            loss.backward()
            opt.step()
            return loss

        x = Tensor(np.ones((2, 3), np.float32), device="cuda")
        for _ in range(4):
            step(x)
        assert step.stats["replayed"] >= 1, step.stats
        m.to("cpu")
        try:  # the Python mixes devices; the replay ran the cuda program and moved the parameters back
            step(x)
        except ValueError as e:
            assert "device" in str(e), e
        else:
            raise AssertionError(f"no error; parameters on {[p.device for p in m.parameters()]}")
        assert all(isinstance(p.node.buffer.data, np.ndarray) for p in m.parameters())

    @host_backend
    def host_data_and_devices() -> None:  # host data meets a cuda tensor as a scalar would; devices mixed at build
        a = np.array([1.0, 2.0, 3.0], np.float32)
        x = Tensor(a, device="cuda", requires_grad=True)
        got = x * np.array([2.0, 0.5, 1.0], np.float32) + [1.0, 1.0, 1.0]  # numpy and list data go to the GPU
        assert got.device == "cuda" and isinstance(got.realize().node.buffer.data, picograd.cuda.CudaArray)
        np.testing.assert_allclose(got.numpy(), a * [2.0, 0.5, 1.0] + 1.0)
        np.testing.assert_array_equal((x == [1.0, 3.0, 3.0]).numpy(), [True, False, True])
        got.backward(gradient=[1.0, 2.0, 3.0])  # a host seed, made on the tensor's device
        np.testing.assert_allclose(x.grad.numpy(), [2.0, 1.0, 3.0])
        x.grad = None
        got = x * 2
        for what, build in (
            ("where", lambda: pg.where(Tensor(np.array([True, False, True])), x, 0.0)),  # cpu mask, cuda branch
            ("backward", lambda: got.backward(gradient=Tensor(np.ones(3, np.float32)))),  # a cpu seed
        ):
            try:
                build()
            except ValueError as e:
                assert "device" in str(e) or "cuda" in str(e), (what, e)
            else:
                raise AssertionError(f"{what}: no error for mixed devices")
        assert x.grad is None  # the refused backward left no gradient behind

    @host_backend
    def jit_moves_batch_inside() -> None:  # torch's loop: x.to("cuda") inside the step; it replays, uploading x
        from picograd import nn, optim
        from picograd.nn import functional as F

        rng = np.random.default_rng(5)
        batches = [(rng.random((4, 3), dtype=np.float32), rng.integers(0, 2, 4)) for _ in range(5)]

        def train(inside: bool) -> list[np.ndarray]:
            pg.manual_seed(0)
            m = nn.Linear(3, 2).to("cuda")
            opt = optim.SGD(m.parameters(), lr=0.5)

            @pg.jit
            def step(x: Tensor, y: Tensor) -> Tensor:
                if inside:
                    x, y = x.to("cuda"), y.to("cuda")
                opt.zero_grad()
                loss = F.cross_entropy(m(x), y)
                loss.backward()
                opt.step()
                return loss

            dev = "cpu" if inside else "cuda"
            for xb, yb in batches:
                step(Tensor(xb, device=dev), Tensor(yb, device=dev))
            assert step.stats["replayed"] >= 2, (inside, step.stats)
            return [p.numpy() for p in m.parameters()]

        for a, b in zip(train(True), train(False), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)

    def inspection_nodes() -> None:  # the dump maps IR nodes onto the CUDA program's kernels, as on the CPU
        from picograd.debug import Capture

        with Capture() as cap:
            x = Tensor(np.ones((3, 4), np.float32), device="cuda", requires_grad=True)
            (x.exp() * 2).sum().backward()
            x.grad.numpy()
        (rec,) = cap.programs
        assert rec.kernels and all(k.nodes and k.shape for k in rec.kernels), rec.kernels
        assert f"{len(rec.kernels)} kernels" in rec.ir.splitlines()[0], rec.ir.splitlines()[0]

    case("matmul_tiles", tiles)
    case("split_k", split_k)
    case("empty_batch", empty_batch)
    case("inspection", inspection)
    case("small_ints", small_ints)
    case("long_reductions", long_reductions)
    case("devices", devices)
    case("mixed_device_realize", mixed_device_realize)
    case("module_to_moves_grads", module_to_moves_grads)
    case("inspection_nodes", inspection_nodes)
    case("jit_after_module_to", jit_after_module_to)
    case("host_data_and_devices", host_data_and_devices)
    case("jit_moves_batch_inside", jit_moves_batch_inside)
    return res


def main() -> None:
    only = [a for a in sys.argv[1:] if not a.startswith("-")]  # row / check names (default: all)
    t0 = time.time()
    os.environ["PICOGRAD_BACKEND"] = "cuda"
    res = check_rows(only)
    if not only or "mlp_train" in only:
        res.update(check_mlp())
    if not only or "misc" in only:
        res.update(check_misc())
    res["_seconds"] = f"{time.time() - t0:.1f}"
    bad = {k: v for k, v in res.items() if v != "ok" and not k.startswith("_")}
    print(f"{len(res) - 1 - len(bad)} checks ok, {len(bad)} failed, {res['_seconds']} s", file=sys.stderr)
    for k, v in bad.items():
        print(f"FAILED {k}: {v[:1500]}", file=sys.stderr)
    print("CUDA_RESULTS " + json.dumps(res))


if __name__ == "__main__":
    main()
