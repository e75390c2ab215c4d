"""The feedback app's HTTP side, assembled by :func:`rlhf.feedback.app.create_app`.

* :mod:`~.state` — the shared state: database, transactions, the model's sampler;
* :mod:`~.middleware` — cross-site refusal, security headers, body limits;
* :mod:`~.deps` — FastAPI dependencies: the state, and the caller (who is asking);
* :mod:`~.schemas` — the pieces of request and answer models several routers share;
* one router per concern: :mod:`~.pages`, :mod:`~.health`, :mod:`~.auth` (login, logout,
  me), :mod:`~.annotate` (an annotator's campaigns, items, labels, skips), :mod:`~.chat`
  (chat campaigns' turns), :mod:`~.users`, :mod:`~.campaigns` and :mod:`~.loops` (admin) and
  :mod:`~.export` (admin).

Every JSON route declares its answer's model, so ``/docs`` and ``app.openapi()`` describe
every answer, the refusals (``{"detail": message}``) included.
"""
