from tests.processes import private_redis, web_processes  # noqa: F401
