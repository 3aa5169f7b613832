"""Training some tasks of a model and holding every other weight exactly as it is.

A task added to a trained model (`alter.models.task_surgery`) trains its own weights alone:
its expert's slice of every stacked expert weight, its gate row, its head. A stacked weight
is one tensor for every task, so the optimizer steps all of it; `HeldWeights` puts the other
tasks' slices back after every step (a copy, so they stay equal to the bit, whatever Adam's
momentum or weight decay did), and weights that no changing task owns (a shared expert's
slice, an input router, a shared LoRA, other tasks' heads) do not train at all.
"""

from __future__ import annotations

import torch
from torch import nn

from alter.models.contract import TrainableModel


class HeldWeights:
    def __init__(self, model: TrainableModel, trainable: dict[str, nn.Parameter]):
        rows: dict[str, set[int] | None] = {}  # parameter name -> the changing tasks' rows (None: all)
        for task in model.changing_tasks:
            for name, row in model.task_parameters(model.task_id(task)).items():
                if row is None or rows.get(name, set()) is None:
                    rows[name] = None
                else:
                    rows.setdefault(name, set()).add(row)
        self.trainable: dict[str, nn.Parameter] = {}
        self._held: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []  # (param, held rows, their values)
        for name, param in trainable.items():
            owned = rows.get(name, set())
            if owned is not None and not owned:  # nobody that trains owns any of it
                param.requires_grad_(False)
                continue
            self.trainable[name] = param
            if owned is not None:
                held = torch.tensor([i for i in range(param.shape[0]) if i not in owned], device=param.device)
                self._held.append((param, held, param.detach()[held].clone()))

    def trained_numel(self) -> int:
        """How many numbers training changes: the trainable tensors less their held rows."""
        held = sum(values.numel() for _, _, values in self._held)
        return sum(param.numel() for param in self.trainable.values()) - held

    @classmethod
    def of(cls, model: TrainableModel, trainable: dict[str, nn.Parameter]) -> HeldWeights | None:
        """None when every task trains."""
        return cls(model, trainable) if model.changing_tasks else None

    @torch.no_grad()
    def restore(self) -> None:
        """Put the held rows back as they were (call after every optimizer step)."""
        for param, held, values in self._held:
            param.index_copy_(0, held, values)
