"""TimesCLIP data: the layouts it reads (``formats``: the project's
``fields.csv`` and the crop-yield port's per-year CSVs), the table and
datasets over them (``dataset``) and the crop-physics generator that writes
``fields.csv`` (``generate``)."""
