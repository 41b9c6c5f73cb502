"""Muon for conv filters, SGD with Nesterov momentum for everything else, in one optimizer.

Muon (Keller Jordan, 2024) replaces each filter's momentum update by its nearest
semi-orthogonal matrix, computed with a few Newton-Schulz iterations; airbench94_muon
uses it for the conv filters of a CIFAR-10 net. Written here rather than taken from
``torch.optim.Muon`` because that class accepts 2-D parameters only (conv filters are
4-D), runs its iteration in bf16 (4x slower than fp32 on CPUs without native bf16, see
BENCHMARKS.md), and has no weight normalisation, which the airbench recipe relies on.

One optimizer rather than two keeps checkpoints, resume and ``LambdaLR`` schedules
working unchanged: each param group says whether it is a Muon group (``"muon": True``).
"""

from __future__ import annotations

import torch

# Quintic Newton-Schulz coefficients tuned for a steep slope at zero (Jordan, 2024).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately ``U V^T`` of ``matrix = U S V^T`` (2-D), by ``steps`` Newton-Schulz iterations.

    Runs in bf16 on CUDA (tensor cores) and in float32 elsewhere.
    """
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon on groups marked ``muon=True``; SGD with (Nesterov) momentum and L2 decay on the rest.

    Muon groups: before each update a filter is rescaled to Frobenius norm
    ``sqrt(out_channels)`` (the update is then a fixed fraction of the weight), and its
    Nesterov momentum, flattened to ``(out_channels, fan_in)``, is orthogonalised.
    Options per group: ``lr``, ``momentum``, ``nesterov``, ``weight_decay`` (SGD groups),
    ``ns_steps`` (Muon groups).
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = True, ns_steps: int = 3):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": 0.0,
            "ns_steps": ns_steps,
            "muon": False,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon groups take matrices and conv filters only (ndim >= 2)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["muon"] and group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(grad)
                update = grad.add(buf, alpha=momentum) if nesterov else buf
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
                    flat = update.reshape(len(update), -1)
                    update = orthogonalize(flat, group["ns_steps"]).view_as(p)
                p.add_(update, alpha=-lr)
        return loss
