"""Prompt-to-Prompt rendering for editgen (diffusers-native, SD 1.x/2.x and SDXL).

Main entry points:

* :func:`p2p.generate.load_pipeline` -> :class:`p2p.generate.P2PPipeline` (once per render actor)
* :func:`p2p.generate.render` / :func:`p2p.generate.render_one` with :class:`p2p.generate.RenderRequest`
* :func:`p2p.candidates.sample_requests` (a pair's candidate draws) and its JSON form
  (:func:`p2p.candidates.request_params`); the P2P engine (engines/p2p.py) turns them into records
* :func:`p2p.real.prepare_source` / :func:`p2p.real.render_from_source` for real photographs
* :class:`p2p.controls.EditControl`, :class:`p2p.controls.BlendConfig`, :func:`p2p.seq_align.decide_mode`

Heavy imports (torch, diffusers) happen in the submodules, so ``import p2p`` stays cheap.
"""

__all__ = ["candidates", "controls", "edit_diff", "generate", "local_blend", "processors", "real", "seq_align"]
