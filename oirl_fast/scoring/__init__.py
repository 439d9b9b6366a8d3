"""The scoring core: options, the Scorer and its routes, candidates, input and output records, and the
local (``stream``) and Dask (``dask``) runners.  See "Scoring architecture" in docs/design/architecture.md."""
