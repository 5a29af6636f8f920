"""Aggregating adaptkit nodes' adapters the way LoRA needs (methods.md §8.1-8.2).

Averaging A and B separately (FedIT, what Flower's plain FedAvg does to PEFT tensors) is
biased: mean(B)·mean(A) ≠ mean(B·A). `fedavg` averages the true changes ΔW_i = B_i·A_i and
factors the mean back to the adapter's rank r with a truncated SVD (B = U√S, A = √S·Vᵀ);
`ffa` (FFA-LoRA: A frozen at its shared random start, only B trained) averages B, which is
exact because Σ p_i·B_i·A = (Σ p_i·B_i)·A. Tensors that are not LoRA pairs ((IA)³ vectors,
soft prompts) are averaged element by element under every rule.
"""

import numpy as np

RULES = ("fedavg", "ffa", "fedit")


def decode(arrays):
    """An adaptkit node's reply arrays as {name: float32 array}: dense arrays as they are,
    ComPEFT-coded ones (name#mask, name#signs, name#scale) expanded to ±scale or 0."""
    out = {}
    for name, value in arrays.items():
        if "#" not in name:
            out[name] = value.astype(np.float32)
    for name in arrays:
        if not name.endswith("#scale"):
            continue
        base = name[: -len("#scale")]
        header = arrays[name]
        scale, shape = float(header[0]), tuple(int(d) for d in header[1:])
        count = int(np.prod(shape))
        kept = np.unpackbits(arrays[f"{base}#mask"].astype(np.uint8))[:count].astype(bool)
        signs = np.unpackbits(arrays[f"{base}#signs"].astype(np.uint8))[: int(kept.sum())]
        values = np.zeros(count, dtype=np.float32)
        values[kept] = np.where(signs == 1, scale, -scale)
        out[base] = values.reshape(shape)
    return out


def pairs(names):
    """(prefix, A name, B name) of every LoRA pair among `names`."""
    out = []
    for a in sorted(names):
        if a.endswith("lora_A.weight"):
            prefix = a[: -len("lora_A.weight")]
            b = prefix + "lora_B.weight"
            if b not in names:
                raise ValueError(f"'{a}' has no matching '{b}'")
            out.append((prefix, a, b))
    return out


def aggregate(rule, current, adapters, weights):
    """The next global adapter from the nodes' `adapters` ({name: array} each) with `weights`
    (their example counts); `current` is the global adapter they trained from. Also returns the
    smallest share of a site's ‖ΔW‖² the rank-r factors keep (1 without truncation)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule '{rule}' ({', '.join(RULES)})")
    for i, adapter in enumerate(adapters):
        if set(adapter) != set(current):
            raise ValueError(f"update {i} has tensors {sorted(set(adapter) ^ set(current))} the global adapter does not (or lacks them)")
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    mean = {name: sum(w * a[name].astype(np.float64) for w, a in zip(p, adapters)) for name in current}
    out = {name: v.astype(np.float32) for name, v in mean.items()}
    kept = 1.0
    for _, a, b in pairs(set(current)):
        if rule == "ffa":
            out[a] = current[a]
        elif rule == "fedavg":
            rank = current[a].shape[0]
            delta = sum(w * (x[b].astype(np.float64) @ x[a].astype(np.float64)) for w, x in zip(p, adapters))
            u, s, vt = np.linalg.svd(delta, full_matrices=False)
            energy = float((s**2).sum())
            if energy > 0:
                kept = min(kept, float((s[:rank] ** 2).sum()) / energy)
            root = np.sqrt(s[:rank])
            out[b] = (u[:, :rank] * root).astype(np.float32)
            out[a] = (root[:, None] * vt[:rank]).astype(np.float32)
    return out, kept
