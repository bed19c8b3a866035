"""Apache Beam composite transforms and the pipelines built from them."""
