"""Build the MNIST MLP's training step (784-128-10, SGD, cross-entropy) and look at what picograd compiles.

    python examples/inspect_mlp.py                      # print the step's IR (forward, backward, update)
    PICOGRAD_DEBUG=2 python examples/inspect_mlp.py     # plus one line per realize and per kernel
    picograd-dump -o mlp-dump examples/inspect_mlp.py   # IR, DOT/SVG, kernel sources, timings, index.html

Reads real MNIST from $PICOGRAD_DATA/mnist when it is there, else uses random digits of the same shape: the
program (and so everything shown) depends only on shapes, not on the data."""

from __future__ import annotations

import argparse
import sys

import numpy as np

import picograd as pg
from picograd import nn, optim


def batches(batch: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        from picograd.datasets import MNIST

        ds = MNIST(train=True, download=False)
        images = ((ds.images[: batch * steps].reshape(-1, 784) / 255.0 - ds.mean) / ds.std).astype(np.float32)
        labels = ds.labels[: batch * steps]
    except (FileNotFoundError, OSError, ImportError):
        rng = np.random.default_rng(0)
        images = rng.standard_normal((batch * steps, 784), dtype=np.float32)
        labels = rng.integers(0, 10, batch * steps)
    return [(images[i * batch:(i + 1) * batch], labels[i * batch:(i + 1) * batch]) for i in range(steps)]


def build(hidden: int = 128, lr: float = 0.1):
    pg.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = optim.SGD(model.parameters(), lr=lr)
    return model, opt, nn.CrossEntropyLoss()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="training steps to run (the first compiles, the rest hit)")
    p.add_argument("--quiet", action="store_true", help="do not print the IR")
    args = p.parse_args(argv)
    model, opt, loss_fn = build(args.hidden)
    for step, (x, y) in enumerate(batches(args.batch, args.steps)):
        opt.zero_grad()
        loss = loss_fn(model(pg.Tensor(x)), pg.Tensor(y))
        loss.backward()
        opt.step()
        if step == 0 and not args.quiet:
            # Before realizing: the dump holds the loss plus everything pending (gradients, SGD assigns), i.e.
            # exactly the one program that loss.item() is about to compile and run.
            print(pg.dump(loss))
        print(f"step {step}: loss {loss.item():.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
