"""The ClientApp Flower's app metadata requires.

adaptkit nodes (`adaptkit flower-node`) speak the Fleet API themselves and never load this
module. A Python SuperNode that joins by mistake loads it and answers every message with an
error that says what to run instead, so a round fails loudly rather than averaging garbage.
"""

from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(message, context):  # noqa: ARG001 - Flower's signature
    raise RuntimeError("this federation's nodes are adaptkit processes: run `adaptkit flower-node`")


@app.evaluate()
def evaluate(message, context):  # noqa: ARG001
    raise RuntimeError("this federation's nodes are adaptkit processes: run `adaptkit flower-node`")
