"""Understudy training runtime: fine-tunes a causal LM on (prompt, response) pairs.

Run as ``python -m understudy_trainer train ...``; progress is reported on stdout as the JSON
lines described in docs/progress-protocol.md.
"""

__version__ = "0.1.0"
