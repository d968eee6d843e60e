"""Peer-format adapters, registered in detection order (most specific first).

>>> from mmrl.data.adapters import detect_adapter
>>> detect_adapter({"image": "a.png", "problem": "How many?", "solution": "<answer> 2 </answer>"}, "x:1").name
'r1v'
"""

from mmrl.data.adapters import (
    benchmarks,  # noqa: F401
    chat,  # noqa: F401,I001
    gui,  # noqa: F401
    native,  # noqa: F401  (registers mmrl first)
    r1,  # noqa: F401
)
from mmrl.data.adapters.base import (
    ADAPTERS,
    Adapter,
    ConvertContext,
    detect_adapter,
    get_adapter,
    known_formats,
    register_adapter,
)

# ShareGPT and the generic question/answer reader match the most records, so they are tried last.
register_adapter(chat.SHAREGPT)
register_adapter(native.GENERIC)

__all__ = ["ADAPTERS", "Adapter", "ConvertContext", "detect_adapter", "get_adapter", "known_formats",
           "register_adapter"]
