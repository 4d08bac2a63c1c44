"""Prompt-to-Prompt rendering for editgen (diffusers-native, SD 1.x/2.x and SDXL).

Main entry points:

* :func:`p2p.generate.load_pipeline` -> :class:`p2p.generate.P2PPipeline` (once per render actor)
* :func:`p2p.generate.render` / :func:`p2p.generate.render_one` with :class:`p2p.generate.RenderRequest`
* :func:`p2p.candidates.sample_candidates`, :func:`p2p.candidates.render_records`,
  :func:`p2p.regenerate.regenerate` for JSON-able candidate records
* :class:`p2p.controls.EditControl`, :class:`p2p.controls.BlendConfig`, :func:`p2p.seq_align.decide_mode`

Heavy imports (torch, diffusers) happen in the submodules, so ``import p2p`` stays cheap.
"""

__all__ = ["candidates", "controls", "edit_diff", "generate", "local_blend", "processors", "seq_align"]
