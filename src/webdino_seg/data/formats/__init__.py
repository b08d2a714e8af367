"""Importing what labelling tools and public datasets export into the project's layout: train/valid image and
label-map folders plus ``classes.json``. One module per format; `writer.py` writes the layout."""
