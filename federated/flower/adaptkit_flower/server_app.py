"""The ServerApp: rounds of `train` and `evaluate` over adaptkit nodes, aggregated for LoRA.

Run config (pyproject.toml lists every key): the first adapter and its base, the rule, the
nodes' training settings, optional ComPEFT coding of updates and Flower's server-side DP.
After every round the global adapter is written to `output-dir` (a PEFT directory) with a line
per round in `output-dir/../rounds.jsonl`: the nodes' metrics and the held-out perplexity.
"""

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from . import lora
from .peft_io import read_adapter, write_adapter

app = ServerApp()


class LoraStrategy(FedAvg):
    """FedAvg's sampling and messaging, with adaptkit's aggregation of the replies."""

    def __init__(self, rule, adapter_config, output_dir, **kwargs):
        super().__init__(**kwargs)
        self.rule = rule
        self.adapter_config = adapter_config
        self.output_dir = Path(output_dir) if output_dir else None
        self.current = None
        self.sent = []
        self.log = {}

    def configure_train(self, server_round, arrays, config, grid) -> Iterable[Message]:
        self.current = {name: a.numpy() for name, a in arrays.items()}
        # Kept to name the node of an error the SuperLink made (it comes from node 1).
        self.sent = list(super().configure_train(server_round, arrays, config, grid))
        return self.sent

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        target = {m.metadata.message_id: m.metadata.dst_node_id for m in self.sent}
        adapters, weights, metrics = [], [], []
        for reply in replies:
            if reply.has_error():
                node = target.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                print(f"[adaptkit] round {server_round}: node {node} failed: {reply.error.reason}", flush=True)
                continue
            arrays = next(iter(reply.content.array_records.values()))
            record = next(iter(reply.content.metric_records.values()))
            adapters.append(lora.decode({name: a.numpy() for name, a in arrays.items()}))
            weights.append(float(record[self.weighted_by_key]))
            metrics.append({k: float(v) for k, v in record.items()})
        if not adapters:
            return None, None
        merged, kept = lora.aggregate(self.rule, self.current, adapters, weights)
        total = sum(weights)
        mean = {k: sum(w * m[k] for w, m in zip(weights, metrics)) / total for k in metrics[0] if k != self.weighted_by_key}
        self.log[server_round] = {
            "round": server_round, "rule": self.rule, "updates": len(adapters), "failures": len(replies) - len(adapters),
            "examples": total, "energy_kept": kept, "train": mean,
        }
        print(f"[adaptkit] round {server_round}: {len(adapters)} updates ({self.rule}), "
              f"train loss {mean.get('train-loss', float('nan')):.4f}", flush=True)
        return ArrayRecord({name: Array(np.ascontiguousarray(v)) for name, v in merged.items()}), MetricRecord(mean)

    def configure_evaluate(self, server_round, arrays, config, grid):
        # The round's global adapter as published: after a DP wrapper's noise, which is added
        # to what aggregate_train returned.
        if self.output_dir:
            write_adapter(self.output_dir, self.adapter_config, {n: a.numpy() for n, a in arrays.items()})
            self.append(self.log.get(server_round, {"round": server_round}))
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None and "eval-loss" in metrics:
            loss = float(metrics["eval-loss"])
            print(f"[adaptkit] round {server_round}: global adapter held-out loss {loss:.4f}, "
                  f"perplexity {math.exp(loss):.3f}", flush=True)
            self.append({"round": server_round, "eval": {"loss": loss, "perplexity": math.exp(loss)}})
        return metrics

    def append(self, line):
        if self.output_dir:
            with open(self.output_dir.parent / "rounds.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")


def settings(cfg):
    """The nodes' ConfigRecord: what adaptkit nodes read (records.rs documents the keys)."""
    config = {"adapter-config": "", "base": str(cfg["base"])}
    for key in ("steps", "batch", "seq"):
        if int(cfg[key]) > 0:
            config[key] = int(cfg[key])
    for key in ("lr", "density"):
        if float(cfg[key]) > 0:
            config[key] = float(cfg[key])
    return config


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rule = str(cfg["rule"])
    if rule not in lora.RULES:
        raise ValueError(f"rule '{rule}': one of {', '.join(lora.RULES)}")
    if not cfg["initial-adapter"] or not cfg["base"]:
        raise ValueError("set initial-adapter and base (adaptkit flower-init prints both)")
    adapter_config, tensors = read_adapter(cfg["initial-adapter"])
    config = settings(cfg)
    config["adapter-config"] = json.dumps(adapter_config)
    dp = float(cfg["dp-noise-multiplier"]) > 0
    if dp and (rule == "fedavg" or "density" in config):
        # The wrapper clips each reply's change and noises the aggregate: its guarantee needs
        # the aggregate to be the mean of what was clipped (a linear rule, dense replies).
        raise ValueError("server-side DP needs rule = ffa or fedit and dense updates (density = 0)")
    if "density" in config and rule != "fedavg":
        # A coded LoRA pair is rewritten (same product, other factors): only ΔW averaging reads it right.
        raise ValueError("ComPEFT-coded updates (density > 0) need rule = fedavg")
    nodes = int(cfg["min-nodes"])
    strategy = LoraStrategy(
        rule, adapter_config, cfg["output-dir"],
        fraction_train=float(cfg["fraction-train"]), fraction_evaluate=float(cfg["fraction-evaluate"]),
        min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes,
    )
    outer = strategy
    if dp:
        outer = DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=float(cfg["dp-noise-multiplier"]),
            clipping_norm=float(cfg["dp-clipping-norm"]), num_sampled_clients=nodes,
        )
    started = time.time()
    outer.start(
        grid=grid,
        initial_arrays=ArrayRecord({name: Array(v) for name, v in tensors.items()}),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
        train_config=ConfigRecord(config),
        evaluate_config=ConfigRecord(config),
    )
    print(f"[adaptkit] done in {time.time() - started:.1f} s; global adapter in {cfg['output-dir'] or '(not written)'}", flush=True)
