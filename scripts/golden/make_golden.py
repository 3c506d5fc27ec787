"""Golden values for dtrain's numerical tests, computed once with PyTorch (CPU, float32) and committed as
test/fixtures/golden.json. Regenerate with:

    py=$(../shared/reference/setup-torch.sh); $py scripts/golden/make_golden.py > test/fixtures/golden.json

For each activation: a tiny MLP (6 -> 5 -> 4 -> 3) with fixed parameters, a fixed batch of 7 rows, the
batch-mean cross-entropy loss, every parameter's gradient, and the parameters after each of 3 Adam steps
(torch.optim.Adam, lr 0.01, default betas and eps) on that batch. Parameters are listed in dtrain's flat
layout: for each layer W ([out, in], row-major) then b.
"""
import json

import numpy as np
import torch
from torch import nn

SIZES = [6, 5, 4, 3]
ROWS = 7
ACTS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def flat(tensors):
    return [float(v) for t in tensors for v in t.detach().reshape(-1).tolist()]


def case(activation, rng):
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(nn.Linear(SIZES[i], SIZES[i + 1]))
        if i + 2 < len(SIZES):
            layers.append(ACTS[activation]())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.8, 0.8, size=tuple(p.shape)).astype(np.float32)))
    x = torch.from_numpy(rng.uniform(0, 1, size=(ROWS, SIZES[0])).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, SIZES[-1], size=ROWS).astype(np.int64))
    params0 = flat(model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    loss0, grads0, after = None, None, []
    for step in range(3):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if step == 0:
            loss0 = loss.item()
            grads0 = flat(p.grad for p in model.parameters())
        opt.step()
        after.append(flat(model.parameters()))
    return {
        "activation": activation,
        "sizes": SIZES,
        "x": [float(v) for v in x.reshape(-1).tolist()],
        "labels": [int(v) for v in y.tolist()],
        "params": params0,
        "loss": loss0,
        "grad": grads0,
        "adamLr": 0.01,
        "paramsAfterAdamSteps": after,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    rng = np.random.default_rng(20261127)
    cases = [case(a, rng) for a in ("sigmoid", "relu", "tanh")]
    print(json.dumps({"torch": torch.__version__, "cases": cases}, indent=1))
