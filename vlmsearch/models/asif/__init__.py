"""ASIF: two unimodal encoders made multimodal through a set of anchor pairs.

relative.py (relative representations), anchors.py (the anchor-set files), build.py
(building anchor sets), encoder.py (the ``asif`` encoder kind)."""
