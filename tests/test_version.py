from importlib.metadata import version

import spherear
from spherear.version import __version__


def test_one_version_for_the_package_and_its_metadata():
    assert spherear.__version__ == __version__ == version("spherear")
