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

from collections.abc import Callable

from united_core.members import MemberSet

from .config import Config


def score_params_factory(config: Config, members: Callable[[], MemberSet]) -> Callable[[], object]:
    """A factory run on the trio side (it imports py-libp2p's ScoreParams there)."""

    def build() -> object:
        from libp2p.peer.id import ID
        from libp2p.pubsub.score import ScoreParams, TopicScoreParams

        def app_score(peer: ID) -> float:
            trusted = members().trusted_peer_ids
            return config.server_score_bonus if peer.to_base58() in trusted else 0.0

        return ScoreParams(
            p2_first_message_deliveries=TopicScoreParams(
                weight=config.score_first_delivery_weight,
                cap=config.score_first_delivery_cap,
                decay=0.9,
            ),
            p4_invalid_messages=TopicScoreParams(
                weight=config.score_invalid_weight, cap=1e6, decay=config.score_invalid_decay
            ),
            p6_appl_slack_weight=1.0,
            app_specific_score_fn=app_score,
            gossip_threshold=config.gossip_threshold,
            publish_threshold=config.publish_threshold,
            graylist_threshold=config.graylist_threshold,
        )

    return build
