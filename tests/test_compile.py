from __future__ import annotations

import torch

from rlhf.data.collate import collate_padded
from rlhf.data.tokenize import tokenize_record
from rlhf.models.compile import compile_blocks, decoder_blocks
from rlhf.recipes.lm import lm_loss
from rlhf.sim.builtin import arithmetic


def test_compiled_blocks_give_the_eager_loss_and_gradients(tiny_model_dir, tiny_tokenizer):
    from rlhf.models.load import load_model

    batch = collate_padded(
        [tokenize_record(tiny_tokenizer, r) for r in arithmetic(4, seed=0)],
        tiny_tokenizer.pad_token_id,
    )
    eager, compiled = load_model(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    assert decoder_blocks(compiled) is not None
    names_before = [name for name, _ in compiled.named_parameters()]
    assert compile_blocks(compiled)
    assert [
        name for name, _ in compiled.named_parameters()
    ] == names_before  # checkpoints still match
    for model in (eager, compiled):
        loss, _ = lm_loss(model, batch)
        loss.backward()
    torch.testing.assert_close(
        lm_loss(compiled, batch)[0], lm_loss(eager, batch)[0], rtol=1e-4, atol=1e-4
    )
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5)


def test_online_runs_compile_the_reference_and_reward_models_too(tiny_model_dir):
    """With train.compile the frozen reference's and every reward model's blocks are marked
    for compilation (nothing compiles until the first call, so this is instant)."""
    from rlhf.models.load import load_model
    from rlhf.models.reference import ReferenceModel
    from rlhf.online.phases import compile_scoring_models
    from rlhf.rewards.composite import CompositeReward, LengthPenalty
    from rlhf.rewards.model import RewardModelReward

    def compiled(model: torch.nn.Module) -> bool:
        return all(block._compiled_call_impl is not None for block in decoder_blocks(model))

    policy, frozen = load_model(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    scorer = RewardModelReward.__new__(RewardModelReward)  # a loaded reward model, in short
    scorer.model = type("Loaded", (), {"model": load_model(str(tiny_model_dir))})()
    reward = CompositeReward({"rm": (1.0, scorer), "length": (0.1, LengthPenalty(8))})
    compile_scoring_models(ReferenceModel.frozen(frozen), reward, policy)
    assert compiled(frozen) and compiled(scorer.model.model)
    assert not compiled(policy)  # the Trainer compiles the policy itself
    lora_style = load_model(str(tiny_model_dir))
    compile_scoring_models(ReferenceModel(lora_style, disable_adapter=True), reward, lora_style)
    assert not compiled(lora_style)  # the policy's own reference: left to the Trainer


def test_train_compile_reaches_every_model_a_wrapper_holds(tiny_model_dir):
    """PPO trains the actor and the critic as one module: both get their blocks compiled (the
    wrapper itself has no config, so a lookup on it alone found no blocks and trained eager)."""
    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.models.reward import init_reward_model
    from rlhf.recipes.ppo import ActorCritic

    policy = load_model(str(tiny_model_dir))
    critic = init_reward_model(tiny_model_dir, load_tokenizer(tiny_model_dir))
    assert compile_blocks(ActorCritic(policy, critic))
    for model in (policy, critic):
        assert all(block._compiled_call_impl is not None for block in decoder_blocks(model))
    assert not compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_the_sampling_prefill_never_compiles_the_blocks(tiny_model_dir):
    """The prefill's cache keeps each layer's length as a Python int, which dynamo guards on:
    through compiled blocks it compiled a graph per layer and used up the recompile limit the
    training passes need (past it, dynamo runs them eagerly without a word)."""
    from torch._dynamo.utils import counters

    from rlhf.models.load import load_model
    from rlhf.rollout.compiled import shared_prompt_cache

    model = load_model(str(tiny_model_dir)).eval()
    assert compile_blocks(model)
    ids = torch.randint(3, 50, (2, 6)).repeat_interleave(2, dim=0)  # two prompts, twice each
    mask = torch.ones_like(ids)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        cache = shared_prompt_cache(model, ids, mask, torch.tensor([0, 0, 1, 1]), 4)
    (kv_cache,) = cache.values()  # under `cache` or `past_key_values` (cache_argument)
    assert kv_cache.get_seq_length() == 5  # all prompt columns but the last
    assert sum(counters["frames"].values()) == 0  # no frame went to dynamo


def test_compile_blocks_leaves_room_for_every_graph_a_block_needs(tiny_model_dir):
    from rlhf.models.compile import BLOCK_RECOMPILE_LIMIT
    from rlhf.models.load import load_model

    with torch._dynamo.config.patch(recompile_limit=8):
        assert compile_blocks(load_model(str(tiny_model_dir)))
        assert torch._dynamo.config.recompile_limit == BLOCK_RECOMPILE_LIMIT


def test_compiled_blocks_take_new_lengths_without_recompiling(tiny_model_dir):
    """Batches of varying length (a reward model's, a PRM's) compile one block graph for
    padded batches, whatever their length, and one for a batch without padding (transformers
    passes no mask then): before lengths were dynamic from the start, each new kind of batch
    compiled a graph for its first length and a dynamic one at its second."""
    from torch._dynamo.utils import counters

    from rlhf.models.load import load_model

    torch._dynamo.reset()
    counters.clear()
    model = load_model(str(tiny_model_dir))
    assert compile_blocks(model)
    generator = torch.Generator().manual_seed(0)
    for length, padded in ((9, True), (12, True), (15, True), (11, False), (14, False), (8, True)):
        ids = torch.randint(5, 100, (2, length), generator=generator)
        mask = torch.ones_like(ids)
        if padded:
            mask[1, length - 3 :] = 0  # right padding in the second row
        # no KV cache, as every training and scoring pass runs (rlhf.models.forward)
        model(input_ids=ids, attention_mask=mask, use_cache=False).logits.sum().backward()
    # blocks with a padding mask, blocks without, the final norm (dynamo's default made 5)
    assert counters["stats"]["unique_graphs"] == 3
