"""Int8 weights for generation, float32 for scoring and training.

A decoding step reads every backbone weight to write one token per row: 540 MB in float32
for SmolLM2-135M, a quarter of that in int8, and on a CPU that reading is the step's cost.
`quantize_linears` turns the pretrained linear layers (those inside LoRA experts' and PEFT's
wrappers included; experts, adapters and task heads stay as they are) into
`Int8InferenceLinear`: the same module object, with the same float32 parameters and
state-dict keys, which computes from an int8 copy of its weight (PyTorch's fbgemm / x86
dynamic-quantization kernel, `quantized::linear_dynamic`: int8 weights per output channel,
each token's activations quantized to 8 bits by a scale of its own, 7 on CPUs without VNNI)
when it generates (decoding steps, one new token per row, and a generation's prompt pass,
inside `int8_prompts`) in eval mode without gradients, and in float32 otherwise.

Why not scoring: the channels that carry very large activations leave the others a handful
of int8 levels, and label probabilities move. With every pass in int8 and one activation
scale per call (the kernel's own), SmolLM2's sst2 accuracy fell from 87 to 66 on 100 dev
sentences; with one scale per token (below) the probabilities still moved by 0.04 on average
(0.24 at most). Scoring is one compute-bound pass, so it stays exactly float32; generation
reads only the next token from each pass. docs/serving.md ("The fast decode path") has the
figures, and `bench/decode.py` times it beside llama.cpp and scores it.

Training is unchanged (it computes in float32), and an evaluation in the middle of training
reads the weights as they are then: the int8 copy is made again whenever a weight changes
(its version counter).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from alter.config import Quantize

log = logging.getLogger(__name__)


def has_int8_kernels() -> bool:
    """Whether this PyTorch build has a quantized CPU engine whose dynamic int8 linear kernel
    `Int8InferenceLinear` calls."""
    return bool({"fbgemm", "x86", "qnnpack"} & set(torch.backends.quantized.supported_engines))


def _seven_bit_activations() -> bool:
    """Whether activations must keep 7 bits: on x86 CPUs without VNNI, fbgemm multiplies
    8-bit activations by int8 weights in int16 pairs, which can overflow (torch.ao's own
    dynamic Linear always keeps 7 bits for that reason); with VNNI it accumulates in int32."""
    if torch.backends.quantized.engine not in ("fbgemm", "x86"):
        return False
    try:
        return "vnni" not in Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the safe choice
        return True


SEVEN_BIT_ACTIVATIONS = _seven_bit_activations()

# Set while a generation reads its prompts (`int8_prompts`): their passes use int8 as well.
_generating: ContextVar[bool] = ContextVar("alter_int8_prompts", default=False)


@contextlib.contextmanager
def int8_prompts() -> Iterator[None]:
    """Inside, a generation's prompt passes use the int8 copies too (scoring passes, outside,
    stay float32): nothing is read from their logits but the next token."""
    token = _generating.set(True)
    try:
        yield
    finally:
        _generating.reset(token)


def scaled_int8_linear(rows: torch.Tensor, packed: torch.classes.quantized.LinearPackedParamsBase,
                       bounds: torch.Tensor, bias: torch.Tensor | None, seven_bit: bool) -> torch.Tensor:
    """rows (N, in) -> (N, out) through fbgemm's dynamic int8 kernel, each row quantized by a
    scale of its own.

    The kernel quantizes its input with one scale for all its rows, so that a row's result
    would depend on the other rows of its batch (the server's two schedulers would write
    different tokens for it). Each row is therefore scaled to [-1, 1] by its own largest
    magnitude first, with one more row (`bounds`, (1, in)) that holds exactly -1 and 1, so that
    the kernel's range is [-1, 1] whatever the batch: every row is quantized by its own scale,
    and its result is the same in any batch (integer products; one scale per element)."""
    magnitude = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)  # (N, 1); vector_norm(inf) is slower
    unit = torch.cat([rows / magnitude, bounds])  # (N + 1, in), range exactly [-1, 1]
    out = torch.ops.quantized.linear_dynamic(unit, packed, seven_bit)[:-1].mul_(magnitude)  # (N, out)
    if bias is not None:
        out.add_(bias)
    return out


def _scripted(function):
    """`function` compiled by TorchScript, or as it is where TorchScript cannot (no source
    files, or a PyTorch without it): the same operations and results either way. Run from
    Python, the dozen small operations around the kernel cost three times the kernel itself
    at one row (97 against 23 us a call here; 33 us scripted), and a decoding step makes 211
    such calls. torch.compile cannot take the kernel's packed weight (docs/serving.md);
    PyTorch 2.13 marks TorchScript deprecated, hence the fallback."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            return torch.jit.script(function)
    except Exception as error:  # noqa: BLE001 - any failure to compile leaves the eager function
        log.debug("int8 linear layers run eagerly: TorchScript could not compile them (%s)", error)
        return function


_compiled_scaled_int8_linear = _scripted(scaled_int8_linear)


class Int8InferenceLinear(nn.Linear):
    """nn.Linear that generates with int8 weights (eval mode, no gradients) and computes in
    float32 otherwise."""

    _packed: torch.ScriptObject | None = None  # fbgemm's packed int8 weight (no bias)
    _packed_version: int | None = None
    _bounds: torch.Tensor | None = None  # (1, in): one row holding exactly 1 and -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, in) -> (B, T, out); int8 at inference when generating."""
        generating = (x.dim() == 3 and x.shape[1] == 1) or _generating.get()
        if not generating or self.training or torch.is_grad_enabled() or x.dtype != torch.float32 \
                or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        return self._int8_linear(x)

    def _int8_linear(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._int8_weight()  # (re)made first: it sets the bounds row too
        out = _compiled_scaled_int8_linear(x.reshape(-1, x.shape[-1]), packed, self._bounds, self.bias,
                                           SEVEN_BIT_ACTIVATIONS)  # (N, out)
        return out.view(*x.shape[:-1], self.out_features)

    def _int8_weight(self) -> torch.ScriptObject:
        if self._packed is None or self._packed_version != self.weight._version:
            weight = self.weight.detach().float()
            # Symmetric scales, one per output channel.
            scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-8).double()
            with warnings.catch_warnings():
                # PyTorch marks its quantized tensor types deprecated (to move to torchao, whose
                # int8 CPU path was 1.5x slower than float32 here, eager): docs/serving.md.
                warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
                qweight = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long),
                                                     axis=0, dtype=torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, None)
            self._packed_version = self.weight._version
            self._bounds = weight.new_zeros(1, self.in_features)
            self._bounds[0, 0], self._bounds[0, -1] = 1.0, -1.0
        return self._packed


def quantize_setting(root: nn.Module) -> Quantize:
    """How the linear layers under `root` generate now: "int8" if any does so in int8."""
    return "int8" if any(isinstance(module, Int8InferenceLinear) for module in root.modules()) else "none"


def quantize_linears(root: nn.Module, frozen: set[int], how: Quantize) -> int:
    """Let every nn.Linear under `root` whose weight is one of `frozen` (parameter ids: the
    pretrained weights, not experts, adapters or heads) compute in int8 at inference
    (`how="int8"`), or in float32 again (`"none"`). Returns how many layers changed.

    Each layer changes class in place rather than being replaced: it stays the same object,
    so the hooks that MTA layers put on it (a bottleneck expert's on BERT's `output.dense`,
    on BART's `fc1` and `fc2`) and every reference to it keep working."""
    if how not in get_args(Quantize):
        raise ValueError(f"quantize: '{how}' is not one of {', '.join(get_args(Quantize))}")
    if how == "int8" and not has_int8_kernels():
        log.warning("inference.quantize=int8: this PyTorch build has no quantized CPU kernels (fbgemm, x86 or "
                    "qnnpack); generating in float32")
        how = "none"
    old, new = (nn.Linear, Int8InferenceLinear) if how == "int8" else (Int8InferenceLinear, nn.Linear)
    chosen = [module for module in root.modules() if type(module) is old and id(module.weight) in frozen]
    for module in chosen:
        module.__class__ = new
        module.__dict__.pop("_packed", None)  # a later int8 copy starts afresh
        module.__dict__.pop("_packed_version", None)
        module.__dict__.pop("_bounds", None)
    return len(chosen)
