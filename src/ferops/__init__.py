"""ferops — MLOps workflow for facial-expression recognition on FER2013."""

__version__ = "0.1.0"
