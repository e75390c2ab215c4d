"""The human-feedback web app: people compare, rank, rate, approve and edit model responses,
and judge solutions step by step.

``rlhf feedback serve`` runs it (see docs/feedback.md). Layers, each usable on its own:

* :mod:`~rlhf.feedback.db` — tables and schema migrations (SQLite in WAL mode or PostgreSQL);
* :mod:`~rlhf.feedback.campaigns` — campaign sources (JSON Lines as ``rlhf sample`` writes);
* :mod:`~rlhf.feedback.tasks` — the task types: label checking, gold answers, export records;
* :mod:`~rlhf.feedback.agreement` — Krippendorff's alpha;
* :mod:`~rlhf.feedback.service` — accounts, campaigns, assignment, labels, chat, statistics,
  export: one module per aggregate, no HTTP;
* :mod:`~rlhf.feedback.api` — the HTTP side: one FastAPI router per concern, the middleware,
  the dependencies (shared state, who is asking) and the answer models;
* :mod:`~rlhf.feedback.app` — ``create_app``, which assembles them into the FastAPI app.

It depends on :mod:`rlhf.data` only; a model to sample from is passed in as a function.
"""
