"""Settings for a serve process whose transfers can be held mid-transaction, to kill it there.

The project's settings plus one database execute wrapper: while the file
``hold`` exists in ``$TRANSFER_HOLD_DIR``, the first UPDATE of an account
balance creates ``held`` next to it and then blocks until the process is
killed. The transfer has by then claimed its Idempotency-Key and locked its
accounts, and its transaction is still open.
"""

import os
import time
from pathlib import Path

from django.db.backends.signals import connection_created

from realtime.settings import *  # noqa: F403

_HOLD_DIR = Path(os.environ["TRANSFER_HOLD_DIR"])


def _hold_balance_update(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
    if sql.startswith('UPDATE "transfers_account"') and (_HOLD_DIR / "hold").exists():
        (_HOLD_DIR / "held").touch()
        while True:
            time.sleep(1)
    return execute(sql, params, many, context)


def _install_hold(sender, connection, **kwargs):  # type: ignore[no-untyped-def]
    connection.execute_wrappers.append(_hold_balance_update)


connection_created.connect(_install_hold, dispatch_uid="tests.fault_settings.hold")
