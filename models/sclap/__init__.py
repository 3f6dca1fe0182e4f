"""sCLAP models: spatial front end, temporal audio encoder, classical DOA baseline, the sCLAP model."""
