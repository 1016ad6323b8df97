from tests.lifecycle.test_exports import models  # noqa: F401  (the Keras models the export tests push)
from tests.processes import private_postgres, private_redis, web_processes  # noqa: F401
