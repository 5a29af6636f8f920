"""Golden (ε, δ) figures for adaptkit's privacy accountant (core/src/federated/privacy.rs),
computed by Google's dp-accounting (PyPI `dp-accounting`): its RDP accountant for `rounds`
compositions of the Poisson-subsampled Gaussian mechanism, over the same RDP orders.

    python3 -m pip install dp-accounting==0.6.0
    python3 tests/reference/make_dp_epsilons.py > tests/reference/golden/dp_epsilons.json
"""
import json

import dp_accounting
from dp_accounting import rdp

SETTINGS = [
    # (sample rate q, noise multiplier z, rounds, delta)
    (1.0, 1.0, 1, 1e-5),
    (1.0, 2.0, 10, 1e-5),
    (0.5, 1.1, 50, 1e-5),
    (0.1, 1.0, 100, 1e-6),
    (0.01, 1.1, 1000, 1e-5),
    (0.01, 4.0, 10000, 1e-5),
    (0.05, 0.8, 200, 1e-5),
    (0.2, 2.5, 30, 1e-3),
]

cases = []
for q, z, rounds, delta in SETTINGS:
    accountant = rdp.RdpAccountant()  # its default orders
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    accountant.compose(event)
    cases.append({"q": q, "z": z, "rounds": rounds, "delta": delta,
                  "epsilon": accountant.get_epsilon(delta)})
print(json.dumps({"source": "dp-accounting " + getattr(dp_accounting, "__version__", "0.6.0"),
                  "cases": cases}, indent=1))
