"""The verifier worker called directly, as a drafter's round sees it (``drafter.round.VerifierPort``):
the in-process engine's verifier, and a served worker's own (``serve worker``: the drafter and the
verifier in one process verify without a hop)."""

from __future__ import annotations

from drafter.tree_growth import tree_from_levels
from specgrove import telemetry
from specgrove.round import Round, RoundTiming, Verdict
from verifier.worker import VerifierWorker


class LocalVerifier:
    """No transport: the tree is drawn level by level, then verified in one pass; the features
    and the verdict come back as tensors. It takes no guesses: guessing pays only where drawing
    them leaves the verifier's pass alone, which one process's compute thread does not."""

    in_process = True

    def __init__(self, worker: VerifierWorker):
        self.worker = worker

    def features(self, r: Round, start: int, timing: RoundTiming):
        return start, self.worker.prefix_features(r.session_id, list(r.context), start, r.run)

    def verify(self, r: Round, levels, timing: RoundTiming) -> Verdict:
        tree = tree_from_levels(list(levels))  # every level, then one pass
        with telemetry.tracer().start_as_current_span("verify pass"):
            verdict = self.worker.verify(r, tree)
        timing.sessions, timing.pass_tokens = self.worker.load
        return verdict

    def guess(self, ask):
        raise NotImplementedError("a verifier in this process takes no guesses")
