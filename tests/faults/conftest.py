from tests.processes import private_postgres, private_redis, web_processes  # noqa: F401
