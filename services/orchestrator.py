"""The orchestrator's gRPC servicer (asyncio): thin, every request goes through the pipeline."""

from __future__ import annotations

from orchestrator.pipeline import Pipeline
from specgrove import codec
from specgrove.limits import DEFAULT_LIMITS, Limits
from specgrove.v1 import generate_pb2, generate_pb2_grpc


class OrchestratorServicer(generate_pb2_grpc.OrchestratorServicer):
    def __init__(self, pipeline: Pipeline, draft_name: str = "", limits: Limits = DEFAULT_LIMITS):
        self.pipeline = pipeline
        self.draft_name = draft_name
        self.limits = limits

    async def Generate(self, request, context):
        run = await self.pipeline.open(codec.call_from_pb(request, self.limits))

        async def announce(session_id: str) -> None:
            await context.send_initial_metadata(((codec.SESSION_ID_METADATA, session_id),))

        async for event in self.pipeline.run(run, context.time_remaining, announce):
            yield codec.event_to_pb(event)

    async def Abort(self, request, context):
        return generate_pb2.AbortResponse(was_running=await self.pipeline.store.cancel(request.session_id))

    async def GetModelInfo(self, request, context):
        text, config = self.pipeline.text, self.pipeline.config
        return generate_pb2.ModelInfo(target=text.name, draft=self.draft_name, vocab_size=text.vocab_size,
                                      max_context=text.max_positions, vocab_hash=text.vocab_hash,
                                      drafters=list(config.drafters), verifiers=list(config.verifiers))
