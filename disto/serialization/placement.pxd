# Built with Cython (setup.py) from placement.py, which stays the source and the pure-Python fallback (disto/native.py).
