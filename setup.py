"""Package discovery for the folder -> `edgehub.<folder>` mapping in pyproject.toml.

setuptools' declarative `packages.find` does not follow `package-dir` mappings, so the list is
found here from the folders: every subpackage ships, and none has to be named by hand
(tests/system/test_wheel.py builds the wheel and imports every module from it).
"""

from setuptools import find_packages, setup

PARTS = ("agent", "converters", "hub", "protocol", "zoo")

setup(packages=[f"edgehub.{name}" for part in PARTS
                for name in (part, *(f"{part}.{sub}" for sub in find_packages(part)))],
      # The console's page templates (hub/console/templates/) ship with the package.
      package_data={"edgehub.hub.console": ["templates/*.html"]})
