"""A SmolLM2-like tiny chat model built in code, and a GGUF file written from it.

:func:`make_smol_like` saves a tiny Llama whose tokenizer has SmolLM2-135M-Instruct's special
tokens: ``<|endoftext|>`` (unk), ``<|im_start|>`` (BOS), ``<|im_end|>`` (EOS, and the pad
token), with a ChatML template that writes ``<|im_start|>`` and ``<|im_end|>``.

:func:`write_llama_gguf` writes such a folder as llama.cpp's converter would, with only what
transformers' GGUF reader needs: the ``llama`` architecture keys, the tensor names
and layouts of llama.cpp's ``convert_hf_to_gguf.py`` (query and key rows permuted), and a
"gpt2"-style (byte-level BPE) tokenizer: tokens, token types, merges and the special ids. The
linear layers are quantised to Q8_0 (blocks of 32 weights), so loading has to dequantise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CONTROL, NORMAL = 3, 1  # gguf.TokenType
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"  # ids 0, 1, 2
CHATML_TEMPLATE = (  # SmolLM2-135M-Instruct's, without its default system prompt
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_smol_like(out: Path, texts: list[str], **sizes: int) -> Path:
    """Save a tiny Llama with a SmolLM2-like tokenizer (pad = EOS = ``<|im_end|>``, an unused
    ``<|endoftext|>``) trained on ``texts`` to ``out``; ``sizes`` go to ``build_tiny_llama``."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    from rlhf.models.tiny import build_tiny_llama, train_byte_level_bpe

    vocab_size = sizes.pop("vocab_size", 400)
    backend = train_byte_level_bpe(
        texts, vocab_size, [ENDOFTEXT, IM_START, IM_END], min_frequency=0
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=IM_END,
        unk_token=ENDOFTEXT,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    model = build_tiny_llama(
        len(tokenizer), pad_token_id=2, bos_token_id=1, eos_token_id=2, **sizes
    )
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary re-ordering of query / key rows (``LlamaModel.permute``)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_llama_gguf(model_dir: Path, out: Path, *, quantize: bool = True) -> Path:
    """Write ``model_dir`` (a Llama with a byte-level BPE tokenizer) to the GGUF file ``out``."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if token in special else NORMAL for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)

    def add(name: str, tensor: torch.Tensor, *, linear: bool = False) -> None:
        data = tensor.detach().float().numpy()
        if linear and quantize:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, data)

    state = model.state_dict()
    add("token_embd.weight", state["model.embed_tokens.weight"])
    add("output_norm.weight", state["model.norm.weight"])
    if not config.tie_word_embeddings:
        add("output.weight", state["lm_head.weight"], linear=True)
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for layer in range(config.num_hidden_layers):
        for ours, theirs in names.items():
            weight = state[f"model.layers.{layer}.{ours}.weight"]
            if theirs == "attn_q":
                weight = torch.from_numpy(_permute(weight.numpy(), config.num_attention_heads))
            elif theirs == "attn_k":
                weight = torch.from_numpy(_permute(weight.numpy(), config.num_key_value_heads))
            add(f"blk.{layer}.{theirs}.weight", weight, linear="norm" not in theirs)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
