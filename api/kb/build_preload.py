"""Imported once by the build forkserver (api/kb/build_child.py `build_context`), so that every build child
forked from it starts with the engine, scikit-learn and the compiled query kernels already loaded.

Measured on a 90-entry KB (`kefu build`, pyinstrument): of 13 s, importing scikit-learn took 3.2 s, the
engine 1.3 s and the kernels' compile or cache load 0.5 s; a spawned child paid all of it on every build.
Nothing here starts a thread pool or an OpenMP team (the sentence encoder is not loaded): a fork copies
only the forking thread.
"""

from __future__ import annotations

import scipy.sparse  # noqa: F401
import sklearn.linear_model  # noqa: F401

import engine
import engine.build  # noqa: F401
from engine import kernels

kernels.warm_up()
