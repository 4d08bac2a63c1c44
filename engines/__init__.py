"""Edit engines: each render method (Prompt-to-Prompt, ...) is one named class behind one interface.

An engine declares what it needs (a generated source, a fetched real image, a mask), draws a pair's
candidates as typed records (`engines.record.CandidateRecord`), renders a batch of them, regenerates one
bit for bit and states its UNet work per candidate (`engines.base.EditEngine`). The render stage, the
filter, `editgen pair` and regeneration hold no engine-specific code: they go through the interface.
Adding an engine is one line here (docs/architecture.md, "How to add an engine").

This module stays import-light (no torch): the config check and the stage graph read the registry.
"""

#: Engine name -> "module:Class". The name is `render.engine`'s value and the record's `format` prefix.
REGISTRY: dict[str, str] = {
    "p2p": "editgen.engines.p2p:P2PEngine",
    "sdedit": "editgen.engines.sdedit:SDEditEngine",
    "instruct_model": "editgen.engines.instruct_model:InstructModelEngine",
    "inpaint": "editgen.engines.inpaint:InpaintEngine",
}
