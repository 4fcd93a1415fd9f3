"""Dense evaluations of frozen patch features, as registered protocols.

Layers: `blocks/` (memory bank, search, metrics, matching, clustering, community detection,
transforms, loaders), `protocols/` (one module per protocol, each a registered `Protocol`), and
the shared pieces every protocol uses: `features` (backbone -> patch grids), `options` (typed
settings that are also CLI options), `schema` (the result file) and `runner.evaluate` (run a
protocol by name). Example:

    from neco.evaluation import EvalData, Features, evaluate
    result = evaluate("hummingbird", Features.of_model(model), EvalData(val=val, train=train)).result
"""

from neco.evaluation.features import Features
from neco.evaluation.protocol import (
    EvalData,
    Protocol,
    ProtocolOutput,
    RunSettings,
    register_protocol,
)
from neco.evaluation.registry import get_protocol, protocol_names
from neco.evaluation.runner import Evaluation, evaluate

__all__ = [
    "EvalData",
    "Evaluation",
    "Features",
    "Protocol",
    "ProtocolOutput",
    "RunSettings",
    "evaluate",
    "get_protocol",
    "protocol_names",
    "register_protocol",
]
