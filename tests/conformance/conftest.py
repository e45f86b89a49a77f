"""The conformance suite: the same tests for every source and every sink (see README.md,
"Adding an endpoint")."""

from tests.conformance.ends import env as env
