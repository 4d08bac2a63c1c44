"""Edits of the render model's cross-attention (TIME, erase, debias, forget); see docs/model_edits.md.

``spec`` (pydantic only, imported by the config), ``targets`` (edit -> embedding rows), ``solve`` (the
closed form on every cross-attention layer, then the forget edits), ``forget`` (Forget-Me-Not's attention
re-steering), ``cli`` (``editgen edit-model`` and the shared flags).
Nothing heavy is imported here, so loading a config never imports torch.
"""
