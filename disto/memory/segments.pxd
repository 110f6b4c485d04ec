# Built with Cython (setup.py) from segments.py, which stays the source and the pure-Python fallback (disto/native.py).
