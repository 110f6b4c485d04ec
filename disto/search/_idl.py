"""The search package's Thrift IDL (``search.thrift``), loaded once."""
from __future__ import annotations

import os
from typing import Any

import thriftpy2

IDL_PATH = os.path.join(os.path.dirname(__file__), "search.thrift")
S: Any = thriftpy2.load(IDL_PATH, module_name="disto_search_thrift")
