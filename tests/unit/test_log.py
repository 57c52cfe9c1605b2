"""Task loggers carry the running task's name and id."""

from __future__ import annotations

import io
import logging

from celeriac import Celeriac, get_task_logger
from celeriac.app.log import setup_logging


def test_task_logger_records_carry_name_and_id(app: Celeriac) -> None:
    stream = io.StringIO()
    handler = setup_logging("INFO", stream=stream)
    logger = get_task_logger("tests.log.task")
    try:

        @app.task(name="t.logs")
        def logs() -> None:
            logger.info("inside")

        result = logs.apply(task_id="tid-123")
        logger.info("outside")
    finally:
        logging.getLogger().removeHandler(handler)
    assert result.successful()
    lines = stream.getvalue().splitlines()
    assert any("t.logs[tid-123]: inside" in line for line in lines)
    assert any(line.endswith("outside") and "[tid" not in line for line in lines)
