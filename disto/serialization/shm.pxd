# Built with Cython (setup.py) from shm.py, which stays the source and the pure-Python fallback (disto/native.py).
