"""The stage graph: ingest -> [fetch] -> instruct -> render -> filter -> [judge] -> shard.

One thin class per stage (`stages/<name>.py`); the runner finds them by name through
`pipeline.registry`, so a stage whose module is absent is simply not in the graph. Adding a stage is one
line here (see docs/architecture.md). A conditional stage (fetch: only with render.source=real; judge:
only with judge.enabled) says so
in `Stage.active(cfg)`; without it its neighbours link directly.
"""

#: Stage name -> "module:Class", in data-flow order.
REGISTRY: dict[str, str] = {
    "ingest": "editgen.stages.ingest:IngestStage",
    "fetch": "editgen.stages.fetch:FetchStage",
    "instruct": "editgen.stages.instruct:InstructStage",
    "render": "editgen.stages.render:RenderStage",
    "filter": "editgen.stages.filter:FilterStage",
    "judge": "editgen.stages.judge:JudgeStage",
    "shard": "editgen.stages.shard:ShardStage",
}
