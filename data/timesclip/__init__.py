"""TimesCLIP data: the fields CSV format, its loader and datasets
(``dataset``) and the crop-physics generator that writes it (``generate``)."""
