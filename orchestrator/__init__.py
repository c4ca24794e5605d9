"""distillray's orchestrator: the stages, the search, the records and the commands."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("distillray")  # pyproject.toml's version, as installed
except PackageNotFoundError:  # a checkout on the path, never installed
    __version__ = "0+unknown"
