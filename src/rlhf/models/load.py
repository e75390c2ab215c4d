"""Loading and saving causal language models and their tokenizers.

Any causal LM that ``transformers`` knows loads by hub name or local folder, optionally from a
GGUF file (dequantised by transformers; needs the optional ``gguf`` package), optionally
wrapped with LoRA adapters through peft. Everything is saved in Hugging Face format
(safetensors) so that plain ``AutoModelForCausalLM.from_pretrained`` and vLLM read it.

RL needs dropout off in the policy, reference, reward and value models: with dropout on, the
log-probs of the same tokens differ between the rollout and the update and the importance
ratios are noise (Ziegler et al. 2019; Huang et al. 2024, "The N+ Implementation Details of
RLHF with PPO"). :func:`load_model` therefore disables it by default.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rlhf.models.finite import check_finite_weights

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger("rlhf.models")

PAD_TOKEN = "<|pad|>"
DTYPES: dict[str, torch.dtype | Literal["auto"]] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}
# A hub repository id: "name" or "owner/name" (huggingface_hub's rule, without length limits).
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_GGUF_HINT = "loading GGUF files needs the optional 'gguf' package: pip install 'rlhf[gguf]'"


class ModelLoadError(ValueError):
    """A model or tokenizer that could not be loaded; names what was tried and why."""

    def __init__(self, name_or_path: str, message: str) -> None:
        super().__init__(f"{name_or_path}: {message}")
        self.name_or_path = name_or_path
        self.message = message


@dataclass
class LoraSpec:
    """LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models")."""

    r: int = 8  # rank of the update B @ A
    alpha: float = 16  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapter's input
    # module names to adapt (e.g. ["q_proj", "v_proj"]), or every linear layer but the output
    target_modules: list[str] | Literal["all-linear"] = field(default="all-linear")

    def to_peft(self) -> LoraConfig:
        """The equivalent ``peft.LoraConfig`` for a causal LM."""
        from peft import LoraConfig

        target = self.target_modules
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=target if isinstance(target, str) else list(target),
            task_type="CAUSAL_LM",
        )


def _source(name_or_path: str | os.PathLike[str], gguf_file: str | None) -> tuple[str, str | None]:
    """Where to load from: ``(local folder or hub name, GGUF file name or None)``.

    A path to a ``.gguf`` file is split into its folder and file name. A missing local path
    fails here rather than as a confusing hub lookup; anything that is not an existing path but
    looks like ``owner/name`` is taken for a hub name.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_file():
        if gguf_file is None and path.suffix == ".gguf":
            return str(path.parent), path.name
        raise ModelLoadError(name, "is a file; expected a model folder (or a .gguf file)")
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise ModelLoadError(name, f"no GGUF file {gguf_file!r} in this folder")
        return str(path), gguf_file
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name) or path.suffix == ".gguf":
        raise ModelLoadError(name, "no such file or folder")
    return name, gguf_file


def _require_gguf(name: str, gguf_file: str | None) -> None:
    if gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"{name} ({gguf_file})", _GGUF_HINT)


def _describe(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def _is_local(source: str) -> bool:
    return Path(source).is_dir()


def load_tokenizer(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer with a pad token distinct from EOS and right padding.

    Padding with EOS would mask out, or teach the model to ignore, the very token that ends a
    response. The pad token is chosen by :func:`choose_pad_token` among the tokens the
    vocabulary already has (SmolLM2, which pads with its EOS ``<|im_end|>``, pads with
    ``<|endoftext|>``), so the model's vocabulary, and the exported model's, stay the base's.
    Only when none is usable is a ``<|pad|>`` token added; the tokenizer may then be longer
    than the model's embedding table, and :func:`load_model` given this tokenizer grows the
    table to match (not under LoRA). The choice is logged. Padding is on the right; collators
    that need left padding (generation) set it themselves. Whether the tokenizer writes BOS by
    itself is left as it is: see :func:`tokenizer_adds_bos`.
    """
    from transformers import AutoTokenizer

    source, gguf_file = _source(name_or_path, gguf_file)
    label = source if gguf_file is None else f"{source} ({gguf_file})"
    _require_gguf(source, gguf_file)
    if _is_local(source) and gguf_file is None:
        present = [name for name in _TOKENIZER_FILES if (Path(source) / name).is_file()]
        if not present:
            raise ModelLoadError(
                source, f"no tokenizer in this folder (looked for {', '.join(_TOKENIZER_FILES)})"
            )
    options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        options["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except Exception as exc:
        raise ModelLoadError(label, f"could not load the tokenizer ({_describe(exc)})") from exc
    if gguf_file is not None:
        _drop_tokens_beyond_gguf(tokenizer, source, gguf_file, label)
    pad, why = choose_pad_token(tokenizer, _generation_stop_ids(source))
    if pad is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        why = f"added: {why}; the model's embedding table grows by a row"
    elif pad != tokenizer.pad_token:
        tokenizer.pad_token = pad
    _log_once(label, f"pad token {tokenizer.pad_token} (id {tokenizer.pad_token_id}): {why}")
    tokenizer.padding_side = "right"
    return tokenizer


def _drop_tokens_beyond_gguf(
    tokenizer: PreTrainedTokenizerBase, source: str, gguf_file: str, label: str
) -> None:
    """Remove the added tokens whose ids lie beyond the GGUF file's vocabulary.

    transformers (5.x) builds a GGUF file's byte-level BPE tokenizer as a ``GPT2Tokenizer``,
    whose default special token ``<|endoftext|>`` is added when the file has none (Llama 3's
    files, for one): the tokenizer is then one token longer than the model, whose embedding
    table would have to grow. The token is not the model's, so it goes.
    """
    from gguf import GGUFReader
    from tokenizers import Tokenizer
    from transformers.utils import cached_file

    try:
        path = cached_file(source, gguf_file)
        field = GGUFReader(path).fields.get("tokenizer.ggml.tokens") if path else None
    except Exception:  # the tokenizer has loaded; this only refines it
        return
    if field is None or len(tokenizer) <= len(field.data):
        return
    size = len(field.data)
    backend = getattr(tokenizer, "_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        return
    state = json.loads(backend.to_str())
    stray = [token for token in state["added_tokens"] if token["id"] >= size]
    state["added_tokens"] = [token for token in state["added_tokens"] if token["id"] < size]
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))
    names = ", ".join(f"{token['content']} (id {token['id']})" for token in stray)
    _log_once(label, f"dropped {names}: not among the file's {size} tokens")


_LOGGED: set[str] = set()


def _log_once(label: str, message: str) -> None:
    """Log a loading decision once per model and process (tokenizers load several times)."""
    line = f"{label}: {message}"
    if line not in _LOGGED:
        _LOGGED.add(line)
        logger.info("%s", line)


# Names of special tokens that may pad, in the order they are preferred after the
# tokenizer's own pad token; the unknown token comes between the first and the second.
_PAD_NAME = re.compile(r"pad", re.IGNORECASE)
_END_OF_TEXT_NAME = re.compile(r"end_?of_?text", re.IGNORECASE)
_RESERVED_NAME = re.compile(r"reserved|unused", re.IGNORECASE)


def choose_pad_token(
    tokenizer: PreTrainedTokenizerBase, stop_ids: Iterable[int] = ()
) -> tuple[str | None, str]:
    """The token to pad with and why: ``(token, reason)``, or ``(None, reason)`` when the
    vocabulary has none that may pad and one must be added.

    A token may pad when it is a special (or added) token that is not EOS, not BOS, not one of
    ``stop_ids`` (the generation config's end tokens: sampling stops at them, so a pad among
    them would end or hide responses) and not written by the chat template (its text does not
    occur in the template's source), so it never stands for a real token of a training
    sequence. Preferred, in order: the tokenizer's own pad token, a token named for padding
    (Qwen's ``<|fim_pad|>``, Llama 3.1's ``<|finetune_right_pad_id|>``), the unknown token, an
    end-of-text token (SmolLM2's ``<|endoftext|>``), a reserved or unused one; the lowest id
    first among equals. Collators mask padding by the attention mask, and a sequence
    classifier reads the last token that is not the pad (the EOS or the template's end), so a
    token that exists in the vocabulary pads as well as a new one, without a new embedding row.
    """
    from rlhf.data.chat import chat_template_of

    template = chat_template_of(tokenizer)
    template_text = template if isinstance(template, str) else json.dumps(template)
    refused = {tokenizer.eos_token_id, tokenizer.bos_token_id, *stop_ids} - {None}
    candidates: dict[int, str] = {
        index: token.content for index, token in tokenizer.added_tokens_decoder.items()
    }
    for token, index in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True):
        candidates.setdefault(index, token)
    usable = {
        index: token
        for index, token in sorted(candidates.items())
        if index not in refused and token and token not in template_text
    }
    own = tokenizer.pad_token_id
    if own is not None and own in usable:
        return usable[own], "the tokenizer's own pad token"
    unk = tokenizer.unk_token_id
    tiers = (
        (lambda index, token: bool(_PAD_NAME.search(token)), "a special token named for padding"),
        (lambda index, token: index == unk, "the unknown token"),
        (lambda index, token: bool(_END_OF_TEXT_NAME.search(token)), "an end-of-text token"),
        (lambda index, token: bool(_RESERVED_NAME.search(token)), "a reserved special token"),
    )
    if own is None:
        before = "the tokenizer has no pad token"
    elif own == tokenizer.eos_token_id:
        before = "the tokenizer pads with EOS"
    else:
        before = f"the tokenizer's pad token {tokenizer.pad_token} may not pad"
    for matches, what in tiers:
        for index, token in usable.items():
            if matches(index, token):
                return token, (
                    f"{what}, not EOS, BOS, a stop token or written by the chat template ({before})"
                )
    return None, (
        "no special token of the vocabulary may pad (each is EOS, BOS, a stop token or written "
        "by the chat template)"
    )


def _generation_stop_ids(source: str) -> list[int]:
    """The end-of-sequence ids the model's ``generation_config.json`` / ``config.json`` name
    (chat models list their end-of-turn token there); [] when neither says or can be read."""
    from transformers.utils import cached_file

    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        try:
            path = cached_file(
                source,
                name,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
            eos = (
                json.loads(Path(path).read_text(encoding="utf-8")).get("eos_token_id")
                if path
                else None
            )
        except (OSError, ValueError):
            continue
        for token in [eos] if isinstance(eos, int) else list(eos or []):
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer(text)`` starts the encoding with BOS by itself.

    Asked of the tokenizer's behaviour, not of ``add_bos_token``: in transformers 5 a
    ``LlamaTokenizer`` such as stories260K's reports ``add_bos_token=False`` yet its
    post-processor still writes ``<s>``. Tokenisation that writes BOS itself should encode with
    ``add_special_tokens=False`` when this is True, or BOS appears twice.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype | Literal["auto"]:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"dtype: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}"
        ) from None


def disable_dropout(model: torch.nn.Module) -> None:
    """Turn every dropout in ``model`` off, in modules and in their configs.

    Setting ``nn.Dropout.p`` is not enough: attention layers copy ``config.attention_dropout``
    into a float attribute at construction and pass it to the attention kernel, so float
    attributes whose name contains "dropout" are zeroed too, as are those of the config (for
    anything built from it later).
    """
    _turn_off_dropout(model)


def _turn_off_dropout(model: torch.nn.Module) -> None:
    from transformers import PretrainedConfig

    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            _zero_config_dropout(config)


def _zero_config_dropout(config: Any) -> None:
    from transformers import PretrainedConfig

    for name, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _zero_config_dropout(value)
        elif "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    lora: LoraSpec | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    disable_dropout: bool = True,
    trust_remote_code: bool = False,
    auto_class: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    grow_embeddings: bool = True,
    loading_info: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Load a causal LM by hub name or local folder, ready for training or inference.

    ``dtype``: "float32", "bfloat16", "float16" or "auto" (the checkpoint's own).
    ``attn_implementation``: "sdpa", "eager", "flash_attention_2", or None for transformers'
    choice. ``gguf_file``: a GGUF file inside the folder (or pass the ``.gguf`` path itself),
    dequantised to ``dtype`` into a plain model (see :func:`_gguf_options`) that trains, saves
    and exports like any other. ``tokenizer``: when given (from :func:`load_tokenizer`), the
    embedding table grows to its length if it added a token (refused under LoRA: see
    :func:`_match_tokenizer`), and the model's pad id becomes the tokenizer's. ``disable_dropout`` turns off the base model's
    dropout (see :func:`disable_dropout`) before the LoRA adapters are added, so a LoRA dropout
    asked for in ``lora`` is kept. With ``lora`` the result is a ``peft.PeftModel`` whose base
    weights are frozen.

    The model comes back in eval mode, as transformers returns it; the training loop calls
    ``.train()``. Any failure is a :class:`ModelLoadError` naming the model and the cause.
    ``auto_class`` loads another head than the causal LM's (e.g.
    ``AutoModelForSequenceClassification`` for reward models) and ``model_kwargs`` go to its
    ``from_pretrained`` (e.g. ``num_labels=1``). ``grow_embeddings=False`` refuses to grow the
    embedding table, as ``lora`` does (for callers that add adapters themselves).
    ``loading_info``, a dict, receives transformers' account of the load (``missing_keys``,
    ``unexpected_keys``, ``mismatched_keys``: ``from_pretrained(output_loading_info=True)``).
    """
    from transformers import AutoModelForCausalLM

    source, gguf_file = _source(name_or_path, gguf_file)
    label = source if gguf_file is None else f"{source} ({gguf_file})"
    _require_gguf(source, gguf_file)
    if _is_local(source) and gguf_file is None and not (Path(source) / "config.json").is_file():
        raise ModelLoadError(source, "no config.json: not a Hugging Face model folder")
    options: dict[str, Any] = {"dtype": _torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    if gguf_file is not None:
        options.update(_gguf_options(gguf_file))
    options.update(model_kwargs or {})
    if loading_info is not None:
        options["output_loading_info"] = True
    try:
        model = (auto_class or AutoModelForCausalLM).from_pretrained(source, **options)
        if loading_info is not None:
            model, info = model
            loading_info.update(info)
    except Exception as exc:
        raise ModelLoadError(label, f"could not load the model ({_describe(exc)})") from exc
    if gguf_file is not None:
        _forget_quantization(model)
    try:
        model = model.to(device)
    except Exception as exc:
        raise ModelLoadError(
            label, f"could not move the model to {device} ({_describe(exc)})"
        ) from exc

    if tokenizer is not None:
        _match_tokenizer(model, tokenizer, label, grow=lora is None and grow_embeddings)
    if disable_dropout:
        _turn_off_dropout(model)
    if lora is not None:
        try:
            model = add_lora_adapters(model, lora.to_peft())
        except Exception as exc:
            raise ModelLoadError(label, f"could not add LoRA adapters ({_describe(exc)})") from exc
    return model


def add_lora_adapters(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """``peft.get_peft_model(model, config)``, without the FutureWarning peft 0.x triggers by
    reading transformers' deprecated ``is_gradient_checkpointing`` (nothing a user can change)."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        return get_peft_model(model, config)


def _gguf_options(gguf_file: str) -> dict[str, Any]:
    """``from_pretrained`` options that load a GGUF file as a plain float model.

    transformers 5 loads a GGUF file through a GGUF "quantizer": it dequantises the tensors
    (or keeps some in packed blocks where a kernel for them is installed) yet marks the model
    quantized (``hf_quantizer``, ``config.quantization_config``), so ``save_pretrained``
    refuses it ("quantized with gguf and is not serializable") and no checkpoint or export is
    written. ``GgufConfig(dequantize=True)`` unpacks every weight and drops those marks once
    the weights are in (``HfQuantizer.postprocess_model``). Older transformers have no GGUF
    quantizer and always dequantise.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {"gguf_file": gguf_file}
    return {"gguf_file": gguf_file, "quantization_config": GgufConfig(dequantize=True)}


def _forget_quantization(model: PreTrainedModel) -> None:
    """Drop whatever still marks a model dequantised from GGUF as quantized (a no-op where
    transformers already did: see :func:`_gguf_options`), so that it saves as the plain model
    it is."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_is_quantized", False):
            config._is_quantized = False
        if getattr(config, "quantization_config", None) is not None:
            del config.quantization_config


def _match_tokenizer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, label: str, *, grow: bool
) -> None:
    """Grow the embedding table to the tokenizer (when it added a pad token) and adopt its
    pad id.

    Never under LoRA (``grow=False``): the adapters neither train nor save new rows, so the
    saved adapters would not fit their base model; a :class:`ModelLoadError` says what to do.
    A table already long enough (many checkpoints pad it beyond the tokenizer for speed) is
    used as it is, never shrunk.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        if not grow:
            raise ModelLoadError(
                label,
                f"the tokenizer has {len(tokenizer)} tokens (a pad token was added: no token "
                f"of the vocabulary may pad) but the model {rows} embedding rows, and LoRA "
                "cannot grow the table (the adapters would neither train nor save the new "
                "row); train without LoRA, or give the tokenizer a pad token of its vocabulary "
                "that is not EOS (tokenizer.pad_token = ...; tokenizer.save_pretrained(...))",
            )
        # New rows start at the mean of the old ones (Hewitt 2021), a near-uniform guess.
        model.resize_token_embeddings(len(tokenizer))
        _log_once(label, f"embedding table grown from {rows} to {len(tokenizer)} rows")
    pad = tokenizer.pad_token_id
    if pad is not None:
        model.config.pad_token_id = pad
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad


def save_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | os.PathLike[str],
    *,
    merge_lora: bool = False,
) -> Path:
    """Save ``model`` (and ``tokenizer``) to ``out_dir`` in Hugging Face format (safetensors).

    A plain model saves as ``config.json`` + ``model.safetensors`` (+ generation config), which
    plain ``AutoModelForCausalLM.from_pretrained`` and vLLM load. A LoRA (peft) model with
    ``merge_lora=True`` saves the same way with the adapters merged into the weights (on a
    copy: the model passed in keeps training); with ``merge_lora=False`` only the adapters are
    saved (``adapter_config.json`` + ``adapter_model.safetensors``, to load with
    ``peft.AutoPeftModelForCausalLM``), with a README saying so.
    The tokenizer is saved so that older transformers versions read it too (its class named
    ``PreTrainedTokenizerFast`` and the chat template kept in ``tokenizer_config.json``).
    Returns the folder. A model whose weights hold NaN or infinity is refused
    (:class:`~rlhf.models.finite.NonFiniteError`) before anything is written.
    """
    from peft import PeftModel

    from rlhf.models.parallel import full_state_dict, is_main_process, is_sharded

    out = Path(out_dir)
    check_finite_weights(model, f"refusing to save {out}")
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    if is_sharded(model):  # FSDP2 ranks: gathered from the shards (a collective), rank 0 writes
        whole = full_state_dict(model)
        if is_main_process():
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out, state_dict=whole)
            if tokenizer is not None:
                _save_tokenizer(tokenizer, out)
        return out
    if not is_main_process():  # every rank holds the same whole model: rank 0 writes it
        return out
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        if merge_lora:
            copy.deepcopy(model).merge_and_unload().save_pretrained(out)
        else:
            model.save_pretrained(out)
            (out / "README.md").write_text(_ADAPTER_NOTE, encoding="utf-8")
            logger.info("%s: saved LoRA adapters only (merge_lora=False)", out)
    else:
        model.save_pretrained(out)
    if tokenizer is not None:
        _save_tokenizer(tokenizer, out)
    return out


_ADAPTER_NOTE = """\
# LoRA adapters

This folder holds LoRA adapters only (`adapter_model.safetensors`), not a full model. The base
model is named in `adapter_config.json` (`base_model_name_or_path`). Load with

    from peft import AutoPeftModelForCausalLM
    model = AutoPeftModelForCausalLM.from_pretrained("<this folder>")

or save with `rlhf.models.save_model(model, tokenizer, out_dir, merge_lora=True)` for a plain
model that `AutoModelForCausalLM` and vLLM read.
"""


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # transformers 5 names its generic fast tokenizer "TokenizersBackend", a class older
    # versions (and the vLLM builds pinned to them) do not have; the old name loads in both.
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # transformers 5 writes the template to chat_template.jinja only; older readers look here.
    if isinstance(tokenizer.chat_template, str):
        config["chat_template"] = tokenizer.chat_template
    config_path.write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
