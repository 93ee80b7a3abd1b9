"""Each experiment drawn from its result dict (as read from its JSON): its module here returns
the figures (``matplotlib.figure.Figure`` objects that display themselves in a notebook) and
the markdown (``markdown``: the tables and claims of docs/results.md; ``verdict``: the README's
lines). :mod:`icalign.viz.readme` fills both documents from the committed results; saving a
figure is :func:`icalign.io.save_figure`. Nothing here imports training or learner code, and
importing it never changes matplotlib's backend."""
