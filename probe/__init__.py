"""The probe model: InstructPix2Pix fine-tuned on a run's own shards (`editgen train-probe`, docs/probe.md).

`base.py` loads the run's render model and widens its UNet as InstructPix2Pix did; `data.py` streams the
train split through the project's loader in an order fixed by seed and step; `step.py` is one training
step (latents, noise, conditioning dropout, loss); `checkpoints.py` saves and finds resumable state;
`train.py` runs the loop and writes the diffusers pipeline folder and `probe.json`.
"""
