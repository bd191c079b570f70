"""`contract_run`: the contract run of each method in turn (tests/method_contract.py).

One run is alive at a time: compiled train steps are large, and a session that kept every
method's would run out of memory.
"""
import gc

import jax
import pytest

from ddfp_jax.methods import METHODS
from method_contract import ContractRun


@pytest.fixture(scope="module", params=sorted(METHODS))
def contract_run(request, tmp_path_factory):
  run = ContractRun(request.param, tmp_path_factory.mktemp("contract"))
  yield run
  del run
  gc.collect()
  jax.clear_caches()
