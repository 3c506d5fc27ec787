"""PyTorch's step time for scripts/gpu-check.sh: the MLP dtrain trains, on CUDA, for comparison.

The same model (Linear layers, an activation after each hidden one, softmax cross-entropy), optimizer
(Adam, lr 0.001) and batch as dtrain's run; the data (random pixels and labels, as in the check's dtrain
runs) is preloaded on the device, so a step is forward, backward and Adam only. Each step is timed between
two torch.cuda.synchronize() calls (dtrain reads each step's loss back, so its steps end synchronised too).
Prints one JSON line: median and mean ms per step after the warm-up, or {"error": why}.

usage: python3 gpu_torch_bench.py --sizes 784,512,256,128,64,10 --batch 64 --steps 300
"""
import argparse
import json
import statistics
import time


def model_of(torch, sizes, activation):
    act = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[activation]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(act())
    return torch.nn.Sequential(*layers)


def step_times(torch, args):
    device = torch.device("cuda")
    sizes = [int(s) for s in args.sizes.split(",")]
    model = model_of(torch, sizes, args.activation).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator(device=device).manual_seed(0)
    samples = max(args.samples, args.batch)
    x = torch.rand(samples, sizes[0], device=device, generator=generator)
    y = torch.randint(0, sizes[-1], (samples,), device=device, generator=generator)
    batches = samples // args.batch
    times = []
    for step in range(args.warmup + args.steps):
        i = step % batches
        xb, yb = x[i * args.batch:(i + 1) * args.batch], y[i * args.batch:(i + 1) * args.batch]
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(xb), yb).backward()
        optimizer.step()
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(1000 * (time.perf_counter() - start))
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", required=True, help="layer widths, input first, comma-separated")
    parser.add_argument("--activation", default="sigmoid")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samples", type=int, default=60000)
    args = parser.parse_args()
    try:
        import torch
    except ImportError as e:
        print(json.dumps({"error": f"no PyTorch ({e})"}))
        return
    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch.cuda.is_available() is False"}))
        return
    times = step_times(torch, args)
    print(json.dumps({
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "steps": len(times),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
    }))


if __name__ == "__main__":
    main()
