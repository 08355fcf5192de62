"""Split step vs unsplit step, training throughput, and an idiomatic PyTorch split loop.

For each model: the same batch, parameters and Adam optimizer; the unsplit step is
``jax.grad`` of the whole model, the split step is the six-step protocol (vjp at the cut,
identity wire). Both run as ``lax.scan`` epochs so dispatch is amortised; repetitions are
interleaved and the median is reported. On CPU the He 2019 LeNet also runs with
``reduce_window`` max-pooling to show why the zoo pools by reshape + max, and against a
PyTorch split loop (client forward, detach at the cut, server backward, client backward).
On a GPU, the LeNet runs at batch 64 and 1024 beside the same PyTorch split loop on CUDA, and
ResNet-18 runs in float32 and bfloat16.

    python bench/split_overhead.py [--quick]

Writes bench/results/split_overhead-<backend>.json with machine info.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import machine_info  # noqa: E402
from split_workbench.models import make_model  # noqa: E402
from split_workbench.models import base as mbase  # noqa: E402
from split_workbench.protocol import SplitTrainer, cross_entropy  # noqa: E402
from split_workbench.split import split  # noqa: E402


def reduce_window_pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _timed(fn, *args, reps):
    out = fn(*args)
    jax.block_until_ready(out)  # compile + warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return times


def compare(name, cut, *, batch, steps, reps, input_shape, dtype=jnp.float32, pool=None):
    model = make_model(name, key=jax.random.key(0), input_shape=input_shape)
    if pool is not None:
        for i, n in enumerate(model.names):
            if n.startswith("pool"):
                model.layers[i] = pool
    sm = split(model, cut)
    opt = optax.adam(1e-3)
    trainer = SplitTrainer(sm, opt, opt)
    kx, ky = jax.random.split(jax.random.key(1))
    xs = jax.random.uniform(kx, (steps, batch, *input_shape), dtype)
    ys = jax.random.randint(ky, (steps, batch), 0, 10)
    cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)  # noqa: E731
    params = cast(sm.params)

    # The data are arguments, not closed-over constants: XLA would fold a closed-over
    # array into the program and spend minutes compiling it.
    @jax.jit
    def split_epoch(state, xs, ys):
        def body(s, xy):
            s, m, _ = trainer.step(s, xy[0], xy[1], key=jax.random.key(0))
            return s, m.loss
        return jax.lax.scan(body, state, (xs, ys))

    @jax.jit
    def unsplit_epoch(carry, xs, ys):
        def body(c, xy):
            p, o = c
            g = jax.grad(lambda p: cross_entropy(sm.apply(p, xy[0]).astype(jnp.float32), xy[1]))(p)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), None
        return jax.lax.scan(body, carry, (xs, ys))

    state = trainer.init(params)
    carry = (params, opt.init(params))
    split_t, unsplit_t = [], []
    for _ in range(reps):  # interleaved so drifts in machine load hit both alike
        split_t += _timed(split_epoch, state, xs, ys, reps=1)
        unsplit_t += _timed(unsplit_epoch, carry, xs, ys, reps=1)
    s, u = statistics.median(split_t), statistics.median(unsplit_t)
    return {"model": name, "cut": cut, "batch": batch, "steps": steps, "dtype": jnp.dtype(dtype).name,
            "pool": "reshape-max" if pool is None else "reduce_window",
            "split_step_ms": 1e3 * s / steps, "unsplit_step_ms": 1e3 * u / steps,
            "split_over_unsplit": s / u, "split_images_per_s": steps * batch / s,
            "unsplit_images_per_s": steps * batch / u}


def torch_lenet(*, batch, steps, reps, threads, device="cpu"):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    client = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5), nn.ReLU()).to(device)
    server = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84),
                           nn.ReLU(), nn.Linear(84, 10)).to(device)
    opt_c, opt_s = torch.optim.Adam(client.parameters(), 1e-3), torch.optim.Adam(server.parameters(), 1e-3)
    xs = torch.rand(steps, batch, 1, 28, 28, device=device)
    ys = torch.randint(0, 10, (steps, batch), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    loss_fn = nn.CrossEntropyLoss()

    def epoch():
        for i in range(steps):
            z = client(xs[i])
            z_recv = z.detach().requires_grad_()
            loss = loss_fn(server(z_recv), ys[i])
            opt_s.zero_grad()
            loss.backward()
            opt_c.zero_grad()
            z.backward(z_recv.grad)
            opt_c.step()
            opt_s.step()

    epoch()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        epoch()
        sync()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"framework": f"torch {torch.__version__}", "device": device, "threads": threads, "batch": batch,
            "steps": steps,
            "step_ms": 1e3 * t / steps, "images_per_s": steps * batch / t}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=None, help="LeNet steps per timed epoch")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (median reported)")
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    backend = jax.default_backend()
    results = {"machine": machine_info(), "jax_vs_jax": [], "torch": []}
    if backend == "cpu":
        steps = args.steps or (50 if args.quick else 200)
        cases = [("he2019-lenet", "relu2", 64, (28, 28, 1), None),
                 ("he2019-lenet", "relu2", 64, (28, 28, 1), reduce_window_pool),
                 ("he2019-lenet", "conv1", 64, (28, 28, 1), None),
                 ("he2019-cifar", "relu22", 32, (32, 32, 3), None)]
        for name, cut, batch, shape, pool in cases:
            st = steps if name == "he2019-lenet" else max(steps // 10, 10)
            r = compare(name, cut, batch=batch, steps=st, reps=reps, input_shape=shape, pool=pool)
            results["jax_vs_jax"].append(r)
            print(json.dumps(r))
        try:
            import torch  # noqa: F401
            r = torch_lenet(batch=64, steps=steps, reps=reps, threads=len(os.sched_getaffinity(0)))
            results["torch"].append(r)
            print(json.dumps(r))
            jr = next(x for x in results["jax_vs_jax"] if x["cut"] == "relu2" and x["pool"] == "reshape-max")
            results["jax_over_torch_images_per_s"] = jr["split_images_per_s"] / r["images_per_s"]
        except ImportError:
            print("torch not installed: skipping the PyTorch comparison (pip install torch==2.13.0)")
    else:
        steps = args.steps or (50 if args.quick else 200)
        for batch in (64, 1024):
            r = compare("he2019-lenet", "relu2", batch=batch, steps=steps, reps=reps, input_shape=(28, 28, 1))
            results["jax_vs_jax"].append(r)
            print(json.dumps(r))
            try:
                import torch  # noqa: F401
                t = torch_lenet(batch=batch, steps=steps, reps=reps, threads=4, device="cuda")
                t["jax_over_torch_images_per_s"] = r["split_images_per_s"] / t["images_per_s"]
                results["torch"].append(t)
                print(json.dumps(t))
            except ImportError:
                print("torch not installed: skipping the PyTorch comparison")
        steps = 20 if args.quick else 50
        for dtype in (jnp.float32, jnp.bfloat16):
            for cut in ("layer1.1", "layer2.1"):
                r = compare("resnet18", cut, batch=512, steps=steps, reps=reps, input_shape=(32, 32, 3), dtype=dtype)
                results["jax_vs_jax"].append(r)
                print(json.dumps(r))
    out = Path(args.out or Path(__file__).parent / "results" / f"split_overhead-{backend}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
