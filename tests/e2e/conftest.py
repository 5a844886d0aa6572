"""The end-to-end suites use the service tests' tiny model repository and in-process client."""

from tests.service.conftest import _no_bnserve_environment, client, repo

__all__ = ["_no_bnserve_environment", "client", "repo"]
