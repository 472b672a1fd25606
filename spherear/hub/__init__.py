"""Publishing a run as a Hugging Face model repo: ``card`` writes the model card, ``stage``
puts exactly what is published in one folder and scans it for tokens, ``push`` uploads it
(or, for a dry run, keeps it). Loading back (``spherear.from_pretrained``, ``hf://``
addresses) lives with the loaders, in ``spherear.checkpoints`` and ``spherear.hub_files``.
"""

from __future__ import annotations

from spherear.errors import SpherearError


class PushError(SpherearError):
    """A run that cannot be published as it is; the message says what to change."""
