"""The built-in demo model: a tiny SDXL-class pipeline trained on coloured shapes (see ``train.py``)."""
