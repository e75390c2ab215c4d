"""Online RL components: the phases an online recipe composes, each a plain tested function.

An online recipe (``rlhf.recipes.grpo``, ``ppo``, ``rloo``, ...) reads top to bottom as
phases: prompts → samples (:mod:`rlhf.rollout`) → rewards (:func:`rlhf.rewards.base.
score_rollout`) → reference log-probs and the KL to π_ref (:func:`phases.reference_phase`) →
advantages (:mod:`rlhf.losses.advantages`, the algorithm's own line) → :class:`experience.
Experience`, then ``ppo_epochs`` passes of minibatches through the one Trainer
(:class:`experience.ExperienceBuffer` is its loader) with a loss from :mod:`loss`. Nothing
here branches on the algorithm: what differs lives in the algorithm's file.
"""
