"""The book's helpers: figures (``plotting``), attention-map analysis (``attention_maps``) and the
context task of the what-ESA-learns chapter (``context_task``). They use the model library
(:mod:`esa_tutorial.nn`); the library never uses them.
"""
