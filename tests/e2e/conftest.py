"""e2e fixtures: a tiny random dense checkpoint with a chat template, and one shared server for the
session (modules that need special flags start their own)."""
from __future__ import annotations

import pytest

from tests.e2e.remote import RemoteServer, add_chat_template
from tests.helpers import write_checkpoint

# seed 5 makes the tiny random model produce mostly full-length, varied outputs (good for cut/stop tests)
CKPT_SEED = 5


@pytest.fixture(scope="session")
def chat_ckpt(tmp_path_factory):
    return add_chat_template(write_checkpoint(tmp_path_factory.mktemp("e2e_ckpt") / "tiny", "dense", seed=CKPT_SEED))


@pytest.fixture(scope="session")
def server(chat_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("e2e_logs") / "server.log"
    with RemoteServer(chat_ckpt, ("--max-num-seqs", "16", "--served-model-name", "tiny"), log_path=log) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server):
    return server.openai()


@pytest.fixture(scope="session")
def http(server):
    with server.http() as c:
        yield c
