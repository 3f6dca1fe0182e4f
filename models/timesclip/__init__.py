"""TimesCLIP model: chart rasteriser (``render``), the two views' encoders
(``encoders``), the stage-1 model (``model``) and the stage-2 yield head
(``yield_head``)."""
