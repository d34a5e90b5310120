"""Sphinx + MyST-NB configuration of the course's static site (``make site``; see scripts/build_site.py).

The notebooks are rendered with the outputs they carry in the repository — the outputs nbval compares every
notebook's fresh execution against in ``make test`` — so nothing is executed a second time here.
"""
project = "qtutor: quantizing large language models, hands-on"
author = "the qtutor maintainers"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # render the stored outputs; nbval has executed them already
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "alabaster"
html_title = "qtutor"
html_theme_options = {"description": "a course on quantizing LLMs, every method from scratch on a real model",
                      "page_width": "1200px", "sidebar_width": "260px"}
html_show_sourcelink = False
