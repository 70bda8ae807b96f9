"""Shared by the QAT tests: the training loop they all run, and a small regression task whose loss a
trainable quantized model must lower."""

import torch
from torch import nn


def train_losses(model: nn.Module, batches: list, loss_fn, steps: int, optimizer: torch.optim.Optimizer) -> list:
    """``steps`` optimizer steps over ``(x, y)`` batches in turn (train mode); the loss of each step."""
    model.train()
    losses = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def regression_losses(model: nn.Module, steps: int = 30) -> list:
    """Adam on one fixed 64 -> 64 regression batch (the value is the model's own quantized forward, so a
    kernel or gradient that is wrong shows up as a loss that stalls)."""
    batch = (torch.randn(64, 64), torch.randn(64, 64) * 0.1)
    return train_losses(model, [batch], nn.functional.mse_loss, steps, torch.optim.Adam(model.parameters(), lr=3e-3))
