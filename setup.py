"""Build the optional C kernels; pwconv works (on numpy/BLAS alone) when they cannot be built."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pwconv._ext._fewfilters",
            sources=["pwconv/_ext/fewfilters.c"],
            extra_compile_args=["-O3", "-std=gnu99", "-ffp-contract=fast"],
            optional=True,
        ),
        Extension(
            "pwconv._ext._scatter",
            sources=["pwconv/_ext/scatter.c"],
            extra_compile_args=["-O3", "-std=gnu99", "-ffp-contract=fast"],
            optional=True,
        ),
    ]
)
