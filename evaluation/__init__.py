"""`editgen evaluate`: a model trained on the data, measured the way InstructPix2Pix and MagicBrush did
(docs/evaluate.md): the eval set's readers (`data.py`), the image-guidance sweep (`sweep.py`), the metrics
over its outputs (`metrics.py`, CLIP and DINOv2 through filters.pairs) and the report (`report.py`)."""
