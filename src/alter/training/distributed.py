"""Training on several processes with PyTorch's DDP or FSDP.

`alter train` reads the variables that `torchrun` and `accelerate launch` set (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without them it is one process and
nothing here does anything. Every rank builds the same batch plan from the seed and takes
its own rows of each global batch (`rank::world_size`), so the data is split without
overlap and the global batch is the config's whatever the number of processes.

DDP (the default) keeps a whole model on every rank. FSDP (`distributed.strategy: fsdp`)
shards the frozen backbone's transformer blocks over the ranks, for a backbone that does not
fit one device; the trainable parameters (experts, gates, adapters, heads) are small and
stay whole on every rank, their gradients averaged by `finish_gradients`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from alter.config import DistributedConfig
from alter.evaluate.ranks import SINGLE, Ranks
from alter.models.contract import TrainableModel

log = logging.getLogger(__name__)




def start(config: DistributedConfig, device: torch.device) -> Ranks:
    """Join the process group that the launcher describes (or stay one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    if not dist.is_initialized():
        backend = config.backend if config.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        # Evaluation runs on every rank between training steps: allow it time.
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.timeout_s))
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str) -> torch.device:
    """`auto`: this process's GPU when there is one (LOCAL_RANK picks it), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for, but PyTorch sees no GPU here")
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


def place(model: TrainableModel, device: torch.device, ranks: Ranks, strategy: str) -> TrainableModel:
    """The model on its device; under FSDP with several ranks, its backbone's blocks sharded
    first, so that a rank never holds more than its share of them on the device."""
    if strategy == "fsdp" and ranks.distributed:
        _shard_backbone(model, device, ranks)
    return model.to(device)


def _shard_backbone(model: TrainableModel, device: torch.device, ranks: Ranks) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not model.capabilities.fsdp:
        raise ValueError(f"distributed.strategy fsdp shards a transformer backbone; {type(model).__name__} has none")
    backbone = model.backbone
    # The blocks that transformers itself never splits across devices (LlamaDecoderLayer,
    # T5Block, BertLayer, ...): each one is gathered whole just before it runs.
    kinds = set(getattr(backbone, "_no_split_modules", None) or [])
    blocks = [module for module in backbone.modules() if type(module).__name__ in kinds]
    if not blocks:
        raise ValueError(f"distributed.strategy fsdp: backbone {model.config.backbone} names no transformer "
                         "blocks (_no_split_modules) to shard; use strategy ddp")
    trainable = {id(param) for name, group in model.param_groups().items() if name != "backbone"
                 for param in group.values()}
    mesh = init_device_mesh(device.type, (ranks.world_size,))
    for block in reversed(blocks):  # inner blocks before the blocks around them
        kept_whole = {param for param in block.parameters() if id(param) in trainable}
        fully_shard(block, mesh=mesh, ignored_params=kept_whole)
    # transformers' generate reads this flag: every rank keeps stepping until all have
    # finished, since each step gathers weights from all of them.
    backbone._is_fsdp_managed_module = True
    if ranks.is_main:
        from torch.distributed.tensor import DTensor

        sharded = [param for param in backbone.parameters() if isinstance(param, DTensor)]
        held = sum(param.to_local().numel() for param in sharded)
        log.info("fsdp: %d blocks sharded over %d ranks; this rank holds %s of their %s weights",
                 len(blocks), ranks.world_size, f"{held:,}", f"{sum(param.numel() for param in sharded):,}")


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The module that a training step calls: the model itself on one process or when FSDP
    shards it, else the model under DDP, which averages the gradients of the trainable
    parameters over ranks.

    Built again for each stage: DDP registers its hooks on the parameters that require a
    gradient when it is built, and each stage trains different ones.
    """
    if not ranks.distributed or is_sharded(model):
        return model
    from torch.nn.parallel import DistributedDataParallel

    # An expert, a head or an adapter of a task missing from this rank's rows gets no
    # gradient in that step: DDP must look for such parameters.
    return DistributedDataParallel(model, find_unused_parameters=True)


def finish_gradients(engine: nn.Module, params: Sequence[nn.Parameter], ranks: Ranks) -> None:
    """After the backward passes of a step: average the trainable parameters' gradients over
    ranks where DDP has not done it already (under FSDP, which leaves them whole on every
    rank). One all-reduce of all of them, flattened; a parameter that no rank gave a gradient
    keeps none, as on one process (so AdamW leaves it alone)."""
    from torch.nn.parallel import DistributedDataParallel

    if not ranks.distributed or isinstance(engine, DistributedDataParallel) or not params:
        return
    reference = params[0]
    grads = [param.grad if param.grad is not None else torch.zeros_like(param) for param in params]
    present = torch.tensor([param.grad is not None for param in params], dtype=reference.dtype,
                           device=reference.device)  # (P,)
    flat = torch.cat([present, *(grad.reshape(-1) for grad in grads)])  # (P + sum of sizes,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = len(params)
    for param, seen in zip(params, flat[:len(params)].tolist()):
        size = param.numel()
        param.grad = flat[offset: offset + size].view_as(param) / ranks.world_size if seen else None
        offset += size


@contextlib.contextmanager
def no_sync(engine: nn.Module, accumulating: bool) -> Iterator[None]:
    """Skip the gradient exchange on micro-batches before the last of an accumulated step."""
    if accumulating and hasattr(engine, "no_sync"):
        with engine.no_sync():
            yield
    else:
        yield
