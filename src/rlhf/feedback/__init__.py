"""The human-feedback web app: people compare, rank, rate, approve and edit model responses.

``rlhf feedback serve`` runs it (see docs/feedback.md). Layers, each usable on its own:

* :mod:`~rlhf.feedback.db` — tables and schema migrations (SQLite in WAL mode or PostgreSQL);
* :mod:`~rlhf.feedback.campaigns` — campaign sources (JSON Lines as ``rlhf sample`` writes);
* :mod:`~rlhf.feedback.tasks` — the task types: label checking, gold answers, export records;
* :mod:`~rlhf.feedback.agreement` — Krippendorff's alpha;
* :mod:`~rlhf.feedback.service` — accounts, assignment, labels, statistics, export;
* :mod:`~rlhf.feedback.app` — the FastAPI app: JSON API and the annotator and admin pages.

It depends on :mod:`rlhf.data` only; a model to sample from is passed in as a function.
"""
