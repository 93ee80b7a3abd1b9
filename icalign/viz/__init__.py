"""Figures. Every figure function takes a result dict (as read from its JSON) and returns a
``matplotlib.figure.Figure``; saving is :func:`icalign.io.save_figure`. Nothing here imports
training or learner code, and importing it never changes matplotlib's backend."""
