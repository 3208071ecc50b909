"""PAR reward service: scores (prompt, response) pairs with a reward model and shapes them."""

__version__ = "0.1.0"
