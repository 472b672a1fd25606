"""train-vae and train-ar: the shared loop (``loop``) and what differs between the two
trainings (``vae``, ``ar``)."""

from __future__ import annotations

from spherear.errors import SpherearError


class TrainingError(SpherearError):
    """A run that cannot start or continue; the message says why and what to change."""
