"""Gossipsub v1.1 peer-scoring parameters from ``[mesh]``.

- P4 (invalid messages) is the penalty that matters: each invalid message costs
  ``score_invalid_weight`` and the counter decays slowly, so a peer that keeps
  sending invalid messages falls below the graylist threshold and is ignored.
- P2 (first deliveries) rewards useful peers a little, capped.
- P3 (mesh delivery deficits) stays off: it would penalise quiet peers, and
  volume is never penalised (the server forwards everything).
- P6 (application score) gives the server a large bonus, so no amount of
  forwarding or any transient penalty can graylist it.
"""

from __future__ import annotations

from united_core.p2p.options import ScoreSettings

from .config import Config


def score_settings(config: Config) -> ScoreSettings:
    """The runtime's scoring settings from ``[mesh]`` (the server's bonus is set at run
    time with ``set_app_scores``, once the member list says who the server is)."""
    # The P2 decay and the P6 weight are not settings: ScoreSettings' defaults apply.
    return ScoreSettings(
        first_delivery_weight=config.score_first_delivery_weight,
        first_delivery_cap=config.score_first_delivery_cap,
        invalid_weight=config.score_invalid_weight,
        invalid_decay=config.score_invalid_decay,
        gossip_threshold=config.gossip_threshold,
        publish_threshold=config.publish_threshold,
        graylist_threshold=config.graylist_threshold,
    )
