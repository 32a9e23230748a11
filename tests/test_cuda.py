"""The CUDA backend without a GPU.

* Simulator: the op table (forward + gradients, against eager numpy), a small MLP trained with dropout and
  Adam (against the numpy backend, with parameters and optimizer state checked to stay on the device), multi-
  tile matmuls, long reductions and device moves run on numba's CUDA simulator. The simulator must be
  switched on before numba is imported, so tests/cuda_sim_worker.py runs them in a subprocess (started in the
  background when collection ends: conftest.py's BACKGROUND jobs); each check is reported here as its own
  test. The reductions run again with each reduction template forced.
* PTX: a training step's kernels (and a few rows with transcendental, integer and bool ops) compile to PTX
  for sm_90 with numba-cuda's NVVM, and hold no float64 instruction.
* Launches: kernels rendered for a GPU keep to CUDA's limits (grid y/z, empty grids, static shared memory),
  which the simulator does not enforce by itself; its device memory starts as garbage, as a GPU's does.
* Errors: device="cuda" without numba-cuda or a GPU raises a clear CudaUnavailable.

Random graphs on the simulator (a fuzzer): tests/test_cuda_random.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import sys
from typing import Any

import numpy as np
import pytest
from optable import ROWS

import picograd as pg
import picograd.cuda as pcuda
from picograd import Tensor

HERE = os.path.dirname(os.path.abspath(__file__))
EXTRA = ["mlp_train", "mlp_cache_hit", "mlp_jit", "matmul_tiles", "split_k", "inspection", "small_ints",
         "long_reductions", "devices", "empty_batch", "mixed_device_realize", "module_to_moves_grads",
         "inspection_nodes", "jit_after_module_to", "host_data_and_devices",
         "jit_moves_batch_inside"]
# Rows whose graphs hold reductions: rerun with the tree and two-pass templates forced.
REDUCING = [r.name for r in ROWS if re.search(r"sum|mean|max|min|softmax|argmax|loss|entropy|mlp|matmul|dot", r.name)]


def _job(env: dict[str, str], args: list[str]) -> tuple[list[str], dict[str, str]]:
    full = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore", **env)
    return [sys.executable, os.path.join(HERE, "cuda_sim_worker.py"), *args], full


# The three simulator runs take minutes: conftest.py starts them in the background when these tests are selected.
BACKGROUND = {
    "sim": _job({}, []),
    "sim_tree": _job({"PICOGRAD_CUDA_REDUCE": "tree"}, REDUCING),
    "sim_split": _job({"PICOGRAD_CUDA_REDUCE": "split"}, REDUCING),
}


def _worker(background: Any, name: str) -> dict[str, str]:
    if importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed")
    p = background.result(name, *BACKGROUND[name])
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("CUDA_RESULTS ")]
    if not lines:
        pytest.fail(f"the simulator worker crashed (rc={p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


@pytest.fixture(scope="module")
def sim(background: Any) -> dict[str, str]:
    return _worker(background, "sim")


@pytest.fixture(scope="module")
def sim_tree(background: Any) -> dict[str, str]:
    return _worker(background, "sim_tree")


@pytest.fixture(scope="module")
def sim_split(background: Any) -> dict[str, str]:
    return _worker(background, "sim_split")


@pytest.mark.parametrize("name", [r.name for r in ROWS] + EXTRA)
def test_simulator(sim: dict[str, str], name: str) -> None:
    assert name in sim, f"{name}: not run by the worker"
    assert sim[name] == "ok", sim[name]


@pytest.mark.parametrize("name", REDUCING)
def test_simulator_tree_reduce(sim_tree: dict[str, str], name: str) -> None:
    assert sim_tree.get(name) == "ok", sim_tree.get(name)


@pytest.mark.parametrize("name", REDUCING)
def test_simulator_two_pass_reduce(sim_split: dict[str, str], name: str) -> None:
    assert sim_split.get(name) == "ok", sim_split.get(name)


# ---- PTX ---------------------------------------------------------------------------------------------
def _render_captured(fn, **target: Any) -> Any:  # noqa: ANN001
    """The CUDA program (rendered for sm_90 with 132 SMs, or as `target` says; not compiled) of the one realize
    fn() triggers; the realize itself is computed by the numpy backend. Rendered inside the backend call:
    afterwards the roots hold buffers and would read as inputs."""
    from picograd.codegen.cuda import CudaProgram
    from picograd.codegen.cuda_render import Target
    from picograd.ir.node import structural_key
    from picograd.realize import register_backend

    evaluate = importlib.import_module("picograd.eager").evaluate
    got: list = []

    def backend(roots: list) -> list:
        _, inputs = structural_key(roots)
        got.append(CudaProgram(roots, inputs, Target(**{"sim": False, "sm_count": 132, **target}), build=False))
        return evaluate(roots)

    register_backend("_capture", backend)
    old = os.environ.get("PICOGRAD_BACKEND")
    os.environ["PICOGRAD_BACKEND"] = "_capture"
    try:
        fn()
    finally:
        if old is None:
            del os.environ["PICOGRAD_BACKEND"]
        else:
            os.environ["PICOGRAD_BACKEND"] = old
    return got[-1]


def _training_step_and_rows() -> None:
    from optable import ROWS_BY_NAME, make_inputs

    from picograd import nn, optim
    from picograd.nn import functional as F

    pg.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    loss = F.cross_entropy(model(Tensor(rng.random((5, 12), dtype=np.float32))), Tensor(rng.integers(0, 3, 5)))
    loss.backward()
    opt.step()
    extra = []
    for name in ("sigmoid", "tanh", "pow", "sin", "cos", "argmax", "int_mean", "where", "getitem_neg_step",
                 "bool_sum", "int_div"):
        row = ROWS_BY_NAME[name]
        extra.append(row.fn(*[Tensor(a, dtype=a.dtype) for a in make_inputs(row)]))
    extra.append((Tensor(rng.random((7, 9), dtype=np.float32)).tanh() * 3).exp())  # a lone elementwise kernel
    pg.realize(loss, *extra)


def _nvvm_missing() -> str | None:
    """Why PTX cannot be compiled here (numba-cuda[cu13]'s NVVM is missing), or None."""
    from picograd.codegen.cuda import numba_cuda_compat

    numba_cuda_compat()  # (without it, numpy >= 2.5 made the probe fail on the GPU machine and skip these tests)
    try:
        from numba import cuda, types

        cuda.compile_ptx(lambda a: None, (types.CPointer(types.float32),), cc=(9, 0))
    except Exception as e:  # pragma: no cover - depends on the installed extra
        return f"{type(e).__name__}: {e}"
    return None


def _need_nvvm() -> None:
    why = _nvvm_missing()
    if why:  # pragma: no cover - depends on the installed extra
        pytest.skip(f"compile_ptx needs numba-cuda[cu13] (NVVM): {why}")


def test_generated_ptx_has_no_float64() -> None:
    _need_nvvm()
    from numba import cuda, types

    from picograd.codegen.cuda import compile_ptx

    prog = _render_captured(_training_step_and_rows)
    kinds = {r.name.split("_")[1] for r in prog.kernels}
    assert {"matmul", "reduce", "elementwise"} <= kinds, kinds
    ptx = compile_ptx(prog.source, prog.kernels, prog.dtypes, (9, 0))
    assert set(ptx) == {r.name for r in prog.kernels}
    # libdevice's sinf/cosf carry a float64 slow path for huge arguments (|x| > ~1e5): that much is NVIDIA's.
    # Generated code may add nothing to it (a Python-literal leak shows as cvt.f64.f32 and friends).
    libdevice = {fn: _f64_ops(cuda.compile_ptx(k, (types.CPointer(types.float32),) * 2, cc=(9, 0))[0])
                 for fn, k in (("sin", _sin), ("cos", _cos))}
    for r in prog.kernels:
        text, entry = ptx[r.name]
        assert entry in text
        allowed = set().union(*[ops for fn, ops in libdevice.items() if f"math.{fn}(" in r.source])
        leaked = _f64_ops(text) - allowed
        assert not leaked, f"{r.name}: float64 instructions in a float32 program: {sorted(leaked)}\n{r.source}"
        # every kernel parameter is a pointer: a launch is one driver call with a prepacked block
        params = re.findall(r"\.param\s+\.(\w+)", text.split(".entry", 1)[1].split(")", 1)[0])
        assert params and set(params) == {"u64"}, (r.name, params)


def _matmul_store_stride_axis(source: str) -> str:
    """Which thread axis ("x" or "y") moves the first store of a rendered matmul's epilogue by one element."""
    defs = dict(re.findall(r"^\s*(\w+) = (.+)$", source, re.M))
    flat = re.search(r"^\s*b\d+\[(\w+)\] = ", source, re.M).group(1)
    unit = defs[flat].split(" + ")[-1]  # "<row> * <cols> + <col>" (or with a batch term first)
    while unit not in ("rt", "ct"):  # gj = bj + ct + 16, or min(gj, n - 1)
        expr = defs[unit]
        unit = next(v for v in re.findall(r"\b(?:rt|ct|g[ij]\d+)\b", expr))
    return defs[unit].rsplit(".", 1)[1]


def test_matmul_epilogue_loads_first_and_stores_coalesced() -> None:
    # A fused epilogue's loads (Adam's moments and weights) all come before its first store: numba can't mark
    # buffers noalias, so a load after a store would wait for it. And consecutive lanes of a warp (threadIdx.x)
    # store consecutive elements, also where the result is written transposed (weight gradients). Shapes as a
    # GPU renders them (no GPU needed).
    from picograd import nn, optim
    from picograd.nn import functional as F

    def step() -> None:
        pg.manual_seed(0)
        model = nn.Sequential(nn.Linear(40, 72), nn.ReLU(), nn.Linear(72, 3))
        opt = optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        loss = F.cross_entropy(model(Tensor(rng.random((24, 40), dtype=np.float32))), Tensor(np.arange(24) % 3))
        loss.backward()
        opt.step()
        pg.realize(loss)

    prog = _render_captured(step)
    matmuls = [r for r in prog.kernels if "_matmul_" in r.name and not r.name.endswith(("_red", "_p2", "_sum"))]
    assert len(matmuls) >= 4, [r.name for r in prog.kernels]
    transposed = 0
    for r in matmuls:
        epilogue = r.source.split("cuda.syncthreads()")[-1]
        lines = epilogue.splitlines()
        stores = [i for i, ln in enumerate(lines) if re.match(r"\s*b\d+\[", ln)]
        loads = [i for i, ln in enumerate(lines) if re.search(r"= .*\bb\d+\[", ln)]
        assert stores and (not loads or max(loads) < min(stores)), r.source
        assert _matmul_store_stride_axis(r.source) == "x", r.source
        transposed += "rt = cuda.threadIdx.x" in r.source
    assert transposed >= 2, "expected the weight gradients' kernels to store transposed"


def _seed_layer() -> None:
    """The first layer of the seed model at batch 64, forward and backward: 64 x 784 @ 784 x 800 + bias, ReLU."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.random((64, 784), dtype=np.float32))
    w = Tensor(rng.random((784, 800), dtype=np.float32) - 0.5, requires_grad=True)
    b = Tensor(np.zeros(800, np.float32), requires_grad=True)
    h = (x @ w + b).relu()
    h.sum().backward()
    pg.realize(h, w.grad, b.grad)


def test_split_k_fills_the_gpu_for_small_batch_products() -> None:
    # 64 x 800 outputs are 100 tiles of 16 x 32: fewer blocks than an H100's 132 SMs, each walking 49 k-steps
    # in turn. Split-k runs several blocks per tile over parts of k, and a second kernel adds the partials in
    # a fixed order and runs the fused epilogue (bias, ReLU). The weight gradient (k = 64) is not split.
    from picograd.codegen.cuda_matmul import MIN_STEPS

    prog = _render_captured(_seed_layer)
    names = [r.name for r in prog.kernels]
    (fwd,) = [r for r in prog.kernels if "_matmul_64x784x800" in r.name and not r.name.endswith(("_sum", "_red"))]
    (add,) = [r for r in prog.kernels if r.name == fwd.name + "_sum"]
    assert names.index(add.name) == names.index(fwd.name) + 1
    blocks = fwd.grid[0] * fwd.grid[1] * fwd.grid[2]
    splits = fwd.grid[0] // 25
    assert blocks == 100 * splits and blocks >= 2 * 132, (fwd.grid, fwd.block)
    assert fwd.workspace == add.workspace == {"part": ((splits * 64 * 800,), np.float32)}
    step = int(re.search(r"kb = sk \* (\d+)", fwd.source).group(1))
    assert step >= 16 * MIN_STEPS and (splits - 1) * step < 784 <= splits * step  # every split has k to do
    assert not re.search(r"\bb\d+\[", fwd.source.split("cuda.syncthreads()")[-1])  # stores partials only
    assert f"for s in range(1, {splits}):" in add.source and re.search(r"\bb\d+\[i\] = ", add.source)
    assert not any(r.name.endswith("_sum") for r in prog.kernels if "_matmul_784x64x800" in r.name)
    off = _render_captured(_seed_layer, split_k=False)
    assert not any(r.name.endswith("_sum") for r in off.kernels)
    (one,) = [r for r in off.kernels if "_matmul_64x784x800" in r.name and not r.name.endswith("_red")]
    assert one.grid[0] * one.grid[1] == 100


def test_split_k_ranges_cover_k_once() -> None:
    from picograd.codegen.cuda_matmul import MAX_SPLITS, MIN_STEPS, split_k
    from picograd.codegen.cuda_render import Target

    for tgt in (Target(sim=False, sm_count=132), Target(sim=True), Target(sim=False, sm_count=132, split_k=False)):
        for blocks in (1, 3, 4, 50, 100, 131, 132, 1000):
            for steps in (1, 7, 8, 9, 49, 50, 63, 1000, 4096):
                s, per = split_k(blocks, steps, tgt)
                assert (s - 1) * per < steps <= s * per, (blocks, steps, s, per)  # no split left without work
                fill = 4 if tgt.small else tgt.sm_count
                if s > 1:
                    assert tgt.split_k and blocks < fill and per >= MIN_STEPS and s <= MAX_SPLITS
                else:
                    assert per == steps
                    assert not tgt.split_k or blocks >= fill or steps < 2 * MIN_STEPS, (blocks, steps)


def test_split_k_kernels_compile_to_ptx() -> None:
    _need_nvvm()
    from picograd.codegen.cuda import compile_ptx

    prog = _render_captured(_seed_layer)
    split = [r for r in prog.kernels if "_matmul_64x784x800" in r.name and not r.name.endswith("_red")]
    assert len(split) == 2
    ptx = compile_ptx(prog.source, split, prog.dtypes, (9, 0))
    for r in split:
        assert not _f64_ops(ptx[r.name][0]), r.name


def _shared_bytes(source: str) -> int:
    """Static shared memory a rendered kernel declares."""
    total = 0
    for shape, dt in re.findall(r"cuda\.shared\.array\((\(?[\d, ]+\)?), np\.(\w+)\)", source):
        total += math.prod(int(d) for d in shape.strip("()").split(",") if d.strip()) * np.dtype(dt).itemsize
    return total


@pytest.mark.parametrize("n", [60, 400])
def test_sibling_reductions_fit_in_shared_memory(n: int) -> None:
    # Sums of one shape fuse into one kernel; a tree reduction's shared array per sum at 256 threads was 60 KB
    # for 60 of them, over the 48 KB a kernel may declare (ptxas refuses it). Narrower blocks, or at 400 sums
    # (even 32 threads do not fit) a thread per output.
    rng = np.random.default_rng(0)
    xs = [Tensor(rng.random((4, 1000), dtype=np.float32)) for _ in range(n)]
    prog = _render_captured(lambda: pg.realize(*[(x * 2).sum(axis=1) for x in xs]))
    reduces = [r for r in prog.kernels if "_reduce_" in r.name]
    assert reduces
    for r in reduces:
        assert _shared_bytes(r.source) == r.shared_bytes <= 48 * 1024, (r.name, r.block, _shared_bytes(r.source))
    assert (max(_shared_bytes(r.source) for r in reduces) == 0) == (n == 400)


def test_matmul_grid_stays_within_cuda_limits() -> None:
    # gridDim.y and .z are at most 65535: a batch of 70000 small matrices (or over 65535 row tiles) loops
    # inside the block instead of failing at launch.
    rng = np.random.default_rng(0)
    a = Tensor(rng.random((70000, 2, 3), dtype=np.float32))
    b = Tensor(rng.random((70000, 3, 2), dtype=np.float32))
    prog = _render_captured(lambda: pg.realize((a @ b).relu()))
    (mm,) = [r for r in prog.kernels if "_matmul_" in r.name]
    assert max(mm.grid[1:]) <= 65535 and mm.grid[2] == 65535, mm.grid
    assert "while bz < 70000:" in mm.source and _shared_bytes(mm.source) == mm.shared_bytes
    if _nvvm_missing():  # pragma: no cover - the rendering is checked
        return
    from picograd.codegen.cuda import compile_ptx

    assert mm.name in compile_ptx(prog.source, [mm], prog.dtypes, (9, 0))


def test_empty_batch_matmul_launches_no_empty_grid() -> None:
    # A Linear layer on a batch of 0 rows: the forward matmul is empty but its kernel also reduces the bias
    # gradient (zeros, 4 of them). The matmul was launched with a grid of 0 row tiles, which CUDA refuses
    # (the simulator ran it as nothing); programs now check every launch against CUDA's limits.
    x = Tensor(np.ones((0, 3), np.float32), requires_grad=True)
    w = Tensor(np.ones((3, 4), np.float32), requires_grad=True)
    b = Tensor(np.ones(4, np.float32), requires_grad=True)

    def step() -> None:
        out = (x @ w + b).relu()
        out.sum().backward()
        pg.realize(out, w.grad, b.grad, (x @ w).sum(axis=0), Tensor(np.ones((2, 3), np.float32)) @ w[:, :0])

    prog = _render_captured(step)
    for r in prog.kernels:
        assert min(r.grid) >= 1, (r.name, r.grid)
    assert any(r.name.endswith("_red") for r in prog.kernels)


def test_launch_limits_are_checked() -> None:
    from picograd.codegen.cuda import _check_launch
    from picograd.codegen.cuda_render import Rendered

    _check_launch(Rendered("k", "", [], (2**31 - 1, 65535, 65535), (32, 32, 1)))
    for grid, block in (((1, 0, 1), (32, 1, 1)), ((1, 1, 65536), (32, 1, 1)), ((1, 1, 1), (64, 32, 1))):
        with pytest.raises(RuntimeError, match="outside CUDA's limits"):
            _check_launch(Rendered("k", "", [], grid, block))
    with pytest.raises(RuntimeError, match="49153 bytes of shared memory"):
        _check_launch(Rendered("k", "", [], (1, 1, 1), (32, 1, 1), shared_bytes=48 * 1024 + 1))


def test_simulated_device_memory_starts_as_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    # cuMemAlloc does not clear memory: on the simulator, outputs and workspaces start as NaN / all-ones bits,
    # so a kernel that leaves part of its output unwritten fails there too (zeros would often pass).
    from picograd.codegen import cuda_runtime as rt

    monkeypatch.setattr(rt, "simulated", lambda: True)
    assert np.isnan(rt.empty((2, 3), np.dtype(np.float32)).host).all()
    assert (rt.empty((4,), np.dtype(np.int32)).host == -1).all()
    assert rt.empty((3,), np.dtype(np.bool_)).host.all()
    assert rt.empty((0, 5), np.dtype(np.float32)).host.shape == (0, 5)
    assert np.isnan(rt.Layout([((), np.dtype(np.float32))]).allocate()[0].host)


class _FakeDriver:
    """Device memory as a bytearray, for the runtime's host-side bookkeeping without a GPU."""

    def __init__(self) -> None:
        self.mem, self.top, self.calls = bytearray(1 << 20), 256, []

    def alloc(self, nbytes: int) -> int:
        self.calls.append("alloc")
        ptr, self.top = self.top, self.top + (nbytes + 255) // 256 * 256
        return ptr

    def free(self, ptr: int) -> None:
        pass

    def htod(self, dst: int, src: np.ndarray) -> None:
        self.calls.append("htod")
        self.mem[dst : dst + src.nbytes] = src.tobytes()


def test_small_host_inputs_share_one_allocation_and_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A jit step's host scalars and labels go up in one driver allocation and one copy; big arrays alone.
    from picograd.codegen import cuda_runtime as rt

    fake = _FakeDriver()
    monkeypatch.setattr(rt, "simulated", lambda: False)
    monkeypatch.setattr(rt, "_driver", [fake])
    rng = np.random.default_rng(0)
    arrs = [np.float32(0.5), np.arange(64), rng.random((64, 784), dtype=np.float32), np.array([True, False, True]),
            np.arange(6, dtype=np.float64).reshape(2, 3).T]  # a non-contiguous one, made contiguous
    got = rt.to_device_many(arrs)
    assert fake.calls == ["alloc", "htod", "alloc", "htod"]
    for a, d in zip(arrs, got, strict=True):
        a = np.require(np.asarray(a), requirements="C")
        assert d.shape == a.shape and d.dtype == a.dtype and d.ptr % 256 == 0
        np.testing.assert_array_equal(np.frombuffer(fake.mem, a.dtype, a.size, d.ptr).reshape(a.shape), a)
    assert got[0].owner is got[1].owner is got[3].owner is not got[2].owner


def _sin(a, c) -> None:  # noqa: ANN001
    c[0] = math.sin(a[0])


def _cos(a, c) -> None:  # noqa: ANN001
    c[0] = math.cos(a[0])


def _f64_ops(ptx: str) -> set[str]:
    ops = re.findall(r"^\s*(?:@!?%p\d+\s+)?([a-z]+(?:\.[a-z0-9]+)+)", ptx, re.M)
    return {op for op in ops if "f64" in op.split(".")}


# ---- errors without the extra or a GPU ---------------------------------------------------------------------
def test_kernel_times_bracket_each_launch_with_events(monkeypatch: pytest.MonkeyPatch) -> None:
    # gpu_check's per-kernel GPU times: an event before the first launch and after each, read as the gaps
    # between them. A fake driver whose clock each launch moves by a known amount.
    from picograd.codegen import cuda_runtime as rt

    rng = np.random.default_rng(0)
    x, w = Tensor(rng.random((6, 150), dtype=np.float32)), Tensor(rng.random((150, 5), dtype=np.float32))
    prog = _render_captured(lambda: pg.realize((x @ w).relu().sum(axis=0)))
    cost = {r.name: 1.5 * (i + 1) for i, r in enumerate(prog.kernels)}  # ms each launch takes
    log: list[tuple[str, Any]] = []
    now = [0.0]

    class Cu:
        def cuLaunchKernel(self, fn: str, *rest: Any) -> tuple[int]:
            log.append(("launch", fn))
            now[0] += cost[fn]
            return (0,)

    class Fake(_FakeDriver):
        cu, _ok, stream, params_by_address = Cu(), 0, 0, True

        def __init__(self) -> None:
            super().__init__()
            self.mem, self.stamps, self.made = bytearray(1 << 22), {}, 0

        def event(self) -> int:
            self.made += 1
            return self.made

        def record(self, ev: int) -> None:
            log.append(("record", ev))
            self.stamps[ev] = now[0]

        def elapsed_ms(self, a: int, b: int) -> float:
            return self.stamps[b] - self.stamps[a]

    fake = Fake()
    monkeypatch.setattr(rt, "simulated", lambda: False)
    monkeypatch.setattr(rt, "_driver", [fake])
    prog.launches = [rt.Launch(r.name, r.name, r.grid, r.block, 0, list(range(len(r.params)))) for r in prog.kernels]
    for launch in prog.launches:
        launch.bind(prog.table, fake)
    inputs = [rng.random(s.shape, dtype=np.float32) for s in prog.slots[: prog.n_in]]
    got = prog.kernel_times(inputs, reps=3)
    assert [n for n, _ in got] == [r.name for r in prog.kernels] and any(n.endswith("_sum") for n, _ in got)
    for name, secs in got:
        assert secs == pytest.approx(cost[name] / 1e3), name
    assert len(log) == 3 * (2 * len(prog.kernels) + 1) and fake.made == len(prog.kernels) + 1  # events made once
    assert [k for k, _ in log[: 2 * len(prog.kernels) + 1]] == ["record"] + ["launch", "record"] * len(cost)
    # PICOGRAD_DEBUG=2 / picograd-dump: a profiled run gives the same per-kernel times with the program's outputs
    outs, times = prog.run_profiled(inputs)
    assert len(outs) == len(prog.results) and times == pytest.approx([cost[r.name] / 1e3 for r in prog.kernels])


def test_is_available_is_a_bool() -> None:
    assert pcuda.is_available() in (True, False)


def test_missing_numba_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from picograd.codegen import cuda_runtime as rt

    monkeypatch.setattr(pcuda, "_numba_cuda_present", lambda: False)
    monkeypatch.setattr(rt, "simulated", lambda: False)
    assert pcuda.is_available() is False
    with pytest.raises(pcuda.CudaUnavailable, match=r"numba-cuda.*pip install -e '\.\[cuda\]'"):
        Tensor(np.ones(3, np.float32), device="cuda")
    with pytest.raises(pcuda.CudaUnavailable, match="numba-cuda"):
        Tensor(np.ones(3, np.float32)).to("cuda")


def test_no_driver_library_is_a_clear_error_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # numba-cuda installed on a machine without an NVIDIA driver: the bindings' own loader error on cuInit
    # becomes CudaUnavailable, and later attempts repeat the reason.
    import types

    from picograd.codegen import cuda_runtime as rt

    class LoaderError(Exception):
        pass

    def cu_init(flags: int) -> None:
        raise LoaderError('"cuda" is an NVIDIA driver library and can only be found via system search')

    driver = types.ModuleType("cuda.bindings.driver")
    driver.cuInit = cu_init  # type: ignore[attr-defined]
    bindings = types.ModuleType("cuda.bindings")
    bindings.driver = driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
    monkeypatch.setattr(rt, "_driver", [])
    monkeypatch.setattr(rt, "_why_not", [])
    monkeypatch.setattr(rt, "simulated", lambda: False)
    monkeypatch.setattr(pcuda, "_numba_cuda_present", lambda: True)
    assert pcuda.is_available() is False
    for _ in range(2):
        with pytest.raises(pcuda.CudaUnavailable, match="driver library could not be loaded.*system search"):
            Tensor(np.ones(3, np.float32), device="cuda")


def test_unknown_device_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Tensor(np.ones(3, np.float32), device="tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Tensor(np.ones(3, np.float32)).to("tpu")


def test_device_names_as_torch_spells_them() -> None:
    # "cuda:0" is "cuda" (checked on the simulator: cuda_sim_worker's devices case); another GPU index, or a
    # device that is not a name, is a clear error when the tensor is made; a torch.device is read by its type.
    from picograd import nn

    with pytest.raises(ValueError, match="'cuda:1': picograd drives one GPU"):
        Tensor(np.ones(3, np.float32), device="cuda:1")
    with pytest.raises(ValueError, match="'cuda:2': picograd drives one GPU"):
        nn.Linear(2, 3).to("cuda:2")
    with pytest.raises(TypeError, match="device must be a string such as 'cpu' or 'cuda', got int 0"):
        Tensor(np.ones(3, np.float32), device=0)
    torch = pytest.importorskip("torch")
    t = Tensor(np.ones(3, np.float32), device=torch.device("cpu"))
    assert t.device == "cpu" and t.to(torch.device("cpu")) is t


def test_debug_tools_get_per_kernel_gpu_times(tmp_path: Any) -> None:
    # Capture(profile=True) (PICOGRAD_DEBUG=2, picograd-dump) gets each CUDA kernel's time as it does a CPU
    # kernel's; run here against the driver that does nothing (benchmarks/null_python.py; its events read 0 s).
    import subprocess

    script = """
import numpy as np, picograd as pg
from picograd import Tensor
from picograd.debug import Capture
with Capture() as cap:
    for _ in range(2):
        x = Tensor(np.ones((6, 150), np.float32), device="cuda")
        pg.realize((x @ Tensor(np.ones((150, 5), np.float32), device="cuda")).relu().sum(axis=0))
(rec,) = cap.programs
assert len(rec.kernels) >= 3 and len(rec.kernel_s) == 2, (rec.kernels, rec.kernel_s)
assert all(len(row) == len(rec.kernels) for row in rec.kernel_s), rec.kernel_s
print("ok", len(rec.kernels))
"""
    env = dict(os.environ, PICOGRAD_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    null_python = os.path.join(os.path.dirname(HERE), "benchmarks", "null_python.py")
    r = subprocess.run([sys.executable, null_python, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]
