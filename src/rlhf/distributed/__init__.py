"""Running a recipe over Ray workers: placement, role workers, FSDP2 ranks, weight sync.

Thin shells around the components a single-process run uses: a training rank runs the
recipe's own function; a rollout worker runs an engine of :mod:`rlhf.rollout`. Ray is an
optional extra (``pip install 'rlhf[distributed]'``) imported only when a run asks for it.
"""
