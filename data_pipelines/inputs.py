"""Checks a builder runs on its input samples before any model loads or any request is sent.

>>> from mmrl.data.sample import Sample
>>> check_image_files([Sample(id="a", prompt="q", answer="1", images=["/no/such.png"], meta={"source": "d.jsonl:3"})])
Traceback (most recent call last):
...
mmrl.errors.DataError: d.jsonl:3: sample a: image 0 /no/such.png: file not found; fix the path in the data file or remove the record
"""

from __future__ import annotations

from collections.abc import Sequence

from mmrl.data.sample import Sample
from mmrl.errors import DataError

# A builder's new-token budget is bounded like `mmrl serve`'s: a typo of a few zeros must be an error, not a build
# that runs for hours and fills the memory with one reply's cache.
MAX_NEW_TOKENS = 32768
# Seeds fit every generator on the way (torch takes 64 bits; a stage adds its attempt number): a bigger one was a
# traceback from the sampler, mid-build.
MAX_SEED = 2**32 - 1


def check_image_files(samples: Sequence[Sample]) -> None:
    """Every local image file the samples name exists (a missing one found mid-build would stop the build after
    the model loaded and the cache filled partly; here it is one line naming the record). Only existence is
    checked: opening every image of a large dataset up front costs as much as the build's own decoding."""
    from mmrl.data.vision import image_source_path

    missing = [(s, i, p) for s in samples for i, src in enumerate(s.images)
               if (p := image_source_path(src)) is not None and not p.is_file()]
    if missing:
        sample, index, path = missing[0]
        more = f" (and {len(missing) - 1} more missing images)" if len(missing) > 1 else ""
        where = sample.meta.get("source") or "data"
        raise DataError(f"{where}: sample {sample.id}: image {index} {path}: file not found{more}; fix the path in "
                        "the data file or remove the record")
