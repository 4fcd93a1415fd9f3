"""Packaging glue pyproject.toml cannot express: the YAML presets of `configs/` ship as `neco/configs`."""

from setuptools import find_packages, setup

# configs/ stays at the top of the checkout (where users look for presets); mapped into the package,
# it is installed with the wheel, so an installed neco never falls back to other settings.
setup(
    packages=[*find_packages("src"), "neco.configs"],
    package_dir={"": "src", "neco.configs": "configs"},
)
