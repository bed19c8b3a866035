"""One module per dashboard family, over the shared frame in dashboards/frame.py; build.py puts them together."""
