"""Ray Data's console logging for a local run (pipelines/ray_data_logging.yaml): warnings and errors
reach the console, minus the notice that progress bars are off (mmtrain turns them off on purpose
and prints its own progress)."""

from __future__ import annotations

import logging

NOTICES = ("Progress bars disabled", "Truncating long operator name")


class DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOTICES)
