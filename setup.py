"""Build the optional C kernel; pwconv works (on numpy/BLAS alone) when it cannot be built."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pwconv._ext._fewfilters",
            sources=["pwconv/_ext/fewfilters.c"],
            extra_compile_args=["-O3", "-std=gnu99", "-ffp-contract=fast"],
            optional=True,
        )
    ]
)
