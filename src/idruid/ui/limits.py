"""The UI server's limits and their defaults, in one place for the server, the job runner and
the ``idruid ui`` flags that set them (``--max-queue``, ``--job-timeout``, ``--max-request-bytes``)."""

MAX_QUEUE = 16  # jobs waiting or running at most; more get 503 with Retry-After
JOB_TIMEOUT = 300.0  # seconds of sampling before a job is stopped at its next step
MAX_REQUEST_BYTES = 64 * 1024  # larger request bodies get 413; a layout of 10 boxes is about 2 KB
KEEP_FINISHED = 64  # finished jobs remembered (their PNGs included)
