"""Per-class precision/recall/F1 and the confusion matrix of `hvdtrain eval`, as numbers, as text
that fits 80 columns, and as a PNG. Pure Python (the matrix comes from the inference process);
three lines of arithmetic per class did not justify importing scikit-learn into the launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WIDTH = 80
LABEL = 14  # characters of a row's "index name" label
CELL = 5  # a count of at most 4 characters and a space


def per_class(confusion: list[list[int]], names: list[str]) -> list[dict[str, Any]]:
    """Precision, recall and F1 of each class (rows: true class, columns: predicted); None where
    undefined (a class never predicted, or with no samples)."""
    out = []
    for i, name in enumerate(names):
        hit = confusion[i][i]
        predicted = sum(row[i] for row in confusion)
        support = sum(confusion[i])
        p = hit / predicted if predicted else None
        r = hit / support if support else None
        f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else (
            0.0 if p is not None and r is not None else None)
        out.append({"class": name, "index": i, "precision": p, "recall": r, "f1": f1,
                    "support": support})
    return out


def short_count(n: int) -> str:
    """At most 4 characters: 999, 1.2k, 12k, 120k, 1.2M, 12M..."""
    if n < 1000:
        return str(n)
    v = float(n)
    for unit in "kMGT":
        v /= 1000
        if v < 9.95:
            return f"{v:.1f}{unit}"
        if v < 999.5:
            return f"{v:.0f}{unit}"
    return f"{v:.0f}T"


def shown_classes(confusion: list[list[int]], limit: int) -> list[int]:
    """All classes when they fit, else the ``limit`` with the most errors (either way), in
    index order."""
    n = len(confusion)
    if n <= limit:
        return list(range(n))
    errors = [sum(confusion[i]) + sum(row[i] for row in confusion) - 2 * confusion[i][i]
              for i in range(n)]
    return sorted(sorted(range(n), key=lambda i: (-errors[i], i))[:limit])


def confusion_lines(confusion: list[list[int]], names: list[str]) -> list[str]:
    """The matrix as text of at most WIDTH columns: rows are true classes, columns predicted
    (by index); with too many classes, the ones with the most errors and a line saying so."""
    keep = shown_classes(confusion, (WIDTH - LABEL) // CELL)
    head = "true \\ pred".ljust(LABEL) + "".join(f"{i:>{CELL}}" for i in keep)
    lines = [head]
    for i in keep:
        label = f"{i} {names[i]}" if names[i] != str(i) else str(i)
        label = label if len(label) < LABEL else label[:LABEL - 2] + "~"
        lines.append(label.ljust(LABEL)
                     + "".join(f"{short_count(confusion[i][j]):>{CELL}}" for j in keep))
    if len(keep) < len(confusion):
        lines.append(f"({len(confusion) - len(keep)} classes with fewer errors left out; "
                     "all of them: --json, -o PNG)")
    return lines


def per_class_lines(rows: list[dict[str, Any]]) -> list[str]:
    def pct(v: float | None) -> str:
        return "   -" if v is None else f"{100 * v:5.1f}%"

    width = min(max([len(r["class"]) for r in rows] + [5]), 30)
    lines = [f"{'class':<{width}}  precision  recall      F1  support"]
    lines += [f"{r['class'][:width]:<{width}}  {pct(r['precision']):>9}  {pct(r['recall']):>6}"
              f"  {pct(r['f1']):>6}  {r['support']:>7}" for r in rows]
    return lines


def confusion_png(confusion: list[list[int]], names: list[str], path: Path) -> None:
    """The whole matrix as an image, counts in the cells while they stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(4 + 0.45 * n, 40)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), labels=names, rotation=90, fontsize="small")
    ax.set_yticks(range(n), labels=names, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        top = max(max(row) for row in confusion) or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, short_count(confusion[i][j]), ha="center", va="center",
                        fontsize="small", color="white" if confusion[i][j] > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
