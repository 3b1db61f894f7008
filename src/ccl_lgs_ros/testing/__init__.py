"""Test support, not product code: synthetic scenes with ground truth for tests, benchmarks and
the demo. :mod:`.synth` (procedural rooms rendered to a capture folder, ``ccl-lgs synth``),
:mod:`.toy` (a capture rendered from random Gaussians), :mod:`.blobs` (a query index of Gaussian
blobs without training). Nothing in the library imports this package; the command line, the
demo and the tests do.
"""
