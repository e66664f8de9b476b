"""nanogpt_plus: the machinery behind the scripts at the root of the checkout and data/*/prepare.py, a module for
each thing it holds (README.md lists them). The model itself is model.py, at the root."""
