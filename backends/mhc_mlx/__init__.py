from mhc_core import __version__
