"""Reward models: a backbone and a scalar head, saved as a Hugging Face sequence classifier.

A reward model is ``AutoModelForSequenceClassification`` with one label, so that plain
transformers, TRL and vLLM read it as they read any reward model::

    model = AutoModelForSequenceClassification.from_pretrained("runs/rm/model")
    raw = model(input_ids, attention_mask=attention_mask).logits[:, 0]   # [N]

* **Decoders** (Llama, Qwen, GPT-2, ...): ``*ForSequenceClassification`` applies the head to
  every position and reads the *rightmost token that is not the pad token* (transformers 5.23,
  ``GenericForSequenceClassification.forward``). Sequences are right-padded with a pad token
  distinct from EOS (``load_tokenizer`` chooses a special token of the vocabulary that no
  sequence ends with, or adds one) and ``config.pad_token_id`` is that token, so the score is
  read at the last real token, the response's EOS or the chat template's end. We score
  through the same forward, so our rewards are transformers' to the last bit; a row whose last
  real token is the pad token itself (text that ends in it) is read where it ends instead
  (:func:`reward_logits`).
* **Encoders** (BERT, MiniLM, DeBERTa, ...) pool in their own way (BERT: a dense layer on the
  ``[CLS]`` token); padding is handled by the attention mask. "The last real token" is a
  decoder's rule.
* A new head starts as N(0, 1/√(d + 1)) with zero bias, d the hidden size (Stiennon et al.,
  2020, and OpenAI's lm-human-preferences), so initial rewards have about unit variance.
* **Normalisation**: after training, a gain and bias are stored so that the rewards of a
  reference set of responses have mean 0 and standard deviation 1 (Ziegler et al., 2019;
  Stiennon et al., 2020). They live in ``config.json`` under :data:`NORMALIZATION_KEY` (and in
  ``reward_normalization.json`` beside it); the raw score is what transformers returns and
  the reward every consumer uses is ``gain · raw + bias``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhf.data.pairs import (
    TokenizedGroup,
    collate_groups_shared_prefix,
    pad_right,
    tokenize_for_reward,
)
from rlhf.data.records import Text
from rlhf.models.forward import (
    decoder_hidden_states,
    evaluating,
    position_limit,
    shares_prompt_prefix,
    unwrap,
)
from rlhf.models.load import LoraSpec, ModelLoadError, load_model, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger("rlhf.models")

NORMALIZATION_KEY = "rlhf_reward_normalization"  # in config.json: {"gain": g, "bias": b}
NORMALIZATION_FILE = "reward_normalization.json"


def reward_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The layer that writes the reward: the last ``Linear`` with one output feature
    (``score`` of decoders, ``classifier`` of BERT, ``classifier.out_proj`` of RoBERTa)."""
    base = unwrap(model)
    heads = [
        module
        for module in base.modules()
        if isinstance(module, torch.nn.Linear) and module.out_features == 1
    ]
    if not heads:
        raise ValueError(f"{type(base).__name__} has no scalar head (a Linear with one output)")
    return heads[-1]


def init_reward_head(head: torch.nn.Linear, seed: int = 0) -> None:
    """Weights N(0, 1/√(d + 1)) (d = the head's input size), bias 0, seeded; global RNG untouched."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    std = 1.0 / math.sqrt(head.in_features + 1)
    weight = torch.randn(head.weight.shape, generator=generator, dtype=torch.float32) * std
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.zero_()


def is_reward_model(config: Any) -> bool:
    """Whether a checkpoint's config names a sequence classifier (its head is trained)."""
    return any(name.endswith("ForSequenceClassification") for name in (config.architectures or []))


def init_reward_model(
    name_or_path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    lora: LoraSpec | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A reward model to train: ``AutoModelForSequenceClassification`` with one label.

    ``name_or_path``: a causal LM (its LM head is dropped and a scalar head added), an encoder
    such as BERT / MiniLM, or a reward model already (its head is kept, to train further).
    A new head is initialised N(0, 1/√(d + 1)) from ``seed`` and said so in one log line
    (transformers' load report, which lists it as missing, is held back unless it lists
    anything else). ``tokenizer`` (from :func:`~rlhf.models.load.load_tokenizer`: pad ≠ EOS,
    right padding) sets ``config.pad_token_id`` and grows the embeddings if it added a pad
    token (never under ``lora``). Dropout is off; ``lora`` trains adapters plus the (fully
    trained) head, through peft's ``SEQ_CLS`` task.
    """
    from transformers import AutoModelForSequenceClassification

    return init_scalar_head_model(
        name_or_path,
        tokenizer,
        auto_class=AutoModelForSequenceClassification,
        peft_task="SEQ_CLS",
        has_trained_head=is_reward_model,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        gguf_file=gguf_file,
        lora=lora,
        seed=seed,
    )


def init_scalar_head_model(
    name_or_path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    auto_class: Any,
    peft_task: str,
    has_trained_head: Callable[[Any], bool],
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = "sdpa",
    gguf_file: str | None = None,
    lora: LoraSpec | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A backbone with a one-output head, as :func:`init_reward_model` describes, of any
    transformers ``auto_class`` (a sequence classifier for reward models, a token classifier
    for process reward models); ``has_trained_head(config)`` says whether the checkpoint's head
    is kept; ``peft_task`` is peft's task type under ``lora`` (it trains the head in full)."""
    info: dict[str, Any] = {}
    with _held_load_reports() as reports:
        model = load_model(
            name_or_path,
            dtype=dtype,
            device=device,
            attn_implementation=attn_implementation,
            gguf_file=gguf_file,
            tokenizer=tokenizer,
            auto_class=auto_class,
            model_kwargs={"num_labels": 1},
            grow_embeddings=lora is None,
            loading_info=info,
        )
    model.config.use_cache = False  # a scorer never generates: no KV cache in its forward
    new_head = not has_trained_head(model.config)
    if new_head:
        init_reward_head(reward_head(model), seed)
    _report_load(model, name_or_path, gguf_file, info, reports, new_head, seed)
    if lora is not None:
        from rlhf.models.load import add_lora_adapters

        spec = dataclasses.replace(lora.to_peft(), task_type=peft_task)
        try:
            model = add_lora_adapters(model, spec)
        except Exception as exc:
            raise ModelLoadError(str(name_or_path), f"could not add LoRA adapters ({exc})") from exc
    return model


# Keys of a causal or masked LM checkpoint's own output layer, which a sequence classifier
# built from it drops (transformers reports them "unexpected"): expected here.
_DROPPED_OUTPUT_LAYERS = ("lm_head.", "cls.")


@contextlib.contextmanager
def _held_load_reports() -> Iterator[list[logging.LogRecord]]:
    """Hold back transformers' "LOAD REPORT" log records made inside (yields the list)."""
    held: list[logging.LogRecord] = []
    target = logging.getLogger("transformers.modeling_utils")

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    target.addFilter(hold)
    try:
        yield held
    finally:
        target.removeFilter(hold)


def _report_load(
    model: torch.nn.Module,
    name_or_path: str | os.PathLike[str],
    gguf_file: str | None,
    info: dict[str, Any],
    reports: list[logging.LogRecord],
    new_head: bool,
    seed: int,
) -> None:
    """Say once, in our words, what transformers' load report says of a new scoring head;
    let the report through as it was when it lists keys a new head does not explain."""
    head = reward_head(model)
    head_name = next(name for name, module in model.named_modules() if module is head)
    missing = sorted(info.get("missing_keys", ()))
    explained = (
        new_head
        and all(key.startswith(head_name.split(".")[0] + ".") for key in missing)
        and all(key.startswith(_DROPPED_OUTPUT_LAYERS) for key in info.get("unexpected_keys", ()))
        and not info.get("mismatched_keys")
    )
    if not explained:
        target = logging.getLogger("transformers.modeling_utils")
        for record in reports:
            target.handle(record)
    if new_head:
        label = str(name_or_path) if gguf_file is None else f"{name_or_path} ({gguf_file})"
        logger.info(
            "%s: new scoring head %s (%d × %d), initialised N(0, 1/√(%d + 1)) with seed %d; "
            "the checkpoint's output layer is not used",
            label, ", ".join(missing) or head_name, head.out_features, head.in_features,
            head.in_features, seed,
        )  # fmt: skip


def reward_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Raw rewards [N] (float32) of right-padded sequences ``input_ids`` [N, T].

    The model's own forward, so the reward is read where transformers reads it (see the
    module docstring); training and scoring both come through here. A decoder reads the last
    token that is not ``config.pad_token_id``: a row whose last real token *is* that id (text
    ending in the pad token, with no EOS or template end after it) would be read early, so
    such rows are read at their last real token from the decoder's hidden states.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    base = unwrap(model)
    pad, head = getattr(base.config, "pad_token_id", None), getattr(base, "score", None)
    if pad is None or not isinstance(head, torch.nn.Module):
        return logits  # an encoder pools in its own way
    last = attention_mask.long().sum(-1) - 1  # [N] the last real token (right padding)
    rows = input_ids.gather(1, last[:, None])[:, 0].eq(pad).nonzero()[:, 0]  # [n]
    if rows.numel():
        hidden = decoder_hidden_states(
            model, input_ids=input_ids[rows], attention_mask=attention_mask[rows]
        )  # [n, T, H]
        at_end = hidden[torch.arange(rows.numel(), device=rows.device), last[rows]]  # [n, H]
        logits = logits.clone()
        logits[rows] = head(at_end)[:, 0].float()
    return logits


def packed_reward_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    response_end: torch.Tensor,
) -> torch.Tensor:
    """Raw rewards [N] of the responses of shared-prefix rows (see
    :func:`rlhf.data.pairs.collate_groups_shared_prefix`): the decoder's last hidden state at
    each response's last token through the ``score`` head, as the model's own forward reads
    it in the one-row-per-response layout."""
    hidden = decoder_hidden_states(
        model, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    )  # [G, L, H]
    last = hidden.flatten(0, 1).index_select(0, response_end)  # [N, H]
    return unwrap(model).score(last)[:, 0].float()


def normalization_from_rewards(raw_rewards: torch.Tensor) -> tuple[float, float]:
    """``(gain, bias)`` that map ``raw_rewards`` [N] to mean 0 and standard deviation 1.

    ``gain = 1 / std``, ``bias = −mean / std``; a constant set (std ≈ 0) only gets centred.
    """
    raw = raw_rewards.double().flatten()
    mean = float(raw.mean())
    std = float(raw.std(unbiased=False)) if raw.numel() > 1 else 0.0
    if not std > 1e-8:
        return 1.0, -mean
    return 1.0 / std, -mean / std


class RewardModel:
    """A reward model ready to score (prompt, response) pairs.

    ``model`` is the sequence classifier, ``tokenizer`` its tokenizer (right padding, pad ≠
    EOS), and ``gain`` / ``bias`` map raw scores to normalised rewards.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        gain: float = 1.0,
        bias: float = 0.0,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.gain, self.bias = float(gain), float(bias)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int | None:
        """The longest sequence the backbone takes (its position table), if it says."""
        return position_limit(self.model)

    def normalize(self, raw_rewards: torch.Tensor) -> torch.Tensor:
        """``gain · raw + bias``, elementwise."""
        return raw_rewards * self.gain + self.bias

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[Text],
        responses: Sequence[Text],
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        normalized: bool = True,
        known: Mapping[tuple[int, ...], float] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Rewards [N] (float32, on the CPU) of ``responses[i]`` to ``prompts[i]``.

        Sequences are tokenised as in training (:func:`rlhf.data.pairs.tokenize_for_reward`;
        over ``max_length`` tokens — default: the backbone's position limit — the prompt's
        start is cut), sorted by length so each batch pads little, scored ``batch_size`` at
        a time and returned in the order given. ``normalized=False`` gives the raw scores.

        Consecutive rows with the same prompt (a rollout's K samples of one prompt) are read
        as one packed row when the model allows it (:func:`shares_prompt_prefix`): their
        common prefix once, then each response
        (:func:`rlhf.data.pairs.collate_groups_shared_prefix`, as reward-model training
        reads a prompt group); the rewards are the same up to float rounding.

        ``known``: raw scores this model already gave, by token sequence; those rows are not
        run again. ``on_batch(rows)`` after each batch (progress).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        limit = max_length or self.max_length
        sequences = [
            tokenize_for_reward(self.tokenizer, prompt, response, limit)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        rewards = torch.zeros(len(sequences), dtype=torch.float32)
        todo = list(range(len(sequences)))
        if known:
            todo = []
            for i, sequence in enumerate(sequences):
                raw = known.get(tuple(sequence))
                if raw is None:
                    todo.append(i)
                else:
                    rewards[i] = raw
            if on_batch is not None and len(todo) < len(sequences):
                on_batch(len(sequences) - len(todo))
        if todo:
            rewards[todo] = self._score_raw(
                [sequences[i] for i in todo], [prompts[i] for i in todo], batch_size, on_batch
            )
        return self.normalize(rewards) if normalized else rewards

    def _score_raw(
        self,
        sequences: Sequence[Sequence[int]],
        prompts: Sequence[Text],
        batch_size: int,
        on_batch: Callable[[int], None] | None,
    ) -> torch.Tensor:
        """Raw rewards [N] of token ``sequences`` (``prompts``: which rows share a prompt)."""
        rewards = torch.zeros(len(sequences), dtype=torch.float32)
        groups = _consecutive_groups(prompts, batch_size)
        if groups is not None and shares_prompt_prefix(self.model):
            return self._score_packed(sequences, groups, rewards, on_batch)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        with evaluating(self.model):
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, attention_mask = pad_right(
                    [sequences[i] for i in rows], self.tokenizer.pad_token_id
                )
                raw = reward_logits(
                    self.model, input_ids.to(self.device), attention_mask.to(self.device)
                )
                rewards[rows] = raw.cpu()
                if on_batch is not None:
                    on_batch(len(rows))
        return rewards

    def _score_packed(
        self,
        sequences: Sequence[Sequence[int]],
        chunks: Sequence[Sequence[Sequence[int]]],
        rewards: torch.Tensor,
        on_batch: Callable[[int], None] | None,
    ) -> torch.Tensor:
        """:meth:`_score_raw` with each chunk's prompt groups packed one per row."""
        with evaluating(self.model):
            for chunk in chunks:
                groups = [
                    TokenizedGroup(tuple(tuple(sequences[i]) for i in rows), (), (), ())
                    for rows in chunk
                ]
                batch = collate_groups_shared_prefix(groups, self.tokenizer.pad_token_id)
                assert batch.position_ids is not None and batch.response_end is not None
                raw = packed_reward_logits(
                    self.model,
                    batch.input_ids.to(self.device),
                    batch.attention_mask.to(self.device),
                    batch.position_ids.to(self.device),
                    batch.response_end.to(self.device),
                )  # [n] in the chunk's row order
                flat = [i for rows in chunk for i in rows]
                rewards[flat] = raw.cpu()
                if on_batch is not None:
                    on_batch(len(flat))
        return rewards


def _consecutive_groups(prompts: Sequence[Text], batch_size: int) -> list[list[list[int]]] | None:
    """Runs of consecutive rows with the same prompt, in chunks of at most ``batch_size`` rows
    (a longer run alone); None when no prompt repeats on consecutive rows."""
    runs: list[list[int]] = []
    for index, prompt in enumerate(prompts):
        if runs and prompts[runs[-1][0]] == prompt:
            runs[-1].append(index)
        else:
            runs.append([index])
    if len(runs) == len(prompts):
        return None
    chunks: list[list[list[int]]] = [[]]
    size = 0
    for run in runs:
        if chunks[-1] and size + len(run) > batch_size:
            chunks.append([])
            size = 0
        chunks[-1].append(run)
        size += len(run)
    return chunks


def read_normalization(config: Any, folder: Path | None = None) -> dict[str, float] | None:
    """The stored ``{"gain", "bias"}``: from the config, else ``reward_normalization.json``."""
    stored = getattr(config, NORMALIZATION_KEY, None)
    if stored is None and folder is not None and (folder / NORMALIZATION_FILE).is_file():
        stored = json.loads((folder / NORMALIZATION_FILE).read_text(encoding="utf-8"))
    if stored is None:
        return None
    return {"gain": float(stored["gain"]), "bias": float(stored["bias"])}


def set_normalization(model: torch.nn.Module, gain: float, bias: float) -> None:
    """Put ``{"gain", "bias"}`` in the model's config; ``save_pretrained`` writes it to
    config.json under :data:`NORMALIZATION_KEY`."""
    setattr(unwrap(model).config, NORMALIZATION_KEY, {"gain": float(gain), "bias": float(bias)})


def write_normalization(folder: Path, gain: float, bias: float, **info: Any) -> Path:
    """Write ``reward_normalization.json`` (gain, bias and ``info``, e.g. the reference set)."""
    from rlhf.models.parallel import is_main_process

    path = Path(folder) / NORMALIZATION_FILE
    if not is_main_process():  # data-parallel ranks: rank 0 writes the model folder
        return path
    record = {"gain": float(gain), "bias": float(bias), **info}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def load_scalar_classifier(
    path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    kind: str = "reward model",
    saved_by: str = "rlhf rm",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A one-label sequence classifier and its tokenizer, ready to score (no KV cache): what
    reward models and pairwise preference models both are. Anything else is a
    :class:`ModelLoadError` calling it "not a ``kind``, as ``saved_by`` saves"."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(path)
    model = load_model(
        path,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        auto_class=AutoModelForSequenceClassification,
    )
    if not is_reward_model(model.config) or model.config.num_labels != 1:
        raise ModelLoadError(
            str(path),
            f"not a {kind} (architectures {model.config.architectures}, "
            f"{model.config.num_labels} labels); expected a sequence classifier with one label, "
            f"as `{saved_by}` saves",
        )
    model.config.use_cache = False
    return model, tokenizer


def load_reward_model(
    path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> RewardModel:
    """Load a reward model saved by ``rlhf rm`` (or any one-label sequence classifier).

    The normalisation comes from ``config.json`` (:data:`NORMALIZATION_KEY`) or
    ``reward_normalization.json``; without either, rewards are the raw scores (gain 1,
    bias 0) and a warning says so. A pairwise preference model (``rlhf pm``), one-label too,
    is refused: its number scores a pair of responses, not one.
    """
    from rlhf.models.preference import PREFERENCE_MODEL_KEY, is_preference_model

    model, tokenizer = load_scalar_classifier(path, dtype=dtype, device=device)
    if is_preference_model(model.config):
        raise ModelLoadError(
            str(path),
            f"a pairwise preference model (config.json has {PREFERENCE_MODEL_KEY}), not a "
            "reward model: it scores two responses at once; use it as a preference "
            "(preference: {model: PATH})",
        )
    folder = Path(path) if Path(path).is_dir() else None
    stored = read_normalization(model.config, folder)
    if stored is None:
        logger.warning("%s: no reward normalisation stored; rewards are the raw scores", path)
        stored = {"gain": 1.0, "bias": 0.0}
    return RewardModel(model, tokenizer, stored["gain"], stored["bias"])
