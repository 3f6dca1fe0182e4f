"""sCLAP data: synthetic sounds, FOA spatialisation, the stClotho-style generator and loader."""
