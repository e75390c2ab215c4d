"""Where a training step's memory goes, what each lever saves, and what a checkpoint weighs.

Issue 15, item 8: SmolLM2-135M-Instruct trained on a CPU peaked at 4.4-6.6 GB in fp32 and
left a 2.1 GB checkpoint per run. Each setting below runs in a fresh process
(`_harness.run_in_child`): build the model, then two optimiser steps of our Trainer on random
token ids (batch x sequence length as given; the second step is the one with AdamW's state
already allocated, the steady state), then the final checkpoint with the exported model. The
child reports

* the parts, counted exactly from the tensors: weights (tied ones once), gradients (one per
  trained weight), AdamW's state (8-bit codes and scales counted as stored), the frozen
  reference's weights, and the activations a forward pass keeps for its backward pass (the
  tensors autograd saves, plus the block inputs that activation checkpointing keeps instead);
* the measured peak: the process's peak RSS (``getrusage``) at the end of the steps, minus
  that of a child which only imports the same libraries (the baseline), and the peak RSS
  that writing the checkpoint reached;
* the checkpoint's files on disk, with ``train.save_optimizer`` always and except_final.

The model is ``--model PATH`` (a Hugging Face folder) or, by default, one built in code with
SmolLM2-135M's shapes (Llama: hidden 576, 30 layers, 9 heads, 3 key/value heads, MLP 1536,
vocabulary 49,152, tied embeddings) and random weights: nothing is downloaded.

    .venv/bin/python benchmarks/bench_memory.py [--model PATH] [--batch 4] [--seq 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import cpu_description, format_table, peak_rss_mb, progress, run_in_child

MB = 1024 * 1024
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
# (label, keyword arguments of `measure`); the first is the default every other compares with
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("default: fp32, fused AdamW", {}),
    ("gradient checkpointing", {"checkpointing": True}),
    ("foreach AdamW", {"optimizer": "adamw_foreach"}),
    ("8-bit AdamW (torchao)", {"optimizer": "adamw_8bit"}),
    ("+ fp32 frozen reference", {"reference": "float32"}),
    ("+ bf16 frozen reference", {"reference": "bfloat16"}),
    (
        "all levers: checkpointing, 8-bit AdamW, + bf16 reference",
        {"checkpointing": True, "optimizer": "adamw_8bit", "reference": "bfloat16"},
    ),
]


def imports_only() -> dict[str, float]:
    """The baseline: the libraries every setting imports, and nothing else (run in a child)."""
    import contextlib

    import torch  # noqa: F401
    import transformers

    import rlhf.engine.trainer
    import rlhf.models.forward
    import rlhf.recipes.lm  # noqa: F401

    # building a model imports transformers' quantizers, and with them torchao when it is
    # installed (about 80 MB): part of every setting, so part of the baseline too
    with contextlib.suppress(ImportError):
        import transformers.quantizers.auto  # noqa: F401
    return {}


def _build(model_path: str | None) -> Any:
    import torch

    if model_path is not None:
        from rlhf.models.load import load_model

        return load_model(model_path)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).float()


def _bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tensor subclasses such as torchao's
    8-bit state counted by the plain tensors they hold)."""
    import torch

    seen: dict[int, int] = {}
    pending = list(tensors)
    while pending:
        tensor = pending.pop()
        if not isinstance(tensor, torch.Tensor):
            continue
        flatten = getattr(type(tensor), "__tensor_flatten__", None)
        if flatten is not None:
            names, _ = tensor.__tensor_flatten__()
            pending.extend(getattr(tensor, name) for name in names)
            continue
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class ActivationCounter:
    """Bytes a forward pass keeps for its backward pass: what autograd saves (parameters
    excluded), plus the inputs of checkpointed blocks, which activation checkpointing keeps
    instead of the blocks' own saved tensors."""

    def __init__(self, model: Any) -> None:
        import torch

        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda packed: packed)
        for module in model.modules():
            if getattr(module, "gradient_checkpointing", False) and hasattr(module, "mlp"):
                module.register_forward_pre_hook(self._block_input, with_kwargs=True)
        self.counting = False

    def _keep(self, tensor: Any) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.storages[storage.data_ptr()] = storage.nbytes()

    def _pack(self, tensor: Any) -> Any:
        if self.counting:
            self._keep(tensor)
        return tensor

    def _block_input(self, module: Any, args: Any, kwargs: Any) -> None:
        import torch

        if self.counting and module.training and torch.is_grad_enabled():
            for value in [*args, *kwargs.values()]:
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    self._keep(value)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def measure(
    model: str | None,
    batch: int,
    seq: int,
    out: str,
    checkpointing: bool = False,
    optimizer: str = "adamw_fused",
    reference: str | None = None,
) -> dict[str, Any]:
    """Two Trainer steps and the final checkpoint of one setting (run in a child)."""
    import torch

    from rlhf.data.collate import IGNORE_INDEX, LMBatch
    from rlhf.engine.loader import ResumableLoader
    from rlhf.engine.trainer import TrainConfig, Trainer
    from rlhf.models.forward import label_logprobs
    from rlhf.models.load import DTYPES
    from rlhf.models.memory import frozen_copy
    from rlhf.recipes.lm import exporter, lm_loss

    policy = _build(model)
    vocab = policy.config.vocab_size
    frozen = None if reference is None else frozen_copy(policy, DTYPES[reference])
    built_peak = peak_rss_mb()

    def collate(items: list[int]) -> LMBatch:
        generator = torch.Generator().manual_seed(items[0])
        ids = torch.randint(3, vocab, (batch, seq), generator=generator)
        labels = torch.cat([ids[:, 1:], torch.full((batch, 1), IGNORE_INDEX)], 1)
        positions = torch.arange(seq).expand(batch, seq)
        return LMBatch(ids, torch.ones_like(ids), positions, labels, batch * (seq - 1), batch * seq)

    counter: ActivationCounter | None = None

    def loss_fn(module: Any, data: LMBatch) -> Any:
        nonlocal counter
        extra = 0.0
        if frozen is not None:  # π_ref's log-probs, run in every step (DPO, online recipes)
            with torch.no_grad():
                ref = label_logprobs(
                    frozen, data.input_ids, data.attention_mask, data.position_ids, data.labels
                )
            extra = 0.0 * ref.sum()
        if counter is None:  # the first step: count what its forward pass keeps
            counter = ActivationCounter(module)
            counter.counting = True
            with counter.hooks:
                loss, metrics = lm_loss(module, data)
            counter.counting = False
        else:
            loss, metrics = lm_loss(module, data)
        return loss + extra, metrics

    config = TrainConfig(
        max_steps=2, batch_size=batch, lr=1e-5, schedule="constant", seed=0, device="cpu",
        mixed_precision="no", gradient_checkpointing=checkpointing, optimizer=optimizer,
        save_every=0, max_grad_norm=1.0,
    )  # fmt: skip
    loader = ResumableLoader(list(range(4 * batch)), batch, collate, seed=0)
    trainer = Trainer(
        policy, config, loader, loss_fn, out,
        export=exporter(policy, None), tensorboard=False, progress=False,
    )  # fmt: skip
    marks: dict[str, float] = {}
    save = trainer.save_checkpoint

    def timed_save(final: bool = False) -> Path:
        marks.setdefault("step_peak_mb", peak_rss_mb())
        folder = save(final)
        marks["save_peak_mb"] = peak_rss_mb()
        return folder

    trainer.save_checkpoint = timed_save  # type: ignore[method-assign]
    history = trainer.train().history
    always = _files(trainer.last_checkpoint)
    # the same final checkpoint without the optimiser state (save_optimizer=except_final)
    trainer.config = config.model_copy(update={"save_optimizer": "except_final"})
    trainer.out_dir = Path(out) / "except_final"
    except_final = _files(save(final=True))

    trained = [p for p in policy.parameters() if p.requires_grad]
    state = [v for s in trainer.optimizer.state.values() for v in s.values()]
    return {
        "weights": _bytes([*policy.parameters(), *policy.buffers()]) / MB,
        "gradients": _bytes(trained) / MB,  # as many as trained weights, same dtype
        "optimizer": _bytes(state) / MB,
        "reference": 0.0 if frozen is None else _bytes(frozen.parameters()) / MB,
        "activations": (counter.total if counter else 0) / MB,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "built_peak_mb": built_peak,
        "step_peak_mb": marks["step_peak_mb"],
        "save_peak_mb": marks.get("save_peak_mb", marks["step_peak_mb"]),
        # the second step: the first also allocates AdamW's state (and compiles 8-bit AdamW)
        "seconds_per_step": history[1]["time"] - history[0]["time"],
        "loss": history[-1]["loss"],
        "checkpoint_always": always,
        "checkpoint_except_final": except_final,
    }


def _files(folder: Path | None) -> dict[str, float]:
    """MB of each file of a checkpoint folder (the exported model's files summed as model/)."""
    assert folder is not None
    sizes: dict[str, float] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            name = path.relative_to(folder).parts[0] + ("/" if path.parent != folder else "")
            sizes[name] = sizes.get(name, 0.0) + path.stat().st_size / MB
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a Hugging Face model folder (default: SmolLM2-135M's "
                        "shapes with random weights, built in code)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    parser.add_argument(
        "--only", nargs="*", help="run only the settings whose label contains one of these"
    )
    args = parser.parse_args()
    print(cpu_description())
    import torch

    print(f"torch {torch.__version__}; batch {args.batch} x {args.seq} tokens; fp32 weights")
    settings = [
        (label, kwargs)
        for label, kwargs in SETTINGS
        if not args.only or any(word in label for word in args.only)
    ]
    progress("baseline: imports only")
    baseline = run_in_child(imports_only)["peak_rss_mb"]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (label, kwargs) in enumerate(settings):
            progress(label)
            try:
                result = run_in_child(
                    measure, model=args.model, batch=args.batch, seq=args.seq,
                    out=str(Path(folder) / f"run-{index}"), **kwargs,
                )  # fmt: skip
            except Exception as error:  # e.g. 8-bit AdamW without torchao: say so, go on
                progress(f"{label}: failed: {str(error).splitlines()[-1]}")
                continue
            results.append((label, result))
    if not results:
        sys.exit("no setting ran")

    default = results[0][1]
    model = args.model or "SmolLM2-135M's shapes, random weights"
    print(f"model: {model}, {default['parameters'] / 1e6:.1f}M parameters")
    print(f"baseline (a child that only imports the libraries): {baseline:.0f} MB")
    print(
        "\nOne training step (MB). Parts counted from the tensors: weights, grads, AdamW, "
        "reference, activations, and their sum. Measured, minus the baseline: the peak RSS "
        "after building the model(s), at the end of the two steps, and while saving the "
        "checkpoint. s/step: the second step."
    )
    header = [
        "setting", "weights", "grads", "AdamW", "reference", "activations", "sum", "built",
        "peak", "vs default", "saving", "s/step",
    ]  # fmt: skip
    rows = []
    default_peak = default["step_peak_mb"] - baseline
    for label, r in results:
        parts = [r[key] for key in ("weights", "gradients", "optimizer", "reference")]
        parts.append(r["activations"])
        peak = r["step_peak_mb"] - baseline
        rows.append(
            [
                label, *(f"{part:.0f}" for part in parts), f"{sum(parts):.0f}",
                f"{r['built_peak_mb'] - baseline:.0f}", f"{peak:.0f}",
                f"{peak - default_peak:+.0f}", f"{r['save_peak_mb'] - baseline:.0f}",
                f"{r['seconds_per_step']:.1f}",
            ]
        )  # fmt: skip
    print(format_table(header, rows))

    print("\nThe final checkpoint on disk (MB), train.save_optimizer = always | except_final")
    names = sorted({name for _, r in results for name in r["checkpoint_always"]})
    rows = []
    for label, r in results:
        if label != results[0][0] and "8-bit" not in label:
            continue
        always, final = r["checkpoint_always"], r["checkpoint_except_final"]
        for name in names:
            rows.append([label, name, f"{always.get(name, 0):.1f}", f"{final.get(name, 0):.1f}"])
        rows.append([label, "total", f"{sum(always.values()):.1f}", f"{sum(final.values()):.1f}"])
    print(format_table(["setting", "file", "always", "except_final"], rows))
    weights = default["weights"]
    before = sum(default["checkpoint_always"].values()) + weights
    print(
        f"before these levers, trainable.safetensors also held the {weights:.0f} MB of weights "
        f"that model/ holds: {before:.1f} MB for the default checkpoint"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
